"""`reasonflux sql`: reads work in every format; every kind of write is refused and changes nothing."""

from __future__ import annotations

import csv
import io
import json
import uuid
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kb import reader_role
from kb import templates as T
from kb.db import session_scope
from kb.errors import TimedOut
from kb.reader_role import READER_ROLE, ReaderUnavailable, connect_reader
from kb.readonly_query import QueryFailed, WriteRefused, check_read_only, execute_read_only, run_readonly


@pytest.fixture
def seeded(db):
    with session_scope(db) as s:
        for name in ("Sum of terms", "Common ratio"):
            T.create_template(
                s,
                T.TemplateSpec(
                    name=name, category="Sequences", tags=["series"], description="50% of the time it's this"
                ),
            )
    return db


def _snapshot(db) -> tuple:
    with db.engine.connect() as conn:
        return (
            conn.execute(
                sa.text(
                    "SELECT count(*), max(current_version_no), string_agg(status, ',' ORDER BY id) "
                    "FROM template"
                )
            ).one(),
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
    "SELECT \"set_config\"('role', current_user, true)",
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
    with pytest.raises(TimedOut, match="statement timeout"):
        run_readonly(seeded.engine, "SELECT pg_sleep(5)", timeout_s=0.2)
    with pytest.raises(QueryFailed, match="does not exist"):
        run_readonly(seeded.engine, "SELECT nope FROM template")
    # The server-side limit is the time left of the 7 s.
    ((shown,),) = run_readonly(seeded.engine, "SHOW statement_timeout", timeout_s=7).rows
    left_ms = int(shown.removesuffix("ms")) if shown.endswith("ms") else int(shown.removesuffix("s")) * 1000
    assert 0 < left_ms <= 7000


def test_cli_timeout_and_file(cli, seeded, tmp_path):
    result = cli("sql", "SELECT pg_sleep(5)", "--timeout", "0.2", expect=7)
    assert "statement timeout" in result.output
    path = tmp_path / "q.sql"
    path.write_text("SELECT count(*) AS n FROM template_version")
    assert json.loads(cli("sql", "--file", str(path), "--json").output) == [{"n": 2}]
    assert json.loads(
        cli("sql", "SELECT key FROM template ORDER BY key", "--max-rows", "1", "--json").output
    ) == [{"key": "Sequences/Common ratio"}]


def test_table_output_keeps_brackets_as_data(cli, seeded):
    """Interval notation like [0, 1] must reach people intact, not be taken for terminal markup."""
    out = cli("sql", "SELECT 'x in [0, 1] and [bold]y[/bold]' AS text").output
    assert "x in [0, 1] and [bold]y[/bold]" in out


# ---------------------------------------------------------------- the read-only role: privileges are the wall


def test_queries_run_as_the_reader_role_which_can_only_read(seeded):
    result = run_readonly(seeded.engine, "SELECT session_user AS s, current_user AS c")
    assert result.rows == [(READER_ROLE, READER_ROLE)]
    with seeded.engine.connect() as conn:
        role = conn.execute(
            sa.text(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin, "
                "(SELECT count(*) FROM pg_auth_members m WHERE m.member = r.oid) FROM pg_roles r WHERE rolname = :r"
            ),
            {"r": READER_ROLE},
        ).one()
    assert tuple(role) == (False, False, False, False, False, True, 0)


ESCALATIONS = [  # each must fail on privileges alone: autocommit, no READ ONLY transaction, no text check
    "DELETE FROM template",
    "INSERT INTO template (key, category) VALUES ('x', 'y')",
    "UPDATE template SET status = 'deprecated'",
    "CREATE TABLE evil (x int)",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "SELECT set_config('role', 'postgres', false)",
    "SELECT pg_catalog.\"set_config\"('session_authorization', 'postgres', false)",
    "SELECT U&\"\\0073et_config\"('role', 'postgres', false)",
    "SELECT query_to_xml('SELECT rolpassword FROM pg_authid', true, false, '')",
    "SELECT query_to_xml('SELECT pg_read_file(''PG_VERSION'')', true, false, '')",
    "SELECT xpath('/row', query_to_xml('SELECT pg_ls_dir(''.'')', true, false, ''))",
    "DO $$ BEGIN EXECUTE 'DELETE FROM template'; END $$",
    "DO $$ BEGIN EXECUTE 'SET ROLE postgres'; END $$",
    "SELECT pg_read_file('PG_VERSION')",
    "SELECT pg_read_binary_file('/etc/passwd')",
    "SELECT pg_ls_dir('.')",
    "SELECT lo_import('/etc/passwd')",
    "COPY (SELECT 1) TO PROGRAM 'touch /tmp/rf_reader_escalated'",
    "COPY template FROM '/etc/passwd'",
    "SELECT * FROM pg_authid",
    "SELECT pg_reload_conf()",
    "ALTER SYSTEM SET work_mem = '1GB'",
    f"ALTER ROLE {READER_ROLE} SUPERUSER",
    f"GRANT postgres TO {READER_ROLE}",
    "CREATE ROLE rf_evil LOGIN SUPERUSER",
    # Writes outside any table privilege, locks the owner's commands wait on, SQL run from a string.
    "CREATE TEMP TABLE spill (x text)",
    "SELECT lo_from_bytea(0, 'x')",
    "SELECT lo_create(0)",
    "SELECT lowrite(lo_open(0, 131072), 'x')",
    f"SELECT pg_advisory_lock({0x52464B42})",  # kb.migrate's key: `db upgrade` would wait on it
    f"SELECT pg_advisory_xact_lock({0x52464B52})",  # kb.reader_role's key: `reasonflux sql` would
    "SELECT pg_try_advisory_lock_shared(1)",
    "SELECT pg_notify('c', 'x')",
    "SELECT ts_stat('SELECT set_config(''statement_timeout'', ''0'', false)::tsvector')",
]


def test_escalations_fail_on_the_roles_privileges_alone(seeded, tmp_path):
    """Bypass both the text check and the READ ONLY transaction: the role itself must say no."""
    run_readonly(seeded.engine, "SELECT 1")  # creates the role and its grants
    before = _snapshot(seeded)
    owner = seeded.engine.connect()
    owner_pid = owner.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    owner.commit()
    statements = [
        *ESCALATIONS,
        f"SELECT pg_terminate_backend({owner_pid})",
        f"SELECT pg_cancel_backend({owner_pid})",
    ]
    with connect_reader(seeded.url) as conn:
        conn.autocommit = True
        # Its sessions start read-only, for tools logging in as it directly; a layer it may lift itself,
        # so lift it here: what follows is refused by privileges alone.
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        conn.execute("SET default_transaction_read_only = off")
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
            assert conn.execute("SELECT current_user, session_user").fetchone() == (READER_ROLE, READER_ROLE)
    assert owner.execute(sa.text("SELECT 1")).scalar() == 1  # the owner's session was not ended
    owner.close()
    assert _snapshot(seeded) == before
    assert not Path("/tmp/rf_reader_escalated").exists()


SPELLINGS = [
    "SELECT SET_CONFIG('role', 'postgres', false)",
    "SELECT Pg_Catalog.Set_Config('role', 'postgres', false)",
    "SELECT \"pg_catalog\".\"set_config\"('role', 'postgres', false)",
    "SELECT pg_catalog . /* hidden */ set_config ('role', 'postgres', false)",
    "SELECT U&\"\\0073et_config\"('role', 'postgres', false)",
    "SELECT u&\"pg_read_file\"('PG_VERSION')",
    "SELECT query_to_xml('SELECT pg_read_file(''PG_VERSION'')', true, false, '')",
    "SELECT xpath('/x', query_to_xml('DELETE FROM template RETURNING 1', true, false, ''))",
    "SELECT \"PG_READ_FILE\"('PG_VERSION')",
    "SELECT lo_import('/etc/passwd')",
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "RESET ROLE",
    "DO $$ BEGIN PERFORM set_config('role', 'postgres', false); END $$",
]


def test_other_spellings_are_refused_by_the_text_check_too(cli, seeded):
    before = _snapshot(seeded)
    for query in SPELLINGS:
        with pytest.raises(WriteRefused):
            check_read_only(query)
        result = cli("sql", query, expect=None)
        assert result.exit_code == 2 and "refused" in result.output, (query, result.output)
    assert _snapshot(seeded) == before


def test_max_rows_stops_a_huge_result_early(cli, seeded):
    huge = "SELECT a.i, b.j FROM generate_series(1, 1000000) a(i) CROSS JOIN generate_series(1, 1000000) b(j)"
    result = run_readonly(seeded.engine, huge, max_rows=5, timeout_s=20)
    assert result.rows == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5)] and result.truncated
    assert len(json.loads(cli("sql", huge, "--max-rows", "3", "--json").output)) == 3
    # Exactly max_rows rows: nothing was left out.
    exact = run_readonly(seeded.engine, "SELECT * FROM generate_series(1, 3)", max_rows=3)
    assert len(exact.rows) == 3 and not exact.truncated
    many = run_readonly(seeded.engine, "SELECT * FROM generate_series(1, 2500)")
    assert len(many.rows) == 2500 and not many.truncated  # several fetch batches


def test_repeated_column_names_are_all_kept(cli, seeded):
    assert json.loads(cli("sql", "select 1 as a, 2 as a", "--json").output) == [{"a": 1, "a_2": 2}]
    rows = json.loads(cli("sql", "SELECT count(*), count(DISTINCT category) FROM template", "--json").output)
    assert rows == [{"count": 2, "count_2": 1}]
    parsed = list(csv.reader(io.StringIO(cli("sql", "select 1 as a, 2 as a, 3 as a_2", "--csv").output)))
    assert parsed == [["a", "a_2", "a_2_2"], ["1", "2", "3"]]


def _role_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _drop_role(db, name: str) -> None:
    with db.engine.connect() as conn:
        conn.execute(sa.text(f'DROP OWNED BY "{name}"'))
        conn.execute(sa.text(f'DROP ROLE "{name}"'))
        conn.commit()


def test_fails_closed_where_the_role_cannot_be_created(seeded, monkeypatch):
    monkeypatch.setattr(reader_role, "READER_ROLE", _role_name("rf_reader_missing"))
    owner = _role_name("rf_plain_owner")
    with seeded.engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{owner}" LOGIN'))
        conn.commit()
    engine = sa.create_engine(make_url(seeded.url).set(username=owner))
    try:
        with pytest.raises(ReaderUnavailable, match="may not create roles; ask an administrator"):
            execute_read_only(engine, "SELECT 1")
    finally:
        engine.dispose()
        _drop_role(seeded, owner)


def test_a_reader_role_that_can_do_more_is_refused(seeded, monkeypatch):
    name = _role_name("rf_reader_wide")
    monkeypatch.setattr(reader_role, "READER_ROLE", name)
    with seeded.engine.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{name}" LOGIN'))
        conn.execute(sa.text(f'GRANT pg_write_all_data TO "{name}"'))
        conn.commit()
    try:
        with pytest.raises(ReaderUnavailable, match="member of pg_write_all_data"):
            execute_read_only(seeded.engine, "SELECT 1")
        assert _snapshot(seeded)
    finally:
        _drop_role(seeded, name)


def test_without_max_rows_the_timeout_bounds_the_whole_read(seeded):
    endless = (
        "SELECT a.i, b.j FROM generate_series(1, 1000000) a(i) CROSS JOIN generate_series(1, 1000000) b(j)"
    )
    with pytest.raises(TimedOut, match="for the whole --timeout"):
        run_readonly(seeded.engine, endless, timeout_s=1)


def test_cli_default_row_cap_is_announced_and_zero_lifts_it(cli, seeded):
    from kb.cli.sql import DEFAULT_MAX_ROWS

    query = f"SELECT i FROM generate_series(1, {DEFAULT_MAX_ROWS + 5}) i"
    capped = cli("sql", query, "--csv")
    assert len(capped.stdout.splitlines()) == DEFAULT_MAX_ROWS + 1  # header + rows
    assert f"stopped at --max-rows {DEFAULT_MAX_ROWS} (the default" in capped.stderr
    full = cli("sql", query, "--csv", "--max-rows", "0")
    assert len(full.stdout.splitlines()) == DEFAULT_MAX_ROWS + 6 and "stopped" not in full.stderr


def test_a_widened_reader_role_is_narrowed_again_where_we_are_superuser(seeded):
    run_readonly(seeded.engine, "SELECT 1")
    with seeded.engine.connect() as conn:
        conn.execute(sa.text(f"ALTER ROLE {READER_ROLE} SUPERUSER CREATEROLE"))
        conn.commit()
    assert run_readonly(seeded.engine, "SELECT current_user AS u").rows == [(READER_ROLE,)]
    with seeded.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = :r"),
                {"r": READER_ROLE},
            ).scalar()
            is False
        )


# ---------------------------------------------------------------- time limits kept from outside (issue 16.5)

# Switches its timeout off in the first FETCH batch, then sleeps a second per row in the next one.
SELF_UNTIMED = (
    "SELECT i, set_config('statement_timeout', '0', false), CASE WHEN i > 1000 THEN pg_sleep(1) END "
    "FROM generate_series(1, 1020) i"
)


def test_a_statement_cannot_switch_off_its_own_timeout(cli, seeded):
    with pytest.raises(TimedOut, match="--timeout"):
        execute_read_only(seeded.engine, SELF_UNTIMED, timeout_s=2)
    with pytest.raises(TimedOut):
        execute_read_only(
            seeded.engine, "SELECT set_config('statement_timeout', '0', false), pg_sleep(30)", timeout_s=2
        )
    # Through the command: functions that run SQL given as a string are refused (text check and privileges).
    hidden = SELF_UNTIMED.replace(
        "set_config('statement_timeout', '0', false)",
        "(SELECT count(*) FROM ts_stat('SELECT set_config(''statement_timeout'', ''0'', false)::tsvector'))",
    )
    result = cli("sql", hidden, "--timeout", "2", expect=None)
    assert result.exit_code == 2 and "ts_stat" in result.output, result.output
    with pytest.raises(WriteRefused, match="ts_stat"):
        execute_read_only(seeded.engine, hidden, timeout_s=2)


def test_owner_lock_waits_end_naming_the_holder(seeded, monkeypatch):
    """`db upgrade` waiting on a migration lock another session holds gives up with who holds it."""
    import threading

    from kb import migrate, pglocks

    monkeypatch.setattr(pglocks, "WAIT_S", 1.0)
    holder = psycopg.connect(
        make_url(seeded.url).set(drivername="postgresql").render_as_string(hide_password=False),
        autocommit=True,
        application_name="rf-lock-holder",
    )
    outcome: list[BaseException | None] = []

    def upgrade() -> None:
        try:
            migrate.upgrade(seeded.engine)
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001  (handed to the test thread)
            outcome.append(e)

    try:
        pid = holder.execute("SELECT pg_backend_pid()").fetchone()[0]
        holder.execute("SELECT pg_advisory_lock(%s)", (migrate._LOCK_KEY,))
        worker = threading.Thread(target=upgrade, daemon=True)
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "migrate.upgrade still waits for the lock"
    finally:
        holder.close()  # frees the lock: a waiting upgrade (before the fix) can finish
    assert isinstance(outcome[0], TimedOut), outcome
    assert f"pid {pid}" in str(outcome[0]) and "rf-lock-holder" in str(outcome[0])
    migrate.upgrade(seeded.engine)  # and once it is free, it goes through


def test_a_password_the_reader_sets_itself_does_not_lock_the_owner_out(seeded, monkeypatch):
    """Where the reader logs in with REASONFLUX_READER_PASSWORD (an external server: simulated here by
    requiring its password on the socket), `reasonflux sql` sets that password again when the role
    changed its own."""
    if "host=" not in seeded.url:
        pytest.skip("edits the embedded server's pg_hba.conf")
    run_readonly(seeded.engine, "SELECT 1")
    monkeypatch.setenv(reader_role.PASSWORD_ENV, "chosen-by-the-owner")
    assert reader_role.reassert_password(seeded.engine)
    with seeded.engine.connect() as conn:
        hba = Path(conn.execute(sa.text("SHOW hba_file")).scalar())
    original = hba.read_text()

    def reload() -> None:
        with seeded.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT pg_reload_conf()")).scalar()

    hba.write_text(f"local  all  {READER_ROLE}  scram-sha-256\n{original}")  # spaced: not the legacy line
    reload()
    try:
        with connect_reader(seeded.url) as conn:
            conn.autocommit = True
            conn.execute("SET default_transaction_read_only = off")
            conn.execute(f"ALTER ROLE {READER_ROLE} PASSWORD 'taken-over'")
        assert run_readonly(seeded.engine, "SELECT current_user AS u").rows == [(READER_ROLE,)]
    finally:
        hba.write_text(original)
        reload()


def test_an_earlier_db_serve_password_line_is_removed(seeded):
    """`db serve` once required the reader's password on the embedded server's socket, so a password the
    role changed itself locked `reasonflux sql` out; that line goes on first use."""
    if "host=" not in seeded.url:
        pytest.skip("edits the embedded server's pg_hba.conf")
    run_readonly(seeded.engine, "SELECT 1")  # the role exists
    with seeded.engine.connect() as conn:
        hba = Path(conn.execute(sa.text("SHOW hba_file")).scalar())
        original = hba.read_text()
        hba.write_text(f"{reader_role.LEGACY_HBA_LINE}\n{original}")
        conn.execute(sa.text(f"ALTER ROLE {READER_ROLE} PASSWORD 'changed-by-the-reader'"))
        conn.execute(sa.text("SELECT pg_reload_conf()"))
        conn.commit()
    try:
        assert run_readonly(seeded.engine, "SELECT current_user AS u").rows == [(READER_ROLE,)]
        assert reader_role.LEGACY_HBA_LINE not in hba.read_text().splitlines()
    finally:
        hba.write_text(original)
        with seeded.engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_reload_conf()"))


def test_a_migration_waiting_on_a_readers_table_lock_ends_naming_it(seeded, monkeypatch):
    """A reader's open transaction holds its tables: `db upgrade`/`downgrade` gives up instead of hanging."""
    import threading

    from kb import migrate, pglocks

    monkeypatch.setattr(pglocks, "WAIT_S", 1.0)
    run_readonly(seeded.engine, "SELECT 1")
    head = migrate.current_revision(seeded.engine)
    outcome: list[BaseException | None] = []

    def downgrade() -> (
        None
    ):  # down to 0006: 0007's downgrade drops retriever_model, which the reader has open
        try:
            migrate.downgrade(seeded.engine, "0006")
            outcome.append(None)
        except BaseException as e:  # noqa: BLE001  (handed to the test thread)
            outcome.append(e)

    reader_conn = connect_reader(seeded.url, application_name="rf-reader-tx")
    worker = threading.Thread(target=downgrade, daemon=True)
    try:
        pid = reader_conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        reader_conn.execute("SELECT count(*) FROM retriever_model").fetchone()  # its transaction stays open
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive(), "the downgrade still waits for the reader's lock"
    finally:
        reader_conn.close()
        if worker.is_alive():
            worker.join(timeout=60)
        if migrate.current_revision(seeded.engine) != head:
            migrate.upgrade(seeded.engine)
    assert isinstance(outcome[0], TimedOut), outcome
    assert f"pid {pid}" in str(outcome[0]) and "rf-reader-tx" in str(outcome[0])
    assert migrate.current_revision(seeded.engine) == head  # nothing was changed
