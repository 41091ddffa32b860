"""The HTTP service under adversity: dead backends are 5xx, every error is OpenAI-shaped, every OpenAI
parameter honoured or refused, NUL is a 400, slow clients time out, a restarted database is reconnected,
and no secret leaves in a response or lands in a table."""

from __future__ import annotations

import socket
import time

import httpx
import pytest
import sqlalchemy as sa

from demo.play_along import play_along_backend
from demo.solve_templates import add_templates
from pipelines.llm.openai_backend import OpenAIBackend
from serve.http.errors import SESSION_HEADER
from tests.support.llm_server import LocalLLM, dead_url
from tests.support.solve_helpers import Service

KEY = "sk-test-0123456789abcdefXYZ"


@pytest.fixture
def service(db):
    started = []

    def start(*args, **kw):
        add_templates(db)
        started.append(Service(db, *args, **kw))
        return started[-1]

    yield start
    for s in started:
        s.close()


def _openai_shaped(r: httpx.Response) -> dict:
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["code"] and "param" in err, r.text
    return err


CHAT = {"model": "reasonflux", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}


def test_a_dead_backend_is_a_503_never_a_200_and_health_says_so(service, db):
    import openai

    s = service(OpenAIBackend("m", base_url=dead_url(), max_retries=0))
    with httpx.Client(base_url=s.url, timeout=30) as http:
        for path, body in (
            ("/v1/chat/completions", CHAT),
            ("/v1/chat/completions", {**CHAT, "stream": True}),
            ("/v1/solve", {"problem": "What is 2 + 2?"}),
            ("/v1/solve", {"problem": "What is 2 + 2?", "stream": True}),
        ):
            r = http.post(path, json=body)
            assert r.status_code == 503, (path, body, r.text)
            err = _openai_shaped(r)
            assert (
                err["code"] == "backend_unavailable" and "navigator backend is unreachable" in err["message"]
            )
            assert int(r.headers[SESSION_HEADER]) > 0  # the failed session is stored and named
        health = http.get("/healthz")
        assert health.status_code == 503 and health.json()["database"] is True
        roles = health.json()["roles"]
        assert set(roles) == {"navigator", "inference"} and not roles["navigator"]["ok"]
        assert "ConnectError" in roles["navigator"]["error"]
    client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**CHAT)


def test_a_backend_error_is_a_502_and_its_echoed_key_reaches_no_response_and_no_table(
    service, db, monkeypatch
):
    monkeypatch.setenv("RF_TEST_KEY", KEY)
    leaky = LocalLLM(status=400)  # its error body echoes "Authorization: Bearer <key>"
    try:
        s = service(OpenAIBackend("m", base_url=leaky.url, api_key_env="RF_TEST_KEY", max_retries=0))
        with httpx.Client(base_url=s.url, timeout=30) as http:
            r = http.post("/v1/chat/completions", json=CHAT)
            session = http.get(f"/v1/sessions/{r.headers[SESSION_HEADER]}").text
            health = http.get("/healthz").text
    finally:
        leaky.close()
    assert leaky.headers[0]["Authorization"] == f"Bearer {KEY}"  # the key was really sent, and echoed
    assert r.status_code == 502 and _openai_shaped(r)["code"] == "backend_error"
    assert "upstream refused" in r.text and "[REDACTED]" in r.text
    for text in (r.text, session, health):
        assert KEY not in text
    assert_no_table_holds(db, KEY)


def assert_no_table_holds(db, secret: str) -> None:
    # compared here, not in SQL: the engines scrub statement parameters, so `LIKE '%<key>%'` could not match
    with db.engine.connect() as conn:
        tables = conn.execute(sa.text("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"))
        dumps = {
            t: conn.execute(sa.text(f'SELECT x::text FROM "{t}" x')).scalars().all() for t in tables.scalars()
        }
    assert any(dumps.values())
    assert not {t: rows for t, rows in dumps.items() if any(secret in r for r in rows)}


def test_openai_parameters_are_honoured_or_refused(service, db):
    s = service(play_along_backend({"What is 2 + 2?": "4"}))
    with httpx.Client(base_url=s.url, timeout=30) as http:
        refused = {
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "auto",
            "stop": ["\n"],
            "logprobs": True,
            "presence_penalty": 0.5,
        }
        for name, value in refused.items():
            r = http.post("/v1/chat/completions", json={**CHAT, name: value})
            assert r.status_code == 400, (name, r.text)
            assert _openai_shaped(r)["param"] == name and "not supported" in r.json()["error"]["message"]
        r = http.post("/v1/chat/completions", json={**CHAT, "frobnicate": 1})
        assert r.status_code == 400 and _openai_shaped(r)["param"] == "frobnicate"
        r = http.post("/v1/chat/completions", json={**CHAT, "reasonflux": {"token_budget": 10**9}})
        assert r.status_code == 400 and "exceeds this server's limit" in r.text
        # honoured: n=1, temperature/top_p/seed reach both roles' calls, max_tokens caps the completion
        ok = http.post(
            "/v1/chat/completions",
            json={
                **CHAT,
                "n": 1,
                "temperature": 0.7,
                "top_p": 0.9,
                "seed": 5,
                "user": "u1",
                "tool_choice": "none",
            },
        )
        assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"].endswith("\\boxed{4}")
        sid = ok.json()["session_id"]
        assert str(sid) == ok.headers[SESSION_HEADER] == str(ok.json()["reasonflux"]["session_id"])
        with db.engine.connect() as conn:
            params = conn.execute(
                sa.text(
                    "SELECT DISTINCT params->>'temperature', params->>'top_p', "
                    "params->>'seed' FROM llm_call WHERE session_id = :s"
                ),
                {"s": sid},
            ).all()
        assert params == [("0.7", "0.9", "5")]
        short = http.post("/v1/chat/completions", json={**CHAT, "max_tokens": 5})
        assert short.status_code == 200 and short.json()["choices"][0]["finish_reason"] == "length"


def test_progress_stays_out_of_streamed_content_unless_asked(service):
    import openai

    s = service(play_along_backend({"What is 4 + 4?": "8"}))
    client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "What is 4 + 4?"}]

    def content(**extra):
        chunks = list(
            client.chat.completions.create(model="reasonflux", stream=True, messages=messages, **extra)
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), chunks

    plain, chunks = content()
    assert plain.endswith("\\boxed{8}") and "[plan]" not in plain and "[round" not in plain
    assert chunks[-1].model_extra["session_id"] > 0
    with_progress, _ = content(extra_body={"reasonflux_progress": True})
    assert "[plan]" in with_progress and "[round 1]" in with_progress
    with (
        httpx.Client(base_url=s.url, timeout=30) as http,
        http.stream(
            "POST", "/v1/chat/completions", json={"model": "reasonflux", "messages": messages, "stream": True}
        ) as r,
    ):
        assert int(r.headers[SESSION_HEADER]) > 0
        lines = list(r.iter_lines())
    assert any(line.startswith(": [plan]") for line in lines)  # progress as SSE comments


def test_every_error_is_openai_shaped_and_nul_is_a_400(service):
    s = service(play_along_backend({}))
    with httpx.Client(base_url=s.url, timeout=30) as http:
        cases = [
            (http.post("/v1/completions", json={"model": "reasonflux", "prompt": "x"}), 404, "not_found"),
            (http.get("/nowhere"), 404, "not_found"),
            (http.get("/v1/chat/completions"), 405, "method_not_allowed"),
            (http.get("/v1/sessions/99999999999999999999"), 400, "invalid_value"),
            (http.get("/v1/sessions/-1"), 400, "invalid_value"),
            (http.get("/v1/sessions/abc"), 400, "invalid_type"),
            (http.post("/v1/solve", json={"problem": "x\u0000y"}), 400, "nul_character"),
            (http.post("/v1/chat/completions", json={**CHAT, "user": "a\u0000"}), 400, "nul_character"),
            (
                http.post(
                    "/v1/chat/completions",
                    json={
                        "model": "reasonflux",
                        "messages": [{"role": "user", "content": [{"type": "text", "text": "\u0000"}]}],
                    },
                ),
                400,
                "nul_character",
            ),
            (http.get("/v1/templates/search", params={"q": "sum\u0000"}), 400, "nul_character"),
        ]
        for r, status, code in cases:
            assert r.status_code == status, (r.request.url, r.text)
            assert _openai_shaped(r)["code"] == code, r.text
        assert cases[7][0].json()["error"]["param"] == "user"


def test_slow_clients_are_cut_off(service):
    s = service(play_along_backend({}), header_timeout_s=0.5, body_timeout_s=0.5)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as slow_headers:
        slow_headers.sendall(b"POST /v1/solve HTTP/1.1\r\nHost: x\r\n")  # ... and never the rest
        time.sleep(1.5)
        assert slow_headers.recv(1000) == b""  # closed by the server
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as slow_body:
        slow_body.sendall(
            b"POST /v1/solve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"problem":'
        )
        chunks = []  # headers and body may arrive in separate segments: read until the server closes
        while chunk := slow_body.recv(4000):
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 408") and "request_timeout" in reply


def test_the_service_reconnects_after_its_database_connections_are_dropped(db):
    from kb.db import Database, create_engine

    own = Database(url=db.url, embedded=False, engine=create_engine(db.url))  # its own pool, as `serve` has
    add_templates(db)
    s = Service(own, play_along_backend({"What is 1 + 1?": "2"}))
    try:
        _solve_across_a_restart(s, db)
    finally:
        s.close()
        own.dispose()


def _solve_across_a_restart(s, db):
    with httpx.Client(base_url=s.url, timeout=30) as http:
        assert http.post("/v1/solve", json={"problem": "What is 1 + 1?"}).json()["answer"] == "2"
        with db.engine.connect() as conn:  # what a server restart does to every pooled connection
            killed = conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).scalar()
        assert killed >= 1
        assert http.get("/healthz", params={"backends": "false"}).json()["database"] is True
        assert http.post("/v1/solve", json={"problem": "What is 1 + 1?"}).json()["answer"] == "2"


def _raw_post(http: httpx.Client, path: str, raw: str) -> httpx.Response:
    return http.post(path, content=raw.encode(), headers={"content-type": "application/json"})


def test_lone_surrogates_non_string_text_parts_and_deep_bodies_are_400s_naming_the_field(service):
    s = service(play_along_backend({"What is 2 + 2?": "4"}))
    user = '{"model": "reasonflux", "messages": [{"role": "user", "content": %s}]}'
    with httpx.Client(base_url=s.url, timeout=30) as http:
        cases = [
            (
                _raw_post(http, "/v1/chat/completions", user % '"2 + 2 \\ud800?"'),
                "invalid_unicode",
                "messages.0.content",
            ),
            (
                _raw_post(http, "/v1/chat/completions", user % '[{"type": "text", "text": "\\udfff"}]'),
                "invalid_unicode",
                "messages.0.content.0.text",
            ),
            (_raw_post(http, "/v1/solve", '{"problem": "x \\udc00"}'), "invalid_unicode", "problem"),
            (
                http.post(
                    "/v1/chat/completions",
                    json={
                        "model": "reasonflux",
                        "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}],
                    },
                ),
                "invalid_type",
                "messages[0].content[0].text",
            ),
            (
                _raw_post(http, "/v1/chat/completions", user % ("[" * 1500 + "]" * 1500)),
                "nested_too_deeply",
                "body",
            ),
            (
                _raw_post(http, "/v1/solve", '{"problem": "x", "p": ' + "[" * 80 + "]" * 80 + "}"),
                "nested_too_deeply",
                None,
            ),
        ]
        for r, code, param in cases:
            assert r.status_code == 400, (r.request.content[:80], r.text)
            err = _openai_shaped(r)
            assert err["code"] == code, r.text
            if param:
                assert err["param"] == param and param in err["message"], r.text
        # A surrogate pair is one character (U+1F600), not a lone half: solved as usual.
        ok = _raw_post(http, "/v1/chat/completions", user % '"What is 2 + 2? \\ud83d\\ude00"')
        assert ok.status_code == 200, ok.text


@pytest.mark.timeout(120)
def test_idle_sockets_do_not_crowd_out_clients_or_healthz(service):
    """300 idle connections from one address, against a server at uvicorn's limit of 256: the address's
    longest-idle connections are closed to make room, and /healthz answers at once (not after the header
    timeout)."""
    s = service(
        play_along_backend({"What is 2 + 2?": "4"}),
        header_timeout_s=60,
        max_per_client=8,
        limit_concurrency=256,
    )
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", s.port), timeout=10))
        with httpx.Client(base_url=s.url, timeout=10) as http:
            health = http.get("/healthz", params={"backends": "false"})
            assert health.status_code == 200, health.text
            chat = http.post("/v1/chat/completions", json=CHAT)
            assert chat.status_code == 200, chat.text
        closed = 0
        for sock in idle:
            sock.settimeout(0.05)
            try:
                closed += sock.recv(1) == b""
            except TimeoutError:
                pass
        assert closed >= 300 - 8, closed  # at most max_per_client of them were kept
    finally:
        for sock in idle:
            sock.close()
