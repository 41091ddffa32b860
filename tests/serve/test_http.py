"""The HTTP service started for real on a loopback port, driven by the OpenAI client and plain httpx."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from demo.play_along import play_along_backend
from demo.solve_templates import add_templates
from serve.app import create_app
from serve.solver import Solver, SolverConfig
from serve.traces import get_session

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ANSWERS = {f"What is {i} + {i}?": str(2 * i) for i in range(40)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def service(db):
    import uvicorn

    add_templates(db)
    backend = play_along_backend(ANSWERS, latency_s=0.05)
    solver = Solver(db, backend, backend, SolverConfig(max_rounds=6, token_budget=20_000))
    app = create_app(db, solver, token=TOKEN, max_body_bytes=4096, max_concurrent=32, max_problem_chars=1000)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", solver
    server.should_exit = True
    thread.join(timeout=10)
    solver.close()


def test_auth_is_required_and_enforced(service):
    base, _ = service
    with httpx.Client(base_url=base, timeout=30) as http:
        assert http.get("/healthz").json()["status"] == "ok"  # health needs no token
        schema = http.get("/openapi.json").json()
        assert {
            "/v1/solve",
            "/v1/chat/completions",
            "/v1/sessions/{session_id}",
            "/v1/templates/search",
            "/healthz",
        } <= set(schema["paths"])
        assert "HTTPBearer" in schema["components"]["securitySchemes"]
        for method, path, body in (
            ("POST", "/v1/solve", {"problem": "What is 1 + 1?"}),
            ("GET", "/v1/sessions/1", None),
            ("GET", "/v1/templates/search?q=sum", None),
            ("POST", "/v1/chat/completions", {"model": "reasonflux", "messages": []}),
            ("POST", "/v1/solve", "not json"),
        ):
            kw = {"json": body} if isinstance(body, dict) else {"content": body} if body else {}
            for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": TOKEN}):
                r = http.request(method, path, headers=headers, **kw)
                assert r.status_code == 401, (method, path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        r = http.post("/v1/solve", json={"problem": "What is 1 + 1?"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["answer"] == "2"


def test_bad_requests_are_rejected_with_4xx(service):
    base, _ = service
    with httpx.Client(base_url=base, timeout=30, headers=AUTH) as http:
        cases = [
            (http.post("/v1/solve", content=b"{not json", headers={"content-type": "application/json"}), 400),
            (http.post("/v1/solve", json={}), 400),
            (http.post("/v1/solve", json={"problem": ""}), 400),
            (http.post("/v1/solve", json={"problem": "x", "unknown": 1}), 400),
            (http.post("/v1/solve", json={"problem": "x", "max_rounds": 0}), 400),
            (http.post("/v1/solve", json={"problem": "x", "max_rounds": 99}), 400),
            (http.post("/v1/solve", json={"problem": "   "}), 400),
            (http.post("/v1/solve", json={"problem": "x", "problem_id": 12345}), 400),
            (http.post("/v1/solve", json={"problem": "x" * 2000}), 413),  # over max_problem_chars
            (http.post("/v1/solve", json={"problem": "x" * 10_000}), 413),  # over max_body_bytes
            (
                http.post(
                    "/v1/solve",
                    content=(b"x" * 1000 for _ in range(10)),
                    headers={"content-type": "application/json"},
                ),
                413,
            ),  # chunked, no length
            (http.post("/v1/chat/completions", json={"model": "reasonflux", "messages": []}), 400),
            (
                http.post(
                    "/v1/chat/completions",
                    json={"model": "reasonflux", "messages": [{"role": "system", "content": "hi"}]},
                ),
                400,
            ),
            (
                http.post(
                    "/v1/chat/completions",
                    json={"model": "gpt-4", "messages": [{"role": "user", "content": "What is 1 + 1?"}]},
                ),
                404,
            ),
            (http.get("/v1/sessions/999999"), 404),
            (http.get("/v1/sessions/abc"), 400),
            (http.get("/v1/templates/search"), 400),
            (http.get("/v1/templates/search", params={"q": "sum", "k": 0}), 400),
            (http.get("/v1/templates/search", params={"q": "sum", "mode": "nonsense"}), 400),
        ]
        for r, status in cases:
            assert r.status_code == status, (r.request.url, r.text)
            assert r.json()["error"]["message"], r.text
        assert "max_rounds 99 exceeds" in cases[5][0].json()["error"]["message"]


def test_openai_client_non_streaming_and_streaming(service, db):
    import openai

    base, _ = service
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=TOKEN, max_retries=0)
    assert [m.id for m in client.models.list()] == ["reasonflux"]
    resp = client.chat.completions.create(
        model="reasonflux",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 3 + 3?"}],
    )
    assert resp.choices[0].message.content.endswith("\\boxed{6}")
    assert resp.choices[0].finish_reason == "stop" and resp.usage.total_tokens > 0
    sid = resp.model_extra["reasonflux"]["session_id"]
    assert get_session(db, sid)["final_answer"] == "6"

    stream = client.chat.completions.create(
        model="reasonflux",
        stream=True,
        messages=[{"role": "user", "content": "What is 4 + 4?"}],
        extra_body={"reasonflux_progress": True},  # progress lines in the content only when asked
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "[plan]" in text and "[round 1]" in text and text.endswith("\\boxed{8}")
    assert chunks[-1].choices[0].finish_reason == "stop"

    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base}/v1", api_key="nope", max_retries=0).chat.completions.create(
            model="reasonflux", messages=[{"role": "user", "content": "What is 1 + 1?"}]
        )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "What is 1 + 1?"}]
        )


def test_solve_streams_rounds_as_server_sent_events(service, db):
    base, _ = service
    events = []
    with httpx.Client(base_url=base, timeout=30, headers=AUTH) as http:
        with http.stream(
            "POST", "/v1/solve", json={"problem": "What is 5 + 5?", "reference": "10", "stream": True}
        ) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            name = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
        kinds = [e for e, _ in events]
        assert (
            kinds[0] == "session" and kinds[-1] == "done" and kinds.count("round") == 4
        )  # plan, 2 steps, final
        done = events[-1][1]
        assert done["answer"] == "10" and done["correct"] is True
        trace = http.get(f"/v1/sessions/{done['session_id']}", params={"render": "true"}).json()
        assert [r["kind"] for r in trace["rounds_detail"]] == ["plan", "step", "step", "final"]
        assert "Final answer: 10 (correct)" in trace["trace"]
        hits = http.get("/v1/templates/search", params={"q": "sum of an arithmetic sequence", "k": 2}).json()[
            "hits"
        ]
        assert len(hits) == 2 and hits[0]["version_id"]


def test_twenty_concurrent_solves_complete_with_traces(service, db):
    base, solver = service
    problems = [f"What is {i} + {i}?" for i in range(20)]
    with (
        httpx.Client(
            base_url=base, timeout=60, headers=AUTH, limits=httpx.Limits(max_connections=20)
        ) as http,
        ThreadPoolExecutor(20) as pool,
    ):
        responses = list(pool.map(lambda p: http.post("/v1/solve", json={"problem": p}), problems))
    assert [r.status_code for r in responses] == [200] * 20
    results = [r.json() for r in responses]
    assert [r["answer"] for r in results] == [str(2 * i) for i in range(20)]
    assert len({r["session_id"] for r in results}) == 20
    for r in results:
        s = get_session(db, r["session_id"])
        assert s["status"] == "solved" and [x["kind"] for x in s["rounds_detail"]] == [
            "plan",
            "step",
            "step",
            "final",
        ]
        assert sum(s["llm_calls"].values()) == r["llm_calls"] == 5
    # Concurrent sessions' calls reached the backend in shared batches.
    assert solver.batchers["navigator"].stats()["mean_batch"] > 1.5


def test_serve_refuses_a_public_address_without_a_token(cli):
    r = cli("serve", "--host", "0.0.0.0", "--navigator", "scripted", expect=2)
    assert "without a token" in r.output
