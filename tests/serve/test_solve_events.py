"""The typed solve events and the one solve result (serve.solve_events) at their seams: the solver's events
are the trace's rows, their wire form reads back to the same events, the live event line and the HTTP
bodies (/v1/solve JSON and SSE, the OpenAI `reasonflux` summary) are all derived from them."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from demo.play_along import play_along_backend
from demo.solve_templates import add_templates
from kb.output import dumps, to_jsonable
from serve.app import create_app
from serve.http.schemas import SolveResponse
from serve.solve_events import (
    PUBLIC_FIELDS,
    RoundFinished,
    SessionDone,
    SessionError,
    SessionStarted,
    SolveResult,
    event_from_dict,
)
from serve.solver import Solver, SolverConfig
from serve.traces.render import event_line, render_trace
from serve.traces.store import get_session

ANSWERS = {"What is 3 + 4?": "7"}


@pytest.fixture
def solver(db):
    add_templates(db)
    backend = play_along_backend(ANSWERS)
    with Solver(db, backend, backend, SolverConfig(max_rounds=6, token_budget=20_000)) as s:
        yield s


def _wire(event) -> dict:
    """The event as a client receives it: JSON text, parsed."""
    return json.loads(dumps(to_jsonable(event.to_dict())))


def test_events_are_the_trace_and_read_back_from_their_wire_form(db, solver):
    events = []
    result = solver.solve("What is 3 + 4?", reference="7", on_event=events.append)
    assert result.status == "solved" and result.answer == "7"
    assert isinstance(events[0], SessionStarted) and isinstance(events[-1], SessionDone)
    rounds = [e for e in events if isinstance(e, RoundFinished)]
    assert [r.kind for r in rounds] == ["plan", "step", "step", "final"]

    stored = get_session(db, result.session_id)
    for event, row in zip(rounds, stored["rounds_detail"], strict=True):
        written = {"retrieved": [], **event.row()}  # the store's default for a round that retrieved nothing
        assert event.kind == "final" or event.row()["navigator_prompt"]  # the row keeps the prompt
        for key in (
            "round_no",
            "kind",
            "step_text",
            "instantiation",
            "evaluation",
            "retrieved",
            "adjustment",
        ):
            assert row[key] == _wire_value(written.get(key)), key
        assert "navigator_prompt" not in event.to_dict()  # the event leaves the large prompt in the trace
    for event in events:
        again = event_from_dict(_wire(event))
        assert type(again) is type(event) and again.to_dict() == _wire(event)
    done = event_from_dict(_wire(events[-1]))
    assert done.result == result  # the result survives its wire form whole

    lines = [event_line(e) for e in events]
    assert lines[0] is None and "plan:" in lines[1]
    assert lines[-1] == f"session {result.session_id} · solved · answer 7 (correct)"
    assert "Final answer: 7 (correct)" in render_trace(stored)


def _wire_value(value):
    return json.loads(dumps(to_jsonable(value))) if value is not None else None


def test_unknown_event_is_refused():
    with pytest.raises(ValueError, match="not a solve event"):
        event_from_dict({"event": "nonsense"})
    assert event_from_dict({"event": "error", "message": "boom"}) == SessionError("boom")


def test_http_bodies_are_the_results_public_fields(db, solver):
    assert list(SolveResponse.model_fields) == list(PUBLIC_FIELDS)
    with TestClient(create_app(db, solver)) as http:
        body = http.post("/v1/solve", json={"problem": "What is 3 + 4?"}).json()
        stored = get_session(db, body["session_id"])
        assert body["answer"] == stored["final_answer"] == "7" and body["rounds"] == stored["rounds"]
        assert list(body) == list(PUBLIC_FIELDS)

        with http.stream("POST", "/v1/solve", json={"problem": "What is 3 + 4?", "stream": True}) as r:
            data = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        events = [event_from_dict(d) for d in data]
        assert [e.event for e in events] == ["session", "round", "round", "round", "round", "done"]
        done = events[-1]
        assert isinstance(done, SessionDone) and done.result.answer == "7"
        stored = get_session(db, done.session_id)
        assert all(e.session_id == done.session_id for e in events)
        assert (done.result.status, done.result.rounds, done.result.total_tokens) == (
            stored["status"],
            stored["rounds"],
            stored["total_tokens"],
        )

        chat = http.post(
            "/v1/chat/completions",
            json={"model": "reasonflux", "messages": [{"role": "user", "content": "What is 3 + 4?"}]},
        ).json()
        summary = chat["choices"][0]["reasonflux"]
        assert list(summary) == list(PUBLIC_FIELDS) and summary["answer"] == "7"
        result = SolveResult.from_dict(summary)  # the summary is the result's public part, whole
        assert result.session_id == chat["session_id"] and result.total_tokens == summary["total_tokens"]


def test_the_guard_is_the_one_token_check(db, solver):
    """The token is checked before anything else (an unauthenticated request learns nothing about its
    body), and the routes' bearer dependency only documents the scheme."""
    with TestClient(create_app(db, solver, token="t0ken", max_body_bytes=100)) as http:
        big = {"problem": "x" * 500}
        assert http.post("/v1/solve", json=big).status_code == 401
        assert http.post("/v1/solve", json=big, headers={"Authorization": "Bearer t0ken"}).status_code == 413
        schema = http.get("/openapi.json").json()
        assert schema["paths"]["/v1/solve"]["post"]["security"] == [{"HTTPBearer": []}]
        assert "security" not in schema["paths"]["/healthz"]["get"]
    with TestClient(create_app(db, solver)) as http:  # no token: the documenting dependency lets all in
        assert http.get("/v1/models").json()["data"][0]["id"] == "reasonflux"
