"""One scrub (kb/secrets.py) for every secret stored or printed: registered keys, Authorization/Bearer
credentials, keys inside URLs. Against a real server that echoes the Authorization header into its
error body, the key reaches no table and no output."""

from __future__ import annotations

import base64
import json

import pytest
import sqlalchemy as sa

from kb import secrets
from kb.secrets import REDACTED, scrub
from pipelines.trajectories_store import insert_trajectory
from tests.pipelines.test_run_lifecycle import add_problems, q
from tests.serve.test_http_hardening import assert_no_table_holds
from tests.support.llm_server import LocalLLM

KEY = "k3y-registered-0123456789"


@pytest.mark.parametrize(
    "text, leaked",
    [
        ("HTTP 401: got Authorization: Bearer abcdef123456", "abcdef123456"),
        ('{"headers": {"authorization": "Basic dXNlcjpwYXNz"}}', "dXNlcjpwYXNz"),
        ("curl -H 'Authorization: token ghp_abcdefgh1234'", "ghp_abcdefgh1234"),
        ("key sk-proj-abcdefghijklmnopqrstuv in the text", "sk-proj-abcdefghijklmnopqrstuv"),
        ("base_url http://user:hunter2secret@gpu:8000/v1", "hunter2secret"),
        ("https://api.example.com/v1?api_key=zzz999zzz&x=1", "zzz999zzz"),
        ("https://host/v1?token=tok-123456#frag", "tok-123456"),
    ],
)
def test_secret_shapes_are_scrubbed(text, leaked):
    out = scrub(text)
    assert leaked not in out and REDACTED in out


def test_registered_values_anywhere_and_structures_recursively():
    secrets.register_secret(KEY)
    data = {"a": [f"x{KEY}y", ("t", KEY)], "b": {"c": KEY}, "n": 3, "none": None}
    assert scrub(data) == {
        "a": [f"x{REDACTED}y", ("t", REDACTED)],
        "b": {"c": REDACTED},
        "n": 3,
        "none": None,
    }
    assert scrub("postgresql://postgres:***@/db") == "postgresql://postgres:***@/db"  # already masked: kept
    assert scrub("the authorization of the theorem") == "the authorization of the theorem"  # prose: kept


def test_serialized_json_stays_valid_json():
    text = json.dumps(json.dumps({"error": 'got Authorization: Bearer abc123456"quoted" http://u:pw9999@h/'}))
    assert "abc123456" not in scrub(text) and "pw9999" not in scrub(text)
    json.loads(json.loads(scrub(text)))


def test_a_value_under_a_secrets_name_is_scrubbed_at_any_depth():
    data = {
        "extra_body": {"provider": [{"api_key": "plain-value", "max_tokens": 5}], "X-Api-Key": "v2"},
        "headers": {"Authorization": "opaque"},
        "token_count": 3,
        "HF_TOKEN": "v3",
        "password": "",
    }
    assert scrub(data) == {
        "extra_body": {"provider": [{"api_key": REDACTED, "max_tokens": 5}], "X-Api-Key": REDACTED},
        "headers": {"Authorization": REDACTED},
        "token_count": 3,
        "HF_TOKEN": REDACTED,
        "password": "",
    }
    # What the engines see of a JSON column is its text: the same names are found there, and it stays JSON.
    text = scrub(json.dumps(data | {"client_secret": 'with "quotes" \\ inside'}))
    assert json.loads(text) == scrub(data) | {"client_secret": REDACTED}
    assert scrub(repr({"token": "v4"})) == repr({"token": REDACTED})
    assert scrub('{"max_tokens": "9", "monkey": "x"}') == '{"max_tokens": "9", "monkey": "x"}'


def test_a_secret_nested_in_an_llm_config_reaches_no_table_and_no_output(db, cli):
    """A role's options (extra_body included) are recorded in the run's params, read by `runs show` and `sql`."""
    from kb.runs import pipeline_run
    from pipelines.llm.config import RoleConfig

    secret = "plain-body-secret-0123"
    role = RoleConfig("openai", {"model": "m", "extra_body": {"auth": {"token": secret}}})
    with pipeline_run(db, "sample", {"navigator": role.describe()}) as (run_id, _):
        pass
    with db.engine.begin() as conn:  # written as JSON text, past scrub(): the engine's scrub still sees it
        conn.execute(
            sa.text("UPDATE pipeline_run SET counts = CAST(:c AS jsonb)"),
            {"c": json.dumps({"extra": {"password": secret}})},
        )
    shown = cli("runs", "show", str(run_id), "--json").stdout
    shown += cli("sql", "SELECT params::text, counts::text FROM pipeline_run").stdout
    assert secret not in shown and REDACTED in shown
    assert_no_table_holds(db, secret)


def test_an_echoed_key_reaches_no_table_and_no_output(db, cli, tmp_path, monkeypatch):
    """sample, evaluate and mine against a server that echoes the key in its error; the base URL holds a
    password too. Then runs list/show print everything that was stored."""
    api_key, url_password = "sk-live-secretkey0123456789", "urlpass0123456"
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    add_problems(db, tmp_path)
    with db.engine.begin() as conn:
        insert_trajectory(conn, 1, [("Add them", None, None)], "hand", "k", abstraction="addition")
    leaky = LocalLLM(status=401)
    with_password = f"openai:m@{leaky.url.replace('http://', f'http://user:{url_password}@')}"
    spec = f"openai:m@{leaky.url}"
    basic = base64.b64encode(f"user:{url_password}".encode()).decode()  # what httpx sends for that URL
    outputs = []
    try:
        for args in (
            ("sample", "--problems", "all", "--n", "1", "--hint-k", "0", "--navigator", with_password),
            ("rollouts", "--trajectories", "all", "--inference", spec),
            ("mine", "--problems", "all", "--miner", spec),
        ):
            result = cli(*args, "--max-attempts", "1", "--json", expect=5)
            outputs.append(result.stdout + result.stderr)
    finally:
        leaky.close()
    assert any(
        h.get("Authorization") == f"Bearer {api_key}" for h in leaky.headers
    )  # it was sent, and echoed
    run_ids = [r[0] for r in q(db, "SELECT id FROM pipeline_run ORDER BY id")]
    outputs.append(cli("runs", "list", "--json").stdout)
    outputs += [cli("runs", "show", str(i), "--json").stdout for i in run_ids]
    outputs.append(cli("sql", "SELECT reason FROM failure UNION ALL SELECT error FROM work_unit").stdout)
    text = "\n".join(outputs)
    assert "upstream refused" in text and REDACTED in text  # the errors are there, scrubbed
    for secret in (api_key, url_password, basic):
        assert secret not in text
        assert_no_table_holds(db, secret)
