"""Similar-problem sets: no self, no duplicates, min similarity, split rule, filters, versioning."""

from __future__ import annotations

import json
import math

import pytest
import sqlalchemy as sa

from pipelines.problems import content_hash, import_problems
from pipelines.similar import build_similar_sets, parse_anchors

DIM = 384
MODEL = "all-MiniLM-L6-v2"


def _vec(similarity: float, axis: int) -> str:
    """A unit vector whose cosine with axis 0 is SIMILARITY (the rest of it lies along AXIS)."""
    v = [0.0] * DIM
    v[0] = similarity
    if axis:
        v[axis] = math.sqrt(max(0.0, 1 - similarity**2))
    return "[" + ",".join(repr(x) for x in v) + "]"


def _add(
    db,
    text: str,
    similarity: float,
    axis: int,
    split: str = "train",
    subject: str | None = "Algebra",
    tags: list[str] | None = None,
) -> int:
    with db.engine.begin() as conn:
        pid = conn.execute(
            sa.text(
                "INSERT INTO problem (text, split, subject, content_hash, extra) "
                "VALUES (:t, :s, :subj, :h, CAST(:x AS jsonb)) RETURNING id"
            ),
            {
                "t": text,
                "s": split,
                "subj": subject,
                "h": content_hash(text),
                "x": json.dumps({"tags": tags} if tags else {}),
            },
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO problem_embedding (problem_id, model, dim, embedding) "
                "VALUES (:p, :m, :d, CAST(:v AS vector))"
            ),
            {"p": pid, "m": MODEL, "d": DIM, "v": _vec(similarity, axis)},
        )
    return pid


def _members(db, anchor: int, build_id: int) -> list[tuple[int, int, float]]:
    with db.engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text(
                    "SELECT m.problem_id, m.rank, m.similarity FROM similar_set s JOIN similar_set_member m ON m.set_id = s.id "
                    "WHERE s.anchor_problem_id = :a AND s.build_id = :b ORDER BY m.rank"
                ),
                {"a": anchor, "b": build_id},
            )
        ]


@pytest.fixture
def world(db):
    p = {}
    p["anchor"] = _add(db, "anchor problem", 1.0, 0, tags=["x"])
    p["close"] = _add(db, "close problem", 0.9, 1, tags=["x"])
    p["mid"] = _add(db, "middling problem", 0.7, 2, subject="Geometry")
    p["far"] = _add(db, "far problem", 0.4, 3)
    p["dup"] = _add(db, "anchor  problem, reworded but same vector", 1.0, 0)
    p["test_close"] = _add(db, "test problem close to the anchor", 0.95, 4, split="test")
    p["test_other"] = _add(db, "another test problem", 0.93, 5, split="test")
    return p


def test_sets_exclude_self_duplicates_far_and_other_split(db, world):
    out = build_similar_sets(db, k=8, min_similarity=0.5, embed_missing=False)
    assert out["new_build"] and out["sets"] == 7
    got = _members(db, world["anchor"], out["build_id"])
    assert [(m, r) for m, r, _ in got] == [(world["close"], 1), (world["mid"], 2)]
    assert [round(s, 4) for _, _, s in got] == [0.9, 0.7]
    test_set = _members(db, world["test_close"], out["build_id"])
    assert [m for m, _, _ in test_set] == [world["test_other"]]
    with db.engine.connect() as conn:
        # Invariants over every set: never the anchor, never another split, never at or above 0.9999.
        bad = conn.execute(
            sa.text(
                "SELECT count(*) FROM similar_set s JOIN similar_set_member m ON m.set_id = s.id "
                "JOIN problem p ON p.id = m.problem_id WHERE m.problem_id = s.anchor_problem_id "
                "OR p.split <> s.anchor_split OR m.similarity >= 0.9999 OR m.similarity < 0.5"
            )
        ).scalar()
        splits = dict(conn.execute(sa.text("SELECT anchor_problem_id, anchor_split FROM similar_set")).all())
    assert bad == 0
    assert splits[world["test_close"]] == "test" and splits[world["anchor"]] == "train"


def test_k_limits_and_filters(db, world):
    one = build_similar_sets(db, k=1, min_similarity=0.5, embed_missing=False, anchors="ids=1")
    assert one["sets"] == 1 and [m for m, _, _ in _members(db, world["anchor"], one["build_id"])] == [
        world["close"]
    ]
    subj = build_similar_sets(
        db, k=8, min_similarity=0.5, same_subject=True, embed_missing=False, anchors="ids=1"
    )
    assert [m for m, _, _ in _members(db, world["anchor"], subj["build_id"])] == [world["close"]]
    tags = build_similar_sets(
        db, k=8, min_similarity=0.0, shared_tags=True, embed_missing=False, anchors="ids=1"
    )
    assert [m for m, _, _ in _members(db, world["anchor"], tags["build_id"])] == [world["close"]]
    assert len({one["build_id"], subj["build_id"], tags["build_id"]}) == 3


def test_same_params_is_a_noop_and_other_params_make_a_new_version(cli, db, world):
    first = json.loads(
        cli(
            "similar", "build", "--k", "8", "--min-similarity", "0.5", "--anchors", "split=train", "--json"
        ).output
    )
    assert first["new_build"] and first["sets"] == 5
    again = json.loads(
        cli(
            "similar", "build", "--k", "8", "--min-similarity", "0.5", "--anchors", "split=train", "--json"
        ).output
    )
    assert again["build_id"] == first["build_id"] and not again["new_build"] and again["sets"] == 0
    # A new train problem: the same build only fills the anchor that has no set yet.
    late_id = _add(db, "late problem", 0.8, 6)
    late = json.loads(
        cli(
            "similar", "build", "--k", "8", "--min-similarity", "0.5", "--anchors", "split=train", "--json"
        ).output
    )
    assert late["build_id"] == first["build_id"] and late["sets"] == 1
    other = json.loads(
        cli(
            "similar", "build", "--k", "2", "--min-similarity", "0.75", "--anchors", "split=train", "--json"
        ).output
    )
    assert other["new_build"] and other["build_id"] != first["build_id"]
    # The old version is untouched; `show` gives the newest by default and any by --build.
    assert [m for m, _, _ in _members(db, world["anchor"], first["build_id"])] == [
        world["close"],
        world["mid"],
    ]
    newest = json.loads(cli("similar", "show", str(world["anchor"]), "--json").output)
    assert newest["build_id"] == other["build_id"]
    assert [m["problem_id"] for m in newest["members"]] == [world["close"], late_id]
    old = json.loads(
        cli("similar", "show", str(world["anchor"]), "--build", str(first["build_id"]), "--json").output
    )
    assert old["size"] == 2
    builds = json.loads(cli("similar", "builds", "--json").output)
    assert [b["id"] for b in builds] == [first["build_id"], other["build_id"]]
    cli("similar", "build", "--anchors", "colour=red", expect=2)


def test_parse_anchors():
    assert parse_anchors("split=train; ids=3-5,9") == {"split": "train", "ids": [3, 4, 5, 9]}
    assert parse_anchors(None) == {} and parse_anchors("all") == {}


def _real_problems(tmp_path):
    path = tmp_path / "real.jsonl"
    texts = [
        "Find the sum of the first 100 positive integers.",
        "Compute 1 + 2 + 3 + ... + 100, the sum of the first hundred positive integers.",
        "A circle has radius 4. What is its area?",
        "How many ways can 6 people sit in a row?",
        "What is the area of a circle whose radius is 5?",
    ]
    path.write_text("".join(json.dumps({"problem": t}) + "\n" for t in texts))
    return path


def test_real_embeddings_small(db, tmp_path):
    import_problems(db, _real_problems(tmp_path), embed=True)
    out = build_similar_sets(db, k=2, min_similarity=0.3)
    assert _members(db, 1, out["build_id"])[0][0] == 2
    assert _members(db, 3, out["build_id"])[0][0] == 5


@pytest.mark.shared_data
def test_math500_subset(db, shared_data):
    from pipelines.problems import embed_problems

    import_problems(db, shared_data / "math500_test.jsonl", preset="math500", embed=False)
    embed_problems(db, problem_ids=list(range(1, 41)))
    out = build_similar_sets(db, k=4, min_similarity=0.3, anchors="ids=1-40", embed_missing=False)
    assert out["sets"] == 40
    with db.engine.connect() as conn:
        bad = conn.execute(
            sa.text(
                "SELECT count(*) FROM similar_set s JOIN similar_set_member m ON m.set_id = s.id "
                "WHERE m.problem_id = s.anchor_problem_id OR m.similarity < 0.3 OR m.rank > 4"
            )
        ).scalar()
        sizes = conn.execute(
            sa.text("SELECT sum(size), (SELECT count(*) FROM similar_set_member) FROM similar_set")
        ).one()
    assert bad == 0 and sizes[0] == sizes[1] and sizes[0] > 40


def _all_sets(db, build_id: int) -> dict[int, list[tuple[int, int, float]]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.anchor_problem_id, s.anchor_split, s.size, m.problem_id, m.rank, m.similarity "
                "FROM similar_set s LEFT JOIN similar_set_member m ON m.set_id = s.id WHERE s.build_id = :b "
                "ORDER BY s.anchor_problem_id, m.rank"
            ),
            {"b": build_id},
        ).all()
    out: dict[int, list] = {}
    for a, split, size, pid, rank, sim in rows:
        out.setdefault(a, [])
        if pid is not None:
            out[a].append((pid, rank, sim))
        assert size == len([r for r in rows if r[0] == a and r[3] is not None])
    return out


@pytest.mark.parametrize("same_subject", [False, True])
def test_exact_and_index_paths_give_the_same_sets_and_build(db, same_subject):
    """Clustered vectors, two splits, two subjects: both paths write the same members, ranks and build."""
    import numpy as np

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(12, DIM))
    with db.engine.begin() as conn:
        for i in range(240):
            v = centers[i % 12] + 0.6 * rng.normal(size=DIM)
            v /= np.linalg.norm(v)
            text = f"problem {i}"
            pid = conn.execute(
                sa.text(
                    "INSERT INTO problem (text, split, subject, content_hash, extra) VALUES (:t, :s, :subj, :h, '{}') "
                    "RETURNING id"
                ),
                {
                    "t": text,
                    "s": "test" if i % 5 == 0 else "train",
                    "subj": ["Algebra", "Geometry"][i % 2],
                    "h": content_hash(text),
                },
            ).scalar()
            conn.execute(
                sa.text(
                    "INSERT INTO problem_embedding (problem_id, model, dim, embedding) "
                    "VALUES (:p, :m, :d, CAST(:v AS vector))"
                ),
                {"p": pid, "m": MODEL, "d": DIM, "v": "[" + ",".join(f"{x:.7f}" for x in v) + "]"},
            )
    options = {"k": 8, "min_similarity": 0.2, "same_subject": same_subject, "embed_missing": False}
    by_index = build_similar_sets(db, path="index", **options)
    index_sets = _all_sets(db, by_index["build_id"])
    with db.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM similar_set WHERE build_id = :b"), {"b": by_index["build_id"]})
    by_exact = build_similar_sets(db, path="exact", **options)
    exact_sets = _all_sets(db, by_exact["build_id"])
    assert by_index["path"] == "index" and by_exact["path"] == "exact"
    assert by_exact["build_id"] == by_index["build_id"] and by_exact["params_hash"] == by_index["params_hash"]
    assert by_exact["sets"] == by_index["sets"] == 240 and by_exact["members"] == by_index["members"]
    assert sum(len(v) for v in exact_sets.values()) > 240 * 4
    assert exact_sets.keys() == index_sets.keys()
    for anchor, members in exact_sets.items():
        assert [m[:2] for m in members] == [m[:2] for m in index_sets[anchor]], anchor
        assert all(abs(a[2] - b[2]) < 1e-5 for a, b in zip(members, index_sets[anchor]))
    # auto takes the exact path on a pool this small, and a rebuild adds nothing.
    again = build_similar_sets(db, **options)
    assert again["sets"] == 0 and again["build_id"] == by_exact["build_id"]


def test_exact_path_refuses_shared_tags(db, world):
    from kb.errors import InputError

    with pytest.raises(InputError, match="shared tags"):
        build_similar_sets(db, k=8, shared_tags=True, embed_missing=False, path="exact")
    assert (
        build_similar_sets(db, k=8, min_similarity=0.0, shared_tags=True, embed_missing=False)["path"]
        == "index"
    )


@pytest.mark.parametrize("min_similarity", [-1.0, 0.3])
def test_exact_neighbours_match_brute_force(min_similarity):
    """The fp16 preselection with certified fp32 re-scoring equals a plain fp32 top k, ties by id,
    also with duplicates and near-ties that force rows onto the full recompute."""
    import numpy as np

    from pipelines.similar_exact import DUPLICATE_SIMILARITY, exact_neighbours

    rng = np.random.default_rng(5)
    vecs = rng.normal(size=(600, 48)) + 2 * rng.normal(size=(6, 48))[rng.integers(0, 6, 600)]
    vecs[10:60] = vecs[9]  # 50 duplicates of problem 9: more than the preselection holds
    vecs[100:140] = vecs[99] + 1e-3 * rng.normal(size=(40, 48))  # near-ties around problem 99
    vecs = (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(1, 601, dtype=np.int64)
    anchors = np.array([0, 9, 30, 99, 120, 300, 599])
    got = exact_neighbours(vecs[anchors], ids[anchors], vecs, ids, 8, min_similarity)
    for a, found in zip(anchors, got):
        sims = vecs @ vecs[a]
        ok = [
            (int(ids[i]), float(sims[i]))
            for i in range(600)
            if ids[i] != ids[a] and sims[i] < DUPLICATE_SIMILARITY and sims[i] >= min_similarity
        ]
        want = sorted(ok, key=lambda t: (-t[1], t[0]))[:8]
        assert [m for m, _ in found] == [m for m, _ in want], a
        assert np.allclose([s for _, s in found], [s for _, s in want], atol=1e-6)
