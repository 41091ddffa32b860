"""Rewards in SQL (with partial evaluations) and DPO pairs built from them, every pair checked."""

from __future__ import annotations

import json
from itertools import permutations

import pytest
import sqlalchemy as sa

from kb.db import session_scope
from kb.rewards import refresh_rewards, rewards
from pipelines.pairs import build_pairs
from pipelines.problems import content_hash
from pipelines.trajectories_store import insert_rollouts, insert_trajectory


def _problem(conn, text: str, split: str = "train") -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO problem (text, split, content_hash, extra) VALUES (:t, :s, :h, '{}') RETURNING id"
        ),
        {"t": text, "s": split, "h": content_hash(text)},
    ).scalar()


def _similar_set(conn, build: int, anchor: int, members: list[int], split: str = "train") -> int:
    set_id = conn.execute(
        sa.text(
            "INSERT INTO similar_set (build_id, anchor_problem_id, anchor_split, size) VALUES (:b, :a, :s, :n) RETURNING id"
        ),
        {"b": build, "a": anchor, "s": split, "n": len(members)},
    ).scalar()
    conn.execute(
        sa.text(
            "INSERT INTO similar_set_member (set_id, problem_id, rank, similarity) VALUES (:s, :p, :r, 0.8)"
        ),
        [{"s": set_id, "p": p, "r": i + 1} for i, p in enumerate(members)],
    )
    return set_id


def _build(conn, name: str) -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO similar_build (method, params, params_hash) VALUES ('test', '{}', :h) RETURNING id"
        ),
        {"h": name},
    ).scalar()


def _trajectory(db, problem: int, set_id: int | None, key: str, outcomes: dict[int, list[bool]]) -> int:
    """A trajectory with one rollout per entry of OUTCOMES[problem_id] (sample_index = position)."""
    with session_scope(db) as s:
        tid = insert_trajectory(
            s,
            problem,
            [("Identify the pattern", None, None), ("Sum it", None, 0.5)],
            "nav",
            key,
            similar_set_id=set_id,
            sampling={"temperature": 0.7},
            raw_output=f"plan {key}",
        )
        insert_rollouts(
            s,
            [
                {"trajectory_id": tid, "problem_id": pid, "sample_index": i, "correct": ok}
                for pid, oks in outcomes.items()
                for i, ok in enumerate(oks)
            ],
        )
    return tid


@pytest.fixture
def world(db):
    with db.engine.begin() as conn:
        anchor = _problem(conn, "anchor")
        members = [_problem(conn, f"member {i}") for i in range(4)]
        build = _build(conn, "b1")
        set_id = _similar_set(conn, build, anchor, members)
    return {"anchor": anchor, "members": members, "set": set_id, "build": build}


def test_reward_counts_and_partial_evaluation(db, world):
    m = world["members"]
    partial = _trajectory(
        db,
        world["anchor"],
        world["set"],
        "a",
        {m[0]: [True, True], m[1]: [True, False], world["anchor"]: [False, False]},
    )
    full = _trajectory(db, world["anchor"], world["set"], "b", {p: [p == m[2]] for p in m})
    empty = _trajectory(db, world["anchor"], world["set"], "c", {})
    no_set = _trajectory(db, world["anchor"], None, "d", {world["anchor"]: [True, False, False]})
    out = refresh_rewards(db)
    assert out["trajectories"] == 4 and out["evaluated"] == 3 and out["rollouts"] == 4 + 4 + 3
    got = {r["trajectory_id"]: r for r in rewards(db)}
    # Rollouts on the anchor itself are not on the similar set: they do not count.
    assert (
        got[partial]["n_rollouts"],
        got[partial]["n_correct"],
        got[partial]["n_problems_evaluated"],
        got[partial]["set_size"],
        got[partial]["complete"],
    ) == (4, 3, 2, 4, False)
    assert got[partial]["reward"] == pytest.approx(0.75)
    assert (got[full]["n_rollouts"], got[full]["n_correct"], got[full]["complete"]) == (4, 1, True)
    assert got[full]["reward"] == pytest.approx(0.25)
    assert (got[empty]["n_rollouts"], got[empty]["reward"], got[empty]["complete"]) == (0, None, False)
    assert got[no_set]["set_size"] is None and got[no_set]["reward"] == pytest.approx(1 / 3)
    assert rewards(db, live=True) == rewards(db)
    # A late rollout shows up live at once and in the refreshed view after a refresh.
    with session_scope(db) as s:
        assert insert_rollouts(s, [{"trajectory_id": empty, "problem_id": m[3], "correct": True}]) == 1
    assert rewards(db, trajectory_id=empty)[0]["n_rollouts"] == 0
    assert rewards(db, trajectory_id=empty, live=True)[0]["n_rollouts"] == 1
    refresh_rewards(db)
    assert rewards(db, trajectory_id=empty)[0]["reward"] == 1.0


def test_store_is_idempotent(db, world):
    m = world["members"]
    first = _trajectory(db, world["anchor"], world["set"], "a", {m[0]: [True, False]})
    again = _trajectory(db, world["anchor"], world["set"], "a", {m[0]: [True, False], m[1]: [True]})
    assert first == again
    with db.engine.connect() as conn:
        counts = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM trajectory), (SELECT count(*) FROM trajectory_step),"
                " (SELECT count(*) FROM rollout)"
            )
        ).one()
        steps = conn.execute(
            sa.text("SELECT position, text, retrieval_score FROM trajectory_step ORDER BY position")
        ).all()
    assert tuple(counts) == (1, 2, 3)
    assert [tuple(s) for s in steps] == [(0, "Identify the pattern", None), (1, "Sum it", 0.5)]


def _expected_pairs(
    rewards_by_id: dict[int, float], min_margin: float, max_pairs: int
) -> list[tuple[int, int]]:
    """Reference: every ordered pair with a big enough margin, best margins first, ties by ids."""
    pairs = [
        (a, b, ra - rb)
        for (a, ra), (b, rb) in permutations(rewards_by_id.items(), 2)
        if ra > rb and ra - rb >= min_margin - 1e-9
    ]
    pairs.sort(key=lambda p: (-p[2], p[0], p[1]))
    return [(a, b) for a, b, _ in pairs[:max_pairs]]


def _pairs(db, phash: str) -> list[dict]:
    with db.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text("SELECT * FROM dpo_pair WHERE params_hash = :h ORDER BY id"), {"h": phash}
            ).mappings()
        ]


@pytest.fixture
def graded(db, world):
    """Five trajectories with rewards 1, .75, .5, .25, 0 over 4 rollouts, one with too few rollouts,
    one on another similar build, and a test-split anchor with its own spread of rewards."""
    m = world["members"]
    rewards_by_id = {}
    for i, n_correct in enumerate([4, 3, 2, 1, 0]):
        outcomes = {p: [j < n_correct] for j, p in enumerate(m)}
        rewards_by_id[_trajectory(db, world["anchor"], world["set"], f"s{i}", outcomes)] = n_correct / 4
    few = _trajectory(db, world["anchor"], world["set"], "few", {m[0]: [True], m[1]: [True]})
    with db.engine.begin() as conn:
        other_build = _build(conn, "b2")
        other_set = _similar_set(conn, other_build, world["anchor"], m)
        test_anchor = _problem(conn, "test anchor", "test")
        test_members = [_problem(conn, f"test member {i}", "test") for i in range(4)]
        test_set = _similar_set(conn, world["build"], test_anchor, test_members, "test")
    other = _trajectory(db, world["anchor"], other_set, "other", {p: [False] for p in m})
    for i, n_correct in enumerate([4, 0]):
        _trajectory(
            db, test_anchor, test_set, f"t{i}", {p: [j < n_correct] for j, p in enumerate(test_members)}
        )
    return {"rewards": rewards_by_id, "few": few, "other": other, "test_anchor": test_anchor, **world}


def test_pairs_margin_rollouts_cap_and_every_pair_checked(db, graded):
    out = build_pairs(db, min_margin=0.2, min_rollouts=4, max_pairs_per_problem=4)
    pairs = _pairs(db, out["params_hash"])
    assert out["created"] == 4 == len(pairs)
    assert [(p["chosen_trajectory_id"], p["rejected_trajectory_id"]) for p in pairs] == _expected_pairs(
        graded["rewards"], 0.2, 4
    )
    for p in pairs:
        assert p["problem_id"] == graded["anchor"] and p["run_id"] == out["run_id"]
        assert p["chosen_reward"] == graded["rewards"][p["chosen_trajectory_id"]]
        assert p["rejected_reward"] == graded["rewards"][p["rejected_trajectory_id"]]
        assert p["margin"] == pytest.approx(p["chosen_reward"] - p["rejected_reward"])
        assert p["params"]["min_margin"] == 0.2 and p["params_hash"] == out["params_hash"]
    used = {t for p in pairs for t in (p["chosen_trajectory_id"], p["rejected_trajectory_id"])}
    # Too few rollouts, another similar build, the test split: never paired.
    assert graded["few"] not in used and graded["other"] not in used
    assert {p["problem_id"] for p in pairs} == {graded["anchor"]}


def test_margin_equal_to_threshold_and_all_pairs(db, graded):
    out = build_pairs(db, min_margin=0.25, min_rollouts=4, max_pairs_per_problem=100)
    got = [(p["chosen_trajectory_id"], p["rejected_trajectory_id"]) for p in _pairs(db, out["params_hash"])]
    assert got == _expected_pairs(graded["rewards"], 0.25, 100) and len(got) == 10
    strict = build_pairs(db, min_margin=0.8, min_rollouts=4, max_pairs_per_problem=100)
    assert strict["params_hash"] != out["params_hash"] and strict["created"] == 1


def test_pairs_are_idempotent_and_per_build(cli, db, graded):
    first = json.loads(cli("pairs", "build", "--min-margin", "0.2", "--json").output)
    again = json.loads(cli("pairs", "build", "--min-margin", "0.2", "--json").output)
    assert first["created"] == 4 and again["created"] == 0 and again["total"] == 4
    assert first["params_hash"] == again["params_hash"]
    with db.engine.connect() as conn:
        other_build = conn.execute(
            sa.text(
                "SELECT build_id FROM similar_set WHERE id = "
                "(SELECT similar_set_id FROM trajectory WHERE id = :t)"
            ),
            {"t": graded["other"]},
        ).scalar()
    # On the other build there is a single trajectory: nothing to pair.
    only_other = json.loads(cli("pairs", "build", "--similar-build", str(other_build), "--json").output)
    assert only_other["created"] == 0
    listed = json.loads(cli("pairs", "list", "--json").output)
    assert [(r["params_hash"], r["pairs"]) for r in listed] == [(first["params_hash"], 4)]
    shown = json.loads(cli("pairs", "show", "--params-hash", first["params_hash"][:6], "--json").output)
    assert len(shown) == 4
    refreshed = json.loads(cli("rewards", "refresh", "--json").output)
    assert refreshed["trajectories"] == 9
    shown = json.loads(cli("rewards", "show", "--problem", str(graded["test_anchor"]), "--json").output)
    assert [r["split"] for r in shown] == ["test", "test"]
    cli("pairs", "build", "--min-margin", "0", expect=2)
