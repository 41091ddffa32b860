"""The multi-round solver with scripted backends: control flow, adjustments, limits, parsing, traces."""

from __future__ import annotations

import json
import time

import pytest
import sqlalchemy as sa

from demo.play_along import play_along_backend
from demo.solve_templates import add_templates
from pipelines.llm import create_backend
from pipelines.llm.base import SamplingParams
from pipelines.navigator import parse_evaluation, parse_plan
from pipelines.parsing import ParseError
from serve.solver import Solver, SolverConfig
from serve.traces import get_session, list_sessions, render_trace


@pytest.fixture
def library(db):
    return add_templates(db)


def plan(*steps: tuple[str, str]) -> str:
    return json.dumps(
        {"abstraction": "an arithmetic series", "trajectory": [{"step": s, "template": t} for s, t in steps]}
    )


def verdict(v: str, reason: str = "ok", **kw) -> str:
    return json.dumps({"verdict": v, "reason": reason, **kw})


def script(*rules) -> object:
    """Navigator rules keyed on the prompt kind; inference answers echo the step."""
    return create_backend("scripted", rules=list(rules))


def rows(db, sql: str, **params):
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(sql), params).mappings()]


# ------------------------------------------------------------------ parsing


def test_plan_parser_is_strict():
    ok = parse_plan(
        '```json\n{"abstraction": "a", "trajectory": [{"step": "s", "template": "t"}]}\n```', max_steps=3
    )
    assert ok.abstraction == "a" and ok.steps[0].template == "t"
    bad = [
        "",
        "no json here",
        "[1, 2]",
        '{"abstraction": "a"}',
        '{"abstraction": "a", "trajectory": []}',
        '{"abstraction": "a", "trajectory": [{"step": "s"}]}',
        '{"abstraction": "a", "trajectory": [{"step": "s", "template": "t", "x": 1}]}',
        '{"abstraction": "a", "trajectory": [{"step": "s", "template": "t"}], "extra": 1}',
        '{"abstraction": "a", "trajectory": ' + json.dumps([{"step": "s", "template": "t"}] * 4) + "}",
        "```json\n{}\n```\n```json\n{}\n```",
    ]
    for text in bad:
        with pytest.raises(ParseError):
            parse_plan(text, max_steps=3)


def test_evaluation_parser_checks_changes_against_the_trajectory():
    ev = parse_evaluation(
        verdict(
            "adjust",
            changes=[{"op": "insert", "step": 2, "text": "x", "template": "t"}, {"op": "remove", "step": 3}],
        ),
        current=2,
        n_steps=3,
        max_steps=5,
    )
    assert [c.op for c in ev.changes] == ["insert", "remove"]
    assert parse_evaluation(verdict("stop", answer="7"), current=1, n_steps=1, max_steps=5).answer == "7"
    bad = [
        verdict("maybe"),
        json.dumps({"verdict": "continue"}),  # no reason
        verdict("adjust"),  # adjust without changes
        verdict("continue", changes=[{"op": "remove", "step": 2}]),
        verdict("adjust", changes=[{"op": "remove", "step": 1}]),  # step 1 is done
        verdict("adjust", changes=[{"op": "remove", "step": 9}]),
        verdict("adjust", changes=[{"op": "rename", "step": 2}]),
        verdict("adjust", changes=[{"op": "change", "step": 2}]),  # change needs a template
        verdict("adjust", changes=[{"op": "remove", "step": 2}, {"op": "remove", "step": 2}]),
        verdict("adjust", changes=[{"op": "insert", "step": 3, "text": "x", "template": "t"}] * 3),  # > max
        verdict("continue", answer="3"),
    ]
    for text in bad:
        with pytest.raises(ParseError):
            parse_evaluation(text, current=2, n_steps=3, max_steps=5)


# ------------------------------------------------------------------ control flow


def test_adjustments_change_insert_and_remove_steps_and_are_traced(db, library):
    nav = script(
        (
            r'"trajectory"',
            plan(
                ("Find the first term and the difference", "Arithmetic series sum"),
                ("Sum the series", "Arithmetic series sum"),
                ("Check the roots", "Quadratic formula"),
            ),
        ),
        (r"Result of step 1 ", verdict("continue", "first term found")),
        (
            r"Result of step 2 ",
            [
                verdict(
                    "adjust",
                    "the sum formula does not fit; try another template",
                    changes=[{"op": "change", "step": 2, "template": "Arithmetic series sum"}],
                ),
                verdict(
                    "adjust",
                    "needs a check; the roots step is irrelevant",
                    changes=[
                        {"op": "insert", "step": 2, "text": "Verify the sum", "template": "Telescoping sum"},
                        {"op": "remove", "step": 3},
                    ],
                ),
            ],
        ),
        (r"Result of step 3 ", verdict("stop", "verified", answer="5050")),
        (r"Your step now:", "work for this step \\boxed{5050}"),
    )
    solver = Solver(db, nav, nav, SolverConfig(top_k=2))
    events = []
    result = solver.solve("Sum the integers from 1 to 100.", reference="5050", on_event=events.append)
    solver.close()

    assert result.status == "solved" and result.answer == "5050" and result.correct is True
    assert result.rounds == 4  # step 1, step 2, step 2 redone, inserted step 3
    session = get_session(db, result.session_id)
    kinds = [r["kind"] for r in session["rounds_detail"]]
    assert kinds == ["plan", "step", "step", "step", "step", "final"]
    r1, r2, r2b, r3 = session["rounds_detail"][1:5]
    # The redo used a different template version than the first attempt (the tried one is skipped).
    assert r2["adjustment"]["outcome"] == "redo"
    assert r2b["adjustment"]["template"]["version_id"] != r2["adjustment"]["template"]["version_id"]
    assert r2["adjustment"]["template"]["version_id"] in r2b["adjustment"]["excluded"]
    assert r2b["adjustment"]["outcome"] == "accepted"
    assert [c["op"] for c in r2b["adjustment"]["changes"]] == ["insert", "remove"]
    assert [s["text"] for s in r2b["adjustment"]["trajectory"]] == [
        "Find the first term and the difference",
        "Sum the series",
        "Verify the sum",
    ]
    assert r3["step_text"] == "Verify the sum" and r3["adjustment"]["verdict"] == "stop"
    # Every retrieved version is pinned with its score; the used one is a real version row.
    for r in (r1, r2, r2b, r3):
        assert r["retrieved"] and all({"version_id", "score", "name"} <= set(h) for h in r["retrieved"])
        assert sum(h["used"] for h in r["retrieved"]) == 1
    pinned = {r["adjustment"]["template"]["version_id"] for r in (r1, r2, r2b, r3)}
    assert len(rows(db, "SELECT id FROM template_version WHERE id = ANY(:ids)", ids=list(pinned))) == len(
        pinned
    )
    assert result.templates == list(
        dict.fromkeys(r["adjustment"]["template"]["version_id"] for r in (r1, r2, r2b, r3))
    )
    # Calls are logged against the session, per role; tokens add up per role.
    calls = rows(
        db,
        "SELECT stage, count(*) AS n, sum(prompt_tokens + completion_tokens) AS t FROM llm_call "
        "WHERE session_id = :s GROUP BY stage",
        s=result.session_id,
    )
    by_stage = {c["stage"]: c for c in calls}
    assert by_stage["solve:navigator"]["n"] == 5 and by_stage["solve:inference"]["n"] == 4
    assert sum(c["t"] for c in calls) == result.total_tokens == session["total_tokens"]
    assert session["status"] == "solved" and session["correct"] is True and session["finished_at"]
    # Events: session, one per round, done.
    assert [e.event for e in events] == ["session"] + ["round"] * 6 + ["done"]
    # Typed events are the trace: each round event is the stored row; done carries the returned result.
    for event, stored in zip(events[1:-1], session["rounds_detail"]):
        assert {k: v for k, v in event.row().items() if k not in ("tokens", "latency_ms")} == {
            k: stored[k] for k in event.row() if k not in ("tokens", "latency_ms")
        }
    assert events[-1].result == result and all(e.session_id == result.session_id for e in events)
    text = render_trace(session)
    for needle in (
        "plan",
        "changed step 2",
        "inserted after step 2",
        "removed step 3",
        "Telescoping sum",
        "Final answer: 5050 (correct)",
    ):
        assert needle in text


def test_trajectory_end_extracts_answer_and_shared_backend(db, library):
    backend = play_along_backend({"What is 2+3?": "5"})
    solver = Solver(db, backend, backend)
    assert solver.shared_backend
    result = solver.solve("What is 2+3?", reference="5")
    assert result.status == "solved" and result.answer == "5" and result.correct
    # The same batcher carried both roles' calls.
    assert solver.batchers["navigator"] is solver.batchers["inference"]
    assert solver.batchers["navigator"].requests == result.llm_calls == 5
    solver.close()
    # Navigator requests carry the contract's schema (for backends with structured output); others none.
    from pipelines import navigator

    schemas = [(navigator.request_kind(r.messages), r.response_schema) for r in backend.calls]
    assert schemas[0] == ("plan", navigator.plan_schema(SolverConfig().max_steps))
    assert ("evaluation", navigator.evaluation_schema(SolverConfig().max_steps)) in schemas
    assert all(schema is None for kind, schema in schemas if kind is None)
    # Without a stop verdict the answer comes from the last accepted step's result.
    nav = script(
        (r'"trajectory"', plan(("Compute", "Quadratic formula"))),
        (r'"verdict"', verdict("continue")),
        (r"Your step now:", "so x = \\boxed{3}"),
    )
    with Solver(db, nav, nav) as s2:
        r = s2.solve("Solve x - 3 = 0.", reference="3")
    assert (r.status, r.answer, r.correct) == ("solved", "3", True)
    assert "last step result" in get_session(db, r.session_id)["rounds_detail"][-1]["evaluation"]


def test_unparseable_navigator_is_retried_then_fails_with_reason(db, library):
    nav = script(
        (r'"trajectory"', ["not json", '{"abstraction": "x"}', plan(("Compute", "Vieta"))]),
        (r'"verdict"', verdict("stop", answer="2")),
        (r"Your step now:", "\\boxed{2}"),
    )
    with Solver(db, nav, nav, SolverConfig(parse_retries=2)) as solver:
        ok = solver.solve("Find the sum of the roots of x^2 - 2x + 1.")
    assert ok.status == "solved" and ok.answer == "2"
    plan_round = get_session(db, ok.session_id)["rounds_detail"][0]
    assert len(plan_round["adjustment"]["parse_errors"]) == 2
    assert (
        len(
            rows(
                db,
                "SELECT id FROM failure WHERE stage = 'solve' AND unit_key = :k",
                k=f"session:{ok.session_id}",
            )
        )
        == 2
    )

    always_bad = script((r'"trajectory"', "I think we should use Vieta."), (r".", "unused"))
    with Solver(db, always_bad, always_bad, SolverConfig(parse_retries=1)) as solver:
        bad = solver.solve("Find the product of the roots of x^2 - 2x + 1.")
    assert bad.status == "failed" and "unparseable after 2 attempts" in bad.reason
    assert bad.llm_calls == 2 and bad.answer is None
    s = get_session(db, bad.session_id)
    assert s["status"] == "failed" and s["reason"] == bad.reason
    assert s["rounds_detail"][0]["navigator_output"] == "I think we should use Vieta."
    assert "Unparseable navigator replies: 2" in render_trace(s)

    # A bad evaluation mid-session: the round with the step's result is still written.
    bad_eval = script(
        (r'"trajectory"', plan(("Compute", "Vieta"))),
        (r'"verdict"', "continue!"),
        (r"Your step now:", "partial work \\boxed{1}"),
    )
    with Solver(db, bad_eval, bad_eval, SolverConfig(parse_retries=0)) as solver:
        mid = solver.solve("Find the product of the roots of x^2 - 3x + 1.")
    step_round = get_session(db, mid.session_id)["rounds_detail"][1]
    assert mid.status == "failed" and step_round["instantiation"] == "partial work \\boxed{1}"
    assert step_round["adjustment"]["error"] == mid.reason and mid.answer == "1"


def test_round_limit(db, library):
    nav = script(
        (r'"trajectory"', plan(("Compute", "Vieta"))),
        (
            r'"verdict"',
            verdict("adjust", "try again", changes=[{"op": "change", "step": 1, "template": "Vieta"}]),
        ),
        (r"Your step now:", "attempt"),
    )
    with Solver(db, nav, nav, SolverConfig(max_rounds=3)) as solver:
        r = solver.solve("Loop forever.")
    assert r.status == "limit" and "round limit of 3" in r.reason and r.rounds == 3
    assert len(get_session(db, r.session_id)["rounds_detail"]) == 1 + 3 + 1


def test_token_limit(db, library):
    backend = play_along_backend()
    with Solver(db, backend, backend, SolverConfig(token_budget=400)) as solver:
        r = solver.solve("What is 2+3?")
    assert r.status == "limit" and "token budget of 400" in r.reason
    assert r.total_tokens > 0 and get_session(db, r.session_id)["status"] == "limit"


def test_wall_time_limit_never_hangs(db, library):
    slow = create_backend("scripted", default=plan(("a", "b")), latency_s=5.0)
    with Solver(db, slow, slow, SolverConfig(max_seconds=0.3, plan_hints=0)) as solver:
        solver.warm_up()  # the embedding model loads here, not inside the session's 0.3 s
        t0 = time.monotonic()
        r = solver.solve("Anything.")
        elapsed = time.monotonic() - t0
    assert r.status == "limit" and "wall time limit" in r.reason
    assert elapsed < 4.0  # returned at the limit, not after the backend's 5 s
    call = rows(db, "SELECT error FROM llm_call WHERE session_id = :s", s=r.session_id)
    assert call and "wall time" in call[0]["error"]


def test_backend_error_fails_session(db, library):
    nav = script((r'"trajectory"', plan(("Compute", "Vieta"))))  # no rule for anything else
    with Solver(db, nav, nav) as solver:
        r = solver.solve("Find x.")
    assert r.status == "failed" and "inference backend error" in r.reason
    assert (
        rows(
            db,
            "SELECT count(*) AS n FROM llm_call WHERE session_id = :s AND error IS NOT NULL",
            s=r.session_id,
        )[0]["n"]
        == 1
    )


def test_empty_kb_runs_without_templates(db):
    backend = play_along_backend({"What is 1+1?": "2"})
    with Solver(db, backend, backend) as solver:
        r = solver.solve("What is 1+1?", reference="2")
    assert r.status == "solved" and r.correct and r.templates == []
    assert "none found in the library" in render_trace(get_session(db, r.session_id))


def test_concurrent_sessions_are_batched(db, library):
    from concurrent.futures import ThreadPoolExecutor

    backend = play_along_backend(latency_s=0.05)
    with Solver(db, backend, backend) as solver, ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: solver.solve(f"What is {i}+{i}?"), range(8)))
        stats = solver.batchers["navigator"].stats()
    assert all(r.status == "solved" for r in results)
    assert len({r.session_id for r in results}) == 8
    assert stats["requests"] == sum(r.llm_calls for r in results)
    assert stats["mean_batch"] > 1.5  # concurrent sessions' calls went out together
    assert len(list_sessions(db, limit=50)) == 8


@pytest.mark.slow
def test_tiny_model_end_to_end_through_transformers(db, library, tmp_path):
    from demo.tiny_model import build_tiny_model
    from pipelines.llm import get_backend

    path = build_tiny_model(tmp_path / "tiny", seed=0)
    tiny = get_backend("transformers", model_path=str(path))
    small = SamplingParams(max_tokens=8)
    cfg = SolverConfig(parse_retries=1, navigator_params=small, inference_params=small)
    # The tiny model as both roles (one instance): its plan is garbage, so the session fails cleanly.
    with Solver(db, tiny, get_backend("transformers", model_path=str(path)), cfg) as solver:
        assert solver.shared_backend
        r = solver.solve("What is 2+3?")
    assert r.status == "failed" and "unparseable" in r.reason and r.llm_calls == 2
    calls = rows(db, "SELECT backend, completion_tokens FROM llm_call WHERE session_id = :s", s=r.session_id)
    assert {c["backend"] for c in calls} == {"transformers"} and all(
        c["completion_tokens"] > 0 for c in calls
    )
    # A scripted navigator with the tiny model doing the steps: the full loop runs through real generate.
    nav = play_along_backend({"What is 2+3?": "5"})
    with Solver(db, nav, tiny, cfg) as solver:
        r2 = solver.solve("What is 2+3?", reference="5")
    assert r2.status == "solved" and r2.answer == "5" and r2.correct
    inf = rows(
        db,
        "SELECT backend, response FROM llm_call WHERE session_id = :s AND stage = 'solve:inference'",
        s=r2.session_id,
    )
    assert len(inf) == 2 and {c["backend"] for c in inf} == {"transformers"}


def test_nul_characters_in_model_output_are_stored_not_fatal(db, library):
    nav = script(
        (r'"trajectory"', plan(("Compute", "Vieta"))),
        (r'"verdict"', verdict("continue")),
        (r"Your step now:", "junk\x00bytes \\boxed{4}"),
    )
    with Solver(db, nav, nav) as solver:
        r = solver.solve("What is 2 + 2?", reference="4")
    assert r.status == "solved" and r.correct
    assert get_session(db, r.session_id)["rounds_detail"][1]["instantiation"] == "junk\ufffdbytes \\boxed{4}"


def test_apply_changes_outcomes():
    from pipelines.navigator import Change
    from serve.trajectory import Step, apply_changes

    def steps():
        return [Step(f"s{i}", f"t{i}") for i in range(1, 5)]

    new, nxt, _, outcome = apply_changes(steps(), 1, [Change("remove", 2), Change("insert", 3, "x", "tx")])
    assert [s.text for s in new] == ["s1", "s3", "x", "s4"] and (nxt, outcome) == (1, "removed")
    new, nxt, _, outcome = apply_changes(steps(), 1, [Change("change", 2, template="other")])
    assert new[1].template == "other" and new[1].text == "s2" and (nxt, outcome) == (1, "redo")
    new, nxt, described, outcome = apply_changes(
        steps(), 0, [Change("insert", 1, "a", "ta"), Change("insert", 1, "b", "tb"), Change("remove", 4)]
    )
    assert [s.text for s in new] == ["s1", "a", "b", "s2", "s3"] and (nxt, outcome) == (1, "accepted")
    assert described[-1] == {"op": "remove", "step": 4, "removed_text": "s4"}


def test_warm_up_embeds_template_names_once(db, library):
    from kb import config
    from pipelines.step_retrieval import _CACHE, normalize, phrase_vector

    backend = play_along_backend()
    with Solver(db, backend, backend) as solver:
        solver.warm_up()
    key = (config.embed_model_name(), normalize("Vieta's formulas"))
    cached = _CACHE._lookup(key)
    assert cached is not None and not cached.flags.writeable
    assert phrase_vector("  VIETA'S   formulas ") is cached  # the same entry: no new embedding
