"""LLM backends: transformers on the tiny model for real, openai against a local HTTP server, call logging."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa

from kb.errors import InputError, KbError
from kb.runs import start_run
from pipelines.llm import ChatRequest, SamplingParams, available_backends, create_backend, get_backend
from pipelines.llm.calls import LoggedBackend
from pipelines.llm.config import load_config, parse_spec

MSG = [{"role": "system", "content": "You solve math."}, {"role": "user", "content": "What is 1+1?"}]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


# ------------------------------------------------------------------ transformers


def test_transformers_backend_generates_batched_with_token_counts(tiny_dir):
    backend = create_backend("transformers", model_path=str(tiny_dir))
    reqs = [
        ChatRequest(MSG, SamplingParams(max_tokens=12)),
        ChatRequest(
            [{"role": "user", "content": "A much longer prompt about sequences and series " * 3}],
            SamplingParams(max_tokens=12),
        ),
        ChatRequest(MSG, SamplingParams(temperature=0.9, max_tokens=8, seed=7)),
    ]
    out = backend.generate(reqs)
    assert len(out) == 3
    assert all(c.error is None for c in out)
    assert out[1].prompt_tokens > out[0].prompt_tokens > 0
    assert all(0 < c.completion_tokens <= r.params.max_tokens for c, r in zip(out, reqs))
    assert all(isinstance(c.text, str) for c in out)
    # Greedy decoding and a fixed seed reproduce.
    again = backend.generate([reqs[0], reqs[2]])
    assert [again[0].text, again[1].text] == [out[0].text, out[2].text]


def test_transformers_backend_applies_vllm_sampling_extras(tiny_dir):
    backend = create_backend("transformers", model_path=str(tiny_dir))
    assert set(backend.sampling_extras) == {"top_k", "min_p", "repetition_penalty"}
    plain, penalised = backend.generate(
        [
            ChatRequest(MSG, SamplingParams(max_tokens=24)),
            ChatRequest(MSG, SamplingParams(max_tokens=24, repetition_penalty=50.0)),  # its own generate call
        ]
    )
    assert plain.error is None and penalised.error is None and penalised.text != plain.text
    [sampled] = backend.generate(
        [ChatRequest(MSG, SamplingParams(temperature=0.9, max_tokens=8, seed=3, top_k=1, min_p=0.05))]
    )
    assert sampled.error is None
    # top_k=1 is greedy whatever the temperature
    [greedy] = backend.generate([ChatRequest(MSG, SamplingParams(max_tokens=8))])
    assert sampled.text == greedy.text


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(KbError, match="never downloaded"):
        create_backend("transformers", model_path=str(tmp_path / "nope"))
    with pytest.raises(KbError, match="not a local model directory"):
        create_backend("transformers", model_path="Qwen/Qwen2.5-0.5B-Instruct")


def test_one_instance_per_backend_and_options(tiny_dir):
    a = get_backend("transformers", model_path=str(tiny_dir))
    b = get_backend("transformers", model_path=str(tiny_dir))
    c = get_backend("scripted", default="x")
    assert a is b
    assert c is not a and c is get_backend("scripted", default="x")


# ------------------------------------------------------------------ vllm / scripted / registry


def test_vllm_is_registered_and_explains_the_missing_extra(tmp_path):
    assert {"scripted", "transformers", "openai", "vllm"} <= set(available_backends())
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(KbError, match=r"reasonflux-kb\[vllm\]"):
            create_backend("vllm", model_path=str(tmp_path))
    else:
        pytest.skip("vllm is installed here; the missing-extra error cannot be shown")


def test_scripted_backend_through_the_registry():
    backend = create_backend("scripted", rules=[(r"1\+1", "\\boxed{2}")], default="no idea")
    out = backend.generate([ChatRequest(MSG), ChatRequest([{"role": "user", "content": "hm"}])])
    assert [c.text for c in out] == ["\\boxed{2}", "no idea"]
    with pytest.raises(KbError, match="unknown LLM backend"):
        create_backend("nonesuch")


# ------------------------------------------------------------------ openai against a real local server


class FakeOpenAI:
    """A real HTTP server on 127.0.0.1 speaking the chat-completions API, scripted per test."""

    def __init__(self, script=None, delay_s=0.0, model=None):
        self.script = list(script or [])  # status codes to return before succeeding
        self.delay_s = delay_s
        self.model = model  # a backend that answers (e.g. the tiny model); else an echo
        self.attempts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.auth_headers: list[str | None] = []
        self.bodies: list[dict] = []  # every request body received, in order
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.attempts += 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                    server.auth_headers.append(self.headers.get("Authorization"))
                    server.bodies.append(body)
                    status = server.script.pop(0) if server.script else 200
                try:
                    time.sleep(server.delay_s)
                    if status != 200:
                        payload = json.dumps({"error": {"message": "try later"}}).encode()
                    elif server.model is not None:
                        params = SamplingParams(
                            temperature=body["temperature"],
                            top_p=body["top_p"],
                            max_tokens=body["max_tokens"],
                            seed=body.get("seed"),
                        )
                        [c] = server.model.generate([ChatRequest(body["messages"], params)])
                        payload = json.dumps(
                            {
                                "choices": [{"message": {"role": "assistant", "content": c.text}}],
                                "usage": {
                                    "prompt_tokens": c.prompt_tokens,
                                    "completion_tokens": c.completion_tokens,
                                },
                            }
                        ).encode()
                    else:
                        text = "echo: " + body["messages"][-1]["content"]
                        payload = json.dumps(
                            {
                                "choices": [{"message": {"role": "assistant", "content": text}}],
                                "usage": {"prompt_tokens": 11, "completion_tokens": 3},
                            }
                        ).encode()
                finally:
                    # Count the request done before its reply leaves: once the client reads the reply it
                    # may send its next request, which must not find this one still counted.
                    with server.lock:
                        server.in_flight -= 1
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_server():
    servers = []

    def make(**kw):
        servers.append(FakeOpenAI(**kw))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


def test_openai_retries_429_and_500_then_succeeds(fake_server):
    srv = fake_server(script=[429, 500, 503])
    backend = create_backend("openai", model="m", base_url=srv.url, backoff_s=0.01, max_retries=4)
    [c] = backend.generate([ChatRequest(MSG)])
    assert c.error is None and c.text == "echo: What is 1+1?"
    assert (c.prompt_tokens, c.completion_tokens) == (11, 3)
    assert srv.attempts == 4


def test_openai_gives_up_after_bounded_retries(fake_server):
    srv = fake_server(script=[500] * 10)
    backend = create_backend("openai", model="m", base_url=srv.url, backoff_s=0.01, max_retries=2)
    [c] = backend.generate([ChatRequest(MSG)])
    assert c.text == "" and "HTTP 500" in c.error and "3 attempts" in c.error
    assert srv.attempts == 3


def test_openai_does_not_retry_a_client_error(fake_server):
    srv = fake_server(script=[400])
    backend = create_backend("openai", model="m", base_url=srv.url, backoff_s=0.01, max_retries=3)
    [c] = backend.generate([ChatRequest(MSG)])
    assert "HTTP 400" in c.error and srv.attempts == 1


def test_openai_timeout_is_retried_then_reported(fake_server):
    srv = fake_server(delay_s=0.5)
    backend = create_backend(
        "openai", model="m", base_url=srv.url, timeout_s=0.1, backoff_s=0.01, max_retries=1
    )
    [c] = backend.generate([ChatRequest(MSG)])
    assert "Timeout" in c.error and srv.attempts == 2


def test_openai_keeps_many_requests_in_flight_within_the_limit(fake_server):
    srv = fake_server(delay_s=0.15)
    backend = create_backend("openai", model="m", base_url=srv.url, max_concurrency=4)
    reqs = [ChatRequest([{"role": "user", "content": f"q{i}"}]) for i in range(12)]
    out = backend.generate(reqs)
    assert [c.text for c in out] == [f"echo: q{i}" for i in range(12)]  # order kept
    assert srv.max_in_flight == 4


def test_api_key_comes_from_env_and_never_reaches_the_log(fake_server, db, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("RF_TEST_KEY", secret)
    srv = fake_server()
    backend = create_backend("openai", model="m", base_url=srv.url, api_key_env="RF_TEST_KEY")
    assert secret not in repr(backend)
    run_id = start_run(db, "test")
    logged = LoggedBackend(backend, db, run_id, "test")
    # Even a prompt that (wrongly) quotes the key is scrubbed before it is stored.
    logged.generate([ChatRequest([{"role": "user", "content": f"my key is {secret}"}])])
    assert srv.auth_headers == [f"Bearer {secret}"]
    with db.engine.connect() as conn:
        dump = conn.execute(sa.text("SELECT row_to_json(c)::text FROM llm_call c")).scalars().all()
        runs = conn.execute(sa.text("SELECT params::text FROM pipeline_run")).scalars().all()
    assert len(dump) == 1 and "[REDACTED]" in dump[0]
    assert all(secret not in row for row in dump + runs)
    with pytest.raises(KbError, match="api_key_env"):
        create_backend("openai", model="m", base_url=srv.url, api_key="sk-inline")
    monkeypatch.delenv("RF_TEST_KEY")
    with pytest.raises(KbError, match="RF_TEST_KEY"):
        create_backend("openai", model="m2", base_url=srv.url, api_key_env="RF_TEST_KEY")


# ------------------------------------------------------------------ call logging


def test_every_call_is_logged_with_run_and_session(db):
    backend = create_backend("scripted", rules=[("1\\+1", "\\boxed{2}")])
    run_id = start_run(db, "test")
    logged = LoggedBackend(backend, db, run_id, "sample")
    reqs = [
        ChatRequest(MSG, SamplingParams(temperature=0.7, seed=3), tags={"unit": "p1"}),
        ChatRequest([{"role": "user", "content": "unmatched"}]),
    ]
    out = logged.generate(reqs)
    assert out[1].error
    logged.with_session(None).generate([ChatRequest(MSG)])
    with db.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "SELECT run_id, stage, backend, model, messages, params, response, error, prompt_tokens, "
                    "completion_tokens FROM llm_call ORDER BY id"
                )
            )
            .mappings()
            .all()
        )
    assert len(rows) == 3
    assert all(r["run_id"] == run_id and r["stage"] == "sample" and r["backend"] == "scripted" for r in rows)
    assert rows[0]["messages"] == MSG and rows[0]["response"] == "\\boxed{2}"
    assert rows[0]["params"]["temperature"] == 0.7 and rows[0]["params"]["seed"] == 3
    assert rows[0]["params"]["tags"] == {"unit": "p1"}
    assert rows[0]["prompt_tokens"] > 0 and rows[0]["completion_tokens"] == 1
    assert rows[1]["error"] and rows[1]["response"] == ""


# ------------------------------------------------------------------ config


def test_config_file_roles_and_flags(tmp_path, tiny_dir):
    cfg = tmp_path / "llm.toml"
    cfg.write_text(f"""
[roles.navigator]
backend = "transformers"
model_path = "{tiny_dir}"
[roles.navigator.sampling]
temperature = 0.7
max_tokens = 64
[roles.inference]
backend = "openai"
model = "qwen"
base_url = "http://127.0.0.1:9/v1"
api_key_env = "SOME_KEY"
""")
    conf = load_config(cfg)
    nav = conf.role("navigator")
    assert nav.backend == "transformers" and nav.sampling_params(seed=1) == SamplingParams(
        temperature=0.7, max_tokens=64, seed=1
    )
    assert conf.role("inference").options["api_key_env"] == "SOME_KEY"
    assert conf.role("inference", "scripted").backend == "scripted"  # a flag beats the file
    assert parse_spec("openai:qwen@http://h:8000/v1").options["base_url"] == "http://h:8000/v1"
    yml = tmp_path / "llm.yaml"
    yml.write_text("roles:\n  navigator:\n    backend: openai\n    model: m\n    api_key: sk-oops\n")
    with pytest.raises(InputError, match="api_key") as e:
        load_config(yml)
    assert "sk-oops" not in str(e.value)
    with pytest.raises(InputError, match="no LLM configured"):
        conf.role("miner")
    with pytest.raises(InputError, match="unknown LLM backend"):
        parse_spec("gpt5:whatever")


def test_openai_backend_against_a_server_serving_the_tiny_model(fake_server, tiny_dir, db, tmp_path):
    """The openai backend end to end: an OpenAI-compatible app on 127.0.0.1 serving the tiny model, used by
    the sampling stage; the same text comes back as from the model directly."""
    from pipelines.problems import import_problems
    from pipelines.sample import sample

    local = create_backend("transformers", model_path=str(tiny_dir))
    srv = fake_server(model=local)
    remote = create_backend("openai", model="tiny", base_url=srv.url, max_concurrency=2)
    req = ChatRequest(MSG, SamplingParams(max_tokens=10))
    [direct], [served] = local.generate([req]), remote.generate([req])
    assert served.error is None and served.text == direct.text
    assert served.completion_tokens == direct.completion_tokens > 0
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"problem": "Solve x+1=2.", "answer": "1", "unique_id": "o/1"})
    )
    import_problems(db, tmp_path / "p.jsonl", preset="math500", embed=False)
    out = sample(db, "all", remote, n=3, sampling=SamplingParams(temperature=0.9, max_tokens=12), hint_k=0)
    assert out["failures_recorded"] + out["trajectories_written"] == 3  # garbage plans are recorded
    with db.engine.connect() as conn:
        calls = conn.execute(sa.text("SELECT backend, model, completion_tokens FROM llm_call")).all()
    assert len(calls) == 3 and all(c[0] == "openai" and c[1] == "tiny" and c[2] > 0 for c in calls)
    assert srv.attempts == 4


def test_structured_output_sends_the_contract_schema_when_the_role_asks_for_it(fake_server, db, tmp_path):
    """The navigator contract is enforced at decode time where the server can: the plan request carries the
    contract's JSON schema as response_format (vLLM and sglang honour it); without the setting, it does not."""
    from pipelines import navigator
    from pipelines.llm.structured import decoding_schema
    from pipelines.problems import import_problems
    from pipelines.sample import sample

    srv = fake_server()
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"problem": "Solve x+1=2.", "answer": "1", "unique_id": "o/1"})
    )
    import_problems(db, tmp_path / "p.jsonl", preset="math500", embed=False)
    strict = create_backend("openai", model="m", base_url=srv.url, structured_output=True)
    sample(db, "all", strict, n=1, navigator_name="strict", hint_k=0)
    fmt = srv.bodies[-1]["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    # The decoder-friendly form (no length bounds to expand into a grammar); the parser checks the full one.
    assert fmt["json_schema"]["schema"] == decoding_schema(navigator.plan_schema(navigator.MAX_STEPS))
    plain = create_backend("openai", model="m", base_url=srv.url)
    sample(db, "all", plain, n=1, navigator_name="plain", hint_k=0)
    assert "response_format" not in srv.bodies[-1]
    # A request without a schema (a rollout, a step) never gets one, even with the setting on.
    strict.generate([ChatRequest(MSG)])
    assert "response_format" not in srv.bodies[-1]


def test_openai_backend_sends_vllm_sampling_extras_unless_told_not_to(fake_server):
    srv = fake_server()
    params = SamplingParams(top_k=20, repetition_penalty=1.1)
    create_backend("openai", model="m", base_url=srv.url).generate([ChatRequest(MSG, params)])
    assert srv.bodies[-1]["top_k"] == 20 and srv.bodies[-1]["repetition_penalty"] == 1.1
    assert "min_p" not in srv.bodies[-1]  # only what is set
    create_backend("openai", model="m", base_url=srv.url).generate([ChatRequest(MSG)])
    assert not {"top_k", "min_p", "repetition_penalty"} & set(srv.bodies[-1])
    strict = create_backend("openai", model="m2", base_url=srv.url, sampling_extras=False)
    strict.generate([ChatRequest(MSG, params)])  # e.g. OpenAI's own API, which refuses them
    assert strict.sampling_extras == () and not {"top_k", "repetition_penalty"} & set(srv.bodies[-1])
    # recorded params carry the extras only when set
    assert "top_k" not in SamplingParams().to_dict() and params.to_dict()["top_k"] == 20


def test_call_rows_fill_exactly_the_columns_the_trace_writer_inserts():
    """One llm_call row shape: the stages' LoggedBackend and the solver's trace writer share call_rows."""
    from pipelines.llm.calls import CALL_COLUMNS, call_rows

    backend = create_backend("scripted", default="hi")
    [row] = call_rows(
        backend, [ChatRequest(MSG)], backend.generate([ChatRequest(MSG)]), run_id=None, stage="x"
    )
    assert tuple(row) == CALL_COLUMNS
