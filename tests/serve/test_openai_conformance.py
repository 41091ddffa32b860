"""/v1/chat/completions against what vLLM's OpenAI server does, driven with the `openai` client row by row
(the table in docs/serving.md), on the scripted play-along backend."""

from __future__ import annotations

import json
import re
import threading

import httpx
import openai
import pytest
import sqlalchemy as sa

from demo.play_along import PlayAlong, play_along_backend
from demo.solve_templates import add_templates
from pipelines import prompts
from pipelines.llm.openai_backend import OpenAIBackend
from pipelines.llm.scripted import ScriptedBackend
from serve.http.errors import SESSION_HEADER
from serve.traces import get_session
from tests.support.llm_server import dead_url
from tests.support.solve_helpers import Service

TOKEN = "conformance-token-5678"
ANSWERS = {"What is 2 + 2?": "4", "What is 3 + 3?": "6"}
ASK = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def serve(db):
    started = []

    def start(backend=None, **kw):
        if not started:
            add_templates(db)
        started.append(Service(db, backend or play_along_backend(ANSWERS), token=TOKEN, **kw))
        return openai.OpenAI(base_url=f"{started[-1].url}/v1", api_key=TOKEN, max_retries=0, timeout=60)

    yield start
    for s in started:
        s.close()


def _create(client, **kw):
    return client.chat.completions.create(model="reasonflux", messages=ASK, **kw)


def _error_of(excinfo) -> dict:
    body = excinfo.value.response.json()
    assert set(body) == {"error"}, body  # OpenAI's shape, nothing else beside it
    return body["error"]


def test_bad_bodies_are_400_invalid_request_errors_naming_the_parameter(serve):
    client = serve()
    errors = []
    for extra, param in (
        ({"frobnicate": 1}, "frobnicate"),
        ({"temperature": "hot"}, "temperature"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
    ):
        with pytest.raises(openai.BadRequestError) as e:
            _create(client, extra_body=extra)
        errors.append(_error_of(e))
        assert errors[-1]["type"] == "invalid_request_error" and errors[-1]["param"] == param, errors[-1]
    assert errors[0]["message"] == "Unknown parameter: 'frobnicate'."
    assert errors[0]["code"] == "unknown_parameter" and errors[1]["code"] == "invalid_type"
    with httpx.Client(base_url=str(client.base_url), headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        r = http.post(
            "chat/completions",
            content=b'{"model": "reasonflux", "messages": [',
            headers={"content-type": "application/json"},
        )
    assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
    assert (
        r.json()["error"]["type"] == "invalid_request_error" and r.json()["error"]["code"] == "invalid_json"
    )
    with httpx.Client(base_url=str(client.base_url), headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        missing = http.post("chat/completions", json={"model": "reasonflux"}).json()["error"]
    assert missing == {
        "message": "Missing required parameter: 'messages'.",
        "type": "invalid_request_error",
        "code": "missing_required_parameter",
        "param": "messages",
    }


def test_max_tokens_caps_the_completion_and_the_session_budget_is_an_extension(serve, db):
    client = serve()
    full = _create(client).choices[0].message.content
    short = _create(client, max_tokens=4)
    choice = short.choices[0]
    assert choice.finish_reason == "length" and full.startswith(choice.message.content)
    assert len(choice.message.content.split()) == 4 < len(full.split())
    summary = short.model_extra["reasonflux"]
    assert summary["status"] == "solved" and summary["answer"] == "4"  # the session was not cut short
    details = short.usage.completion_tokens_details
    assert short.usage.completion_tokens == sum(t["completion"] for t in summary["tokens"].values())
    assert details.reasoning_tokens == short.usage.completion_tokens - 4
    with db.engine.connect() as conn:
        budget = conn.execute(
            sa.text("SELECT config->>'token_budget' FROM solve_session WHERE id = :i"),
            {"i": summary["session_id"]},
        ).scalar()
    assert budget == "20000"  # the server's default budget
    starved = _create(client, extra_body={"reasonflux": {"token_budget": 60}})
    assert starved.choices[0].finish_reason == "length"
    assert starved.model_extra["reasonflux"]["status"] == "limit"
    assert "token budget of 60" in starved.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as e:
        _create(client, extra_body={"reasonflux": {"token_budget": 10**9}})
    assert _error_of(e)["param"] == "reasonflux.token_budget"


def test_stream_sends_the_answer_as_it_is_produced_and_usage_only_when_asked(serve):
    client = serve()
    whole = _create(client).choices[0].message.content
    chunks = list(_create(client, stream=True))
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) == 3  # step 1's result, step 2's result, the final line: each when known
    assert "".join(deltas) == whole and deltas[-1].endswith("\\boxed{4}")
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"

    counted = list(_create(client, stream=True, stream_options={"include_usage": True}))
    assert counted[-1].choices == [] and counted[-1].usage.total_tokens > 0
    assert all(c.choices and c.usage is None for c in counted[:-1])
    capped = list(_create(client, stream=True, max_tokens=3))
    text = "".join(c.choices[0].delta.content or "" for c in capped if c.choices)
    assert len(text.split()) == 3 and capped[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as e:  # as OpenAI and vLLM: only with stream=true
        _create(client, stream_options={"include_usage": True})
    assert _error_of(e)["param"] == "stream_options"


def test_a_step_result_reaches_the_client_while_the_session_still_runs(serve):
    play, release = PlayAlong(ANSWERS), threading.Event()

    def second_step(messages):  # carried out only once the client has the first step's result
        if not release.wait(10):
            raise LookupError("the first step's result was not streamed before the second step")
        return play(messages)

    client = serve(ScriptedBackend(rules=[("Your step now: Apply", second_step)], default=play))
    deltas = []
    for chunk in _create(client, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            deltas.append(chunk.choices[0].delta.content)
            release.set()
    assert len(deltas) == 3 and deltas[-1].endswith("\\boxed{4}")


def test_n_runs_independent_sessions_one_choice_each(serve):
    client = serve()
    raw = client.chat.completions.with_raw_response.create(model="reasonflux", messages=ASK, n=2, seed=7)
    resp = raw.parse()
    assert [c.index for c in resp.choices] == [0, 1]
    assert all(c.message.content.endswith("\\boxed{4}") for c in resp.choices)
    sessions = [c.model_extra["reasonflux"]["session_id"] for c in resp.choices]
    assert len(set(sessions)) == 2 and raw.headers[SESSION_HEADER] == ", ".join(map(str, sessions))
    chunks = list(_create(client, n=2, stream=True))
    finished = {c.choices[0].index: c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason}
    assert finished == {0: "stop", 1: "stop"}
    for i in (0, 1):
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i)
        assert text.endswith("\\boxed{4}")


def test_response_format_delivers_the_answer_as_json_or_says_why_not(serve, db):
    client = serve()
    resp = _create(client, response_format={"type": "json_object"})
    obj = resp.choices[0].message
    assert json.loads(obj.content) == {"answer": "4"} and obj.refusal is None
    final = get_session(db, resp.model_extra["session_id"])["rounds_detail"][-1]
    assert json.loads(final["adjustment"]["formatted"]) == {"answer": "4"}  # the trace keeps it
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    assert json.loads(_create(client, response_format=fmt).choices[0].message.content) == {"answer": "4"}
    chunks = list(_create(client, response_format=fmt, stream=True))
    assert json.loads("".join(c.choices[0].delta.content or "" for c in chunks)) == {"answer": "4"}

    unmet = {"type": "object", "properties": {"result": {"type": "integer"}}, "required": ["result"]}
    refused = _create(
        client, response_format={"type": "json_schema", "json_schema": {"name": "r", "schema": unmet}}
    )
    message = refused.choices[0].message
    assert message.content is None and "could not be put in the requested format" in message.refusal
    assert "result" in message.refusal  # the schema violation is named
    assert refused.model_extra["reasonflux"]["answer"] == "4"  # the session itself was solved
    with pytest.raises(openai.BadRequestError) as e:
        _create(
            client,
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "b",
                    "schema": {"type": "object", "properties": {"x": {"type": "no-such-type"}}},
                },
            },
        )
    assert _error_of(e)["param"] == "response_format.json_schema.schema"


def test_tools_are_ignored_only_when_they_may_not_be_called(serve):
    client = serve()
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    assert _create(client, tools=tools, tool_choice="none").choices[0].message.content.endswith("\\boxed{4}")
    with pytest.raises(openai.BadRequestError) as e:
        _create(client, tools=tools)
    assert _error_of(e)["param"] == "tools"


def test_vllm_sampling_extras_reach_roles_that_take_them_else_a_warning(serve, db):
    plain = serve()
    raw = plain.chat.completions.with_raw_response.create(
        model="reasonflux", messages=ASK, extra_body={"top_k": 20, "min_p": 0.1, "repetition_penalty": 1.1}
    )
    assert raw.parse().choices[0].message.content.endswith("\\boxed{4}")
    assert (
        raw.headers["warning"].startswith("299 ")
        and "top_k, min_p, repetition_penalty" in raw.headers["warning"]
    )

    takes_top_k = serve(play_along_backend(ANSWERS, sampling_extras=("top_k",)))
    raw = takes_top_k.chat.completions.with_raw_response.create(
        model="reasonflux", messages=ASK, extra_body={"top_k": 20, "min_p": 0.1}
    )
    sid = raw.parse().model_extra["session_id"]
    assert "min_p" in raw.headers["warning"] and "top_k" not in raw.headers["warning"]
    with db.engine.connect() as conn:
        params = conn.execute(
            sa.text("SELECT DISTINCT params->>'top_k', params->>'min_p' FROM llm_call WHERE session_id = :s"),
            {"s": sid},
        ).all()
    assert params == [("20", None)]
    no_extras = takes_top_k.chat.completions.with_raw_response.create(model="reasonflux", messages=ASK)
    assert "warning" not in no_extras.headers
    no_top_k = plain.chat.completions.with_raw_response.create(  # vLLM's "no top-k": what every backend does
        model="reasonflux", messages=ASK, extra_body={"top_k": -1}
    )
    assert "warning" not in no_top_k.headers


def test_models_can_be_retrieved_by_id_under_the_served_name(serve):
    client = serve()
    assert client.models.retrieve("reasonflux").id == "reasonflux"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    named = serve(model_name="org/math-solver")
    assert [m.id for m in named.models.list()] == ["org/math-solver"]
    assert named.models.retrieve("org/math-solver").owned_by == "reasonflux"
    resp = named.chat.completions.create(model="org/math-solver", messages=ASK)
    assert resp.model == "org/math-solver" and resp.choices[0].message.content.endswith("\\boxed{4}")
    with pytest.raises(openai.NotFoundError):
        named.chat.completions.create(model="reasonflux", messages=ASK)


def test_a_wrong_or_missing_key_is_a_401_that_reads_as_english(serve):
    client = serve()
    stranger = openai.OpenAI(base_url=str(client.base_url), api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        stranger.chat.completions.create(model="reasonflux", messages=ASK)
    err = _error_of(e)
    assert err["message"] == "Incorrect API key provided." and err["type"] == "authentication_error", err
    # the openai client never sends a request without a key: plain HTTP
    r = httpx.post(
        f"{client.base_url}chat/completions", json={"model": "reasonflux", "messages": ASK}, timeout=30
    )
    assert r.status_code == 401 and r.json()["error"]["message"] == (
        "You didn't provide an API key. Send it in the Authorization header, scheme Bearer."
    )


def test_a_backend_that_is_down_is_a_5xx_in_the_error_shape(serve):
    client = serve(OpenAIBackend("m", base_url=dead_url(), max_retries=0))
    for kw in ({}, {"stream": True}, {"n": 2}, {"response_format": {"type": "json_object"}}):
        with pytest.raises(openai.InternalServerError) as e:
            _create(client, **kw)
        assert e.value.status_code == 503 and _error_of(e)["type"] == "api_error", kw

    def refuse(messages):
        raise LookupError("the format call failed")  # what the scripted backend returns as an error

    fails_at_the_end = ScriptedBackend(
        rules=[(re.escape(prompts.FORMAT_ASK), refuse)], default=PlayAlong(ANSWERS)
    )
    late = serve(fails_at_the_end)
    with pytest.raises(openai.InternalServerError) as e:
        _create(late, response_format={"type": "json_object"})
    assert e.value.status_code == 502 and "the format call failed" in _error_of(e)["message"]


def test_serve_served_model_name_names_the_model(cli, monkeypatch):
    from fastapi.testclient import TestClient

    import serve.commands.serve as serve_cmd

    listed = []

    class Server:  # uvicorn's place: ask the app that `serve` built instead of listening
        stopped_by = None

        def __init__(self, config):
            self.app = config.app

        def run(self):
            with TestClient(self.app) as http:
                listed.append(http.get("/v1/models/org/math-solver").json())

    monkeypatch.setattr(serve_cmd, "_server_class", lambda: Server)
    cli("serve", "--navigator", "scripted", "--served-model-name", "org/math-solver")
    assert listed == [
        {
            "id": "org/math-solver",
            "object": "model",
            "created": 0,
            "owned_by": "reasonflux",
            "root": "org/math-solver",
            "parent": None,
        }
    ]
