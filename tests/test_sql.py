"""`reasonflux sql`: reads work in every format; every kind of write is refused and changes nothing."""

from __future__ import annotations

import csv
import io
import json

import pytest
import sqlalchemy as sa

from kb import templates as T
from kb.db import session_scope
from kb.sql_readonly import QueryFailed, WriteRefused, check_read_only, execute_read_only, run_readonly


@pytest.fixture
def seeded(db):
    with session_scope(db) as s:
        for name in ("Sum of terms", "Common ratio"):
            T.create_template(s, T.TemplateSpec(name=name, category="Sequences", tags=["series"],
                                                description="50% of the time it's this"))
    return db


def _snapshot(db) -> tuple:
    with db.engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT count(*), max(current_version_no), string_agg(status, ',' ORDER BY id) "
                                 "FROM template")).one(),
            conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar(),
            conn.execute(sa.text("SELECT count(*) FROM pg_class WHERE relname = 'evil'")).scalar(),
            conn.execute(sa.text("SELECT count(*) FROM pipeline_run")).scalar(),
        )


def test_reads_in_every_format(cli, seeded):
    q = "SELECT key, version_no, description FROM current_template ORDER BY key"
    rows = json.loads(cli("sql", q, "--json").output)
    assert rows == [
        {"key": "Sequences/Common ratio", "version_no": 1, "description": "50% of the time it's this"},
        {"key": "Sequences/Sum of terms", "version_no": 1, "description": "50% of the time it's this"},
    ]
    lines = cli("sql", q, "--jsonl").output.splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["Sequences/Common ratio", "Sequences/Sum of terms"]
    parsed = list(csv.reader(io.StringIO(cli("sql", q, "--csv").output)))
    assert parsed[0] == ["key", "version_no", "description"] and parsed[2][0] == "Sequences/Sum of terms"
    assert "Sequences/Common ratio" in cli("sql", q).output
    assert json.loads(cli("sql", "SELECT 1 AS a WHERE false", "--json").output) == []
    with_comment = "-- what is there?\nWITH c AS (SELECT category FROM template) SELECT count(*) AS n FROM c;"
    # after "--" a query may itself start with "--" (a comment) without being taken for an option
    assert json.loads(cli("sql", "--json", "--", with_comment).output) == [{"n": 2}]


WRITES = [
    "INSERT INTO template (key, category) VALUES ('x', 'y')",
    "UPDATE template SET status = 'deprecated'",
    "DELETE FROM template_version",
    "CREATE TABLE evil (x int)",
    "DROP TABLE template CASCADE",
    "ALTER TABLE template ADD COLUMN evil int",
    "TRUNCATE template CASCADE",
    "SELECT 1; DELETE FROM template",
    "SELECT 1; COMMIT; DELETE FROM template",
    "select 1 ;\n  update template set status = 'deprecated' -- hidden",
    "WITH x AS (DELETE FROM template RETURNING *) SELECT count(*) FROM x",
    "WITH x AS (UPDATE template SET status = 'deprecated' RETURNING 1) SELECT * FROM x",
    "SELECT * INTO evil FROM template",
    "SELECT * FROM template FOR UPDATE",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "SELECT pg_catalog.set_config('role', current_user, true)",
    'SELECT "set_config"(\'role\', current_user, true)',
    "SELECT nextval('template_id_seq')",
    "SELECT pg_advisory_lock(42)",
    "COPY template TO STDOUT",
    "BEGIN",
    "SET transaction_read_only = off",
    "DO $$ BEGIN DELETE FROM template; END $$",
    "EXPLAIN ANALYZE DELETE FROM template",
    "/* comment */ DELETE FROM template",
]


def test_writes_are_refused_and_change_nothing(cli, seeded):
    before = _snapshot(seeded)
    for query in WRITES:
        result = cli("sql", query, expect=None)
        assert result.exit_code == 2 and "refused" in result.output, (query, result.output)
        assert _snapshot(seeded) == before, query


SERVER_SIDE = [
    "INSERT INTO template (key, category) VALUES ('x', 'y')",
    "DELETE FROM template_version",
    "CREATE TABLE evil (x int)",
    "WITH x AS (DELETE FROM template RETURNING *) SELECT count(*) FROM x",
    "SELECT * INTO evil FROM template",
    "SELECT 1; COMMIT; DELETE FROM template",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid <> pg_backend_pid()",
    "SELECT nextval('template_id_seq')",
]


def test_the_server_refuses_writes_even_without_the_text_check(seeded):
    """The read-only transaction is a layer of its own: writes fail in the server too."""
    before = _snapshot(seeded)
    for query in SERVER_SIDE:
        with pytest.raises(WriteRefused):
            execute_read_only(seeded.engine, query)
        assert _snapshot(seeded) == before, query


def test_check_allows_reads_that_only_look_like_writes():
    for query in [
        "SELECT 'DELETE FROM template; DROP TABLE x' AS s",
        "SELECT $$;INSERT$$ AS s, 1 AS delete",
        'SELECT "update" FROM (SELECT 1 AS "update") t',
        "SELECT t.update FROM (SELECT 1 AS update) t",
        "/* DROP; */ SELECT 1 -- ; DELETE",
        "SELECT E'it\\'s; fine'",
        "VALUES (1), (2)",
        "TABLE current_template",
        "SHOW statement_timeout",
        "EXPLAIN SELECT * FROM template",
    ]:
        check_read_only(query)


def test_timeout_and_errors_are_clean(seeded):
    with pytest.raises(QueryFailed, match="statement timeout"):
        run_readonly(seeded.engine, "SELECT pg_sleep(5)", timeout_s=0.2)
    with pytest.raises(QueryFailed, match="does not exist"):
        run_readonly(seeded.engine, "SELECT nope FROM template")
    result = run_readonly(seeded.engine, "SHOW statement_timeout", timeout_s=7)
    assert result.rows == [("7s",)]


def test_cli_timeout_and_file(cli, seeded, tmp_path):
    result = cli("sql", "SELECT pg_sleep(5)", "--timeout", "0.2", expect=1)
    assert "statement timeout" in result.output
    path = tmp_path / "q.sql"
    path.write_text("SELECT count(*) AS n FROM template_version")
    assert json.loads(cli("sql", "--file", str(path), "--json").output) == [{"n": 2}]
    assert json.loads(cli("sql", "SELECT key FROM template ORDER BY key", "--max-rows", "1", "--json").output) == [
        {"key": "Sequences/Common ratio"}]


def test_table_output_keeps_brackets_as_data(cli, seeded):
    """Interval notation like [0, 1] must reach people intact, not be taken for terminal markup."""
    out = cli("sql", "SELECT 'x in [0, 1] and [bold]y[/bold]' AS text").output
    assert "x in [0, 1] and [bold]y[/bold]" in out
