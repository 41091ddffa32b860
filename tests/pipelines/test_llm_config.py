"""LLM configs refuse what they do not understand; OPENAI_BASE_URL; keyless servers; `reasonflux llm check`."""

from __future__ import annotations

import json

import pytest

from kb.errors import InputError
from pipelines.llm.config import load_config, parse_spec
from tests.support.llm_server import LocalLLM, dead_url


def _cfg(tmp_path, text, suffix=".toml"):
    path = tmp_path / f"llm{suffix}"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, where, key",
    [
        (
            '[roles.navigator]\nbackend = "openai"\nmodel = "m"\nmax_concurency = 4\n',
            "roles.navigator",
            "max_concurency",
        ),
        (
            '[roles.navigator]\nbackend = "scripted"\n[roles.navigator.sampling]\ntemprature = 0.5\n',
            "roles.navigator.sampling",
            "temprature",
        ),
        ('[role.navigator]\nbackend = "scripted"\n', None, "role"),
        ('[prompts]\ndirectory = "p"\n', "prompts", "directory"),
        (
            '[roles.inference]\nbackend = "transformers"\nmodel_path = "/m"\nbatchsize = 2\n',
            "roles.inference",
            "batchsize",
        ),
    ],
)
def test_unknown_keys_at_every_level_are_refused_naming_key_and_file(tmp_path, text, where, key):
    path = _cfg(tmp_path, text)
    with pytest.raises(InputError) as e:
        load_config(path)
    assert e.value.field == key and e.value.file == str(path) and e.value.record == where
    assert repr(key) in str(e.value) and str(path) in str(e.value)


def test_known_keys_load_and_yaml_is_checked_the_same(tmp_path):
    ok = load_config(
        _cfg(
            tmp_path,
            '[roles.navigator]\nbackend = "openai"\nmodel = "m"\nmax_concurrency = 4\n'
            "timeout_s = 5\n[roles.navigator.sampling]\ntemperature = 0.3\n",
        )
    )
    assert ok.roles["navigator"].options == {"model": "m", "max_concurrency": 4, "timeout_s": 5}
    with pytest.raises(InputError, match="'max_concurency'"):
        load_config(
            _cfg(
                tmp_path,
                "roles:\n  miner:\n    backend: openai\n    model: m\n    max_concurency: 4\n",
                ".yaml",
            )
        )


def test_openai_base_url_from_the_environment(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gpu-node:8000/v1")
    assert parse_spec("openai:m").options["base_url"] == "http://gpu-node:8000/v1"
    assert (
        parse_spec("openai:m@http://other:1/v1").options["base_url"] == "http://other:1/v1"
    )  # the spec wins
    from pipelines.llm.openai_backend import OpenAIBackend

    assert OpenAIBackend("m").base_url == "http://gpu-node:8000/v1"  # a config file role without base_url


def test_keyless_local_server_needs_no_dummy_key(cli, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    server = LocalLLM(reply=lambda body: "OK")
    try:
        out = cli("llm", "check", "--navigator", f"openai:served-model@{server.url}", "--json")
    finally:
        server.close()
    [row] = json.loads(out.stdout)
    assert row["ok"] and row["model"] == "served-model" and row["reply"] == "OK" and row["latency_ms"] > 0
    assert "Authorization" not in server.headers[0] and "authorization" not in server.headers[0]
    assert server.requests[0]["max_tokens"] == 8


def test_llm_check_reports_each_role_and_exits_non_zero_when_one_fails(cli, tmp_path):
    server = LocalLLM(reply=lambda body: "OK")
    cfg = _cfg(
        tmp_path,
        f'[roles.navigator]\nbackend = "openai"\nmodel = "nav"\nbase_url = "{server.url}"\n'
        f'[roles.inference]\nbackend = "openai"\nmodel = "inf"\nbase_url = "{dead_url()}"\n',
    )
    try:
        out = cli("llm", "check", "--llm-config", str(cfg), "--json", expect=6)
        only_ok = cli(
            "llm", "check", "--llm-config", str(cfg), "--inference", f"openai:inf@{server.url}", "--json"
        )
    finally:
        server.close()
    rows = {r["role"]: r for r in json.loads(out.stdout)}
    assert rows["navigator"]["ok"] and not rows["inference"]["ok"]
    assert "ConnectError" in rows["inference"]["error"]
    assert "1 of 2 roles failed; first reasons: inference: ConnectError" in out.stderr
    assert all(r["ok"] for r in json.loads(only_ok.stdout))
    assert "no role to check" in cli("llm", "check", expect=2).stderr


def test_a_secret_nested_in_a_role_is_refused_naming_its_path(tmp_path):
    path = _cfg(
        tmp_path,
        '[roles.navigator]\nbackend = "openai"\nmodel = "m"\n'
        '[roles.navigator.extra_body]\nprovider = {order = ["a"], api_key = "sk-in-a-file"}\n',
    )
    with pytest.raises(InputError, match="secrets never go in a config file") as e:
        load_config(path)
    assert e.value.field == "extra_body.provider.api_key" and e.value.record == "roles.navigator"
    ok = _cfg(
        tmp_path,
        '[roles.navigator]\nbackend = "openai"\nmodel = "m"\n[roles.navigator.extra_body]\nmax_tokens = 5\n',
        suffix=".2.toml",
    )
    assert load_config(ok).roles["navigator"].options["extra_body"] == {"max_tokens": 5}
