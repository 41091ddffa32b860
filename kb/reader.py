"""The read-only database role, `reasonflux_reader`: what `reasonflux sql` (and any BI tool) logs in as.

The role can log in and SELECT the tables and views of our schema, and nothing else: it is not a
superuser, cannot create roles or databases, bypass row security or replicate, and is a member of no
role, so no statement it runs can SET ROLE or SET SESSION AUTHORIZATION its way back to the owner.
Privileges, not the text check in kb.sql_readonly, are what keep a query from writing, reading
server files or signalling other sessions.

How it logs in:
- the embedded server listens only on its Unix socket with `trust` authentication (pgserver's
  initdb), so the reader connects over the same socket with no password;
- on an external server it connects to the same host, port and database with the password in
  REASONFLUX_READER_PASSWORD (when set), or with whatever the server's pg_hba.conf allows.

`ensure_reader_role` creates the role when the connecting user may (superuser or CREATEROLE) and
grants SELECT on whatever in the schema it cannot read yet; where the role is missing and cannot be
created, it fails closed with the SQL an administrator runs (docs/sql.md, "The read-only role").
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg import sql as pgsql
from sqlalchemy.engine import Engine, make_url

from kb.errors import KbError

READER_ROLE = "reasonflux_reader"
PASSWORD_ENV = "REASONFLUX_READER_PASSWORD"
# Where `reasonflux db serve` leaves the password it set (in the embedded server's data directory, which is
# also its socket directory), so that `reasonflux sql` still logs in once the password is required.
PASSWORD_FILE = "reasonflux_reader.password"
_LOCK_KEY = 0x52464B52  # one process at a time creates the role and grants (catalog updates conflict)
_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"


class ReaderUnavailable(KbError):
    """The read-only role is missing, unsafe, or cannot log in: `reasonflux sql` refuses to run."""


def admin_sql(database: str = "<database>", schema: str = "public") -> str:
    """What an administrator runs when we may not create the role ourselves."""
    return (f"CREATE ROLE {READER_ROLE} {_ATTRIBUTES} PASSWORD '...'; "
            f"GRANT CONNECT ON DATABASE {database} TO {READER_ROLE}; "
            f"GRANT USAGE ON SCHEMA {schema} TO {READER_ROLE}; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {READER_ROLE}")


def ensure_reader_role(engine: Engine) -> None:
    """Create the reader role if missing (when allowed) and let it SELECT everything in our schema."""
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
        me = conn.execute(sa.text(
            "SELECT current_user, current_database(), current_schema(), rolsuper, rolcreaterole "
            "FROM pg_roles WHERE rolname = current_user")).one()
        exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": READER_ROLE}).first()
        raw = conn.connection.driver_connection
        if not exists:
            if not (me.rolsuper or me.rolcreaterole):
                raise ReaderUnavailable(
                    f"`reasonflux sql` runs queries as the read-only role {READER_ROLE}, which does not exist, and "
                    f"{me.current_user} may not create roles; ask an administrator to run: "
                    f"{admin_sql(me.current_database, me.current_schema)} (docs/sql.md, 'The read-only role')")
            password = os.environ.get(PASSWORD_ENV)
            create = pgsql.SQL("CREATE ROLE {} " + _ATTRIBUTES).format(pgsql.Identifier(READER_ROLE))
            if password:
                create += pgsql.SQL(" PASSWORD {}").format(pgsql.Literal(password))
            try:
                with raw.transaction():  # a savepoint: another database of the cluster may create it first
                    raw.execute(create)
            except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
                pass
            # A session of the role starts read-only too, for tools that log in as it directly.
            raw.execute(pgsql.SQL("ALTER ROLE {} SET default_transaction_read_only = on")
                        .format(pgsql.Identifier(READER_ROLE)))
        elif me.rolsuper and _widened(conn):  # keep an existing role within bounds (someone widened it)
            raw.execute(pgsql.SQL("ALTER ROLE {} " + _ATTRIBUTES.replace("LOGIN ", ""))
                        .format(pgsql.Identifier(READER_ROLE)))
        _grant_reads(conn, me.current_database, me.current_schema)
        conn.commit()


def _widened(conn: sa.Connection) -> bool:
    return bool(conn.execute(sa.text(
        "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls OR rolinherit "
        "FROM pg_roles WHERE rolname = :r"), {"r": READER_ROLE}).scalar())


def _grant_reads(conn: sa.Connection, database: str, schema: str) -> None:
    """GRANT only what is missing: a no-op grant still rewrites catalog rows."""
    missing = conn.execute(sa.text(
        "SELECT NOT has_database_privilege(:r, current_database(), 'CONNECT') "
        "OR NOT has_schema_privilege(:r, current_schema(), 'USAGE') "
        "OR EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "           WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
        "           AND NOT has_table_privilege(:r, c.oid, 'SELECT'))"), {"r": READER_ROLE}).scalar()
    if not missing:
        return
    raw, role = conn.connection.driver_connection, pgsql.Identifier(READER_ROLE)
    try:
        with raw.transaction():  # a savepoint
            raw.execute(pgsql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(pgsql.Identifier(database), role))
            raw.execute(pgsql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(pgsql.Identifier(schema), role))
            raw.execute(pgsql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}")
                        .format(pgsql.Identifier(schema), role))
    except psycopg.errors.InsufficientPrivilege:
        # Not the owner of everything: the reader keeps what an administrator granted, and a query on
        # anything else fails with the server's "permission denied", which is the point.
        pass


def reader_password(url: str) -> str | None:
    """The reader's password: REASONFLUX_READER_PASSWORD, else the one `db serve` left beside the socket."""
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    socket_dir = make_url(url).query.get("host")
    if isinstance(socket_dir, str) and socket_dir.startswith("/"):
        path = Path(socket_dir) / PASSWORD_FILE
        if path.is_file():
            return path.read_text().strip() or None
    return None


def reader_url(url: str) -> str:
    """URL (libpq form) of the same server and database, logging in as the reader role."""
    u = make_url(url).set(drivername="postgresql", username=READER_ROLE, password=reader_password(url))
    return u.render_as_string(hide_password=False)


def connect_reader(url: str, *, application_name: str = "reasonflux sql") -> psycopg.Connection:
    """A psycopg connection logged in as the reader; refuses one whose role could do more than read."""
    try:
        conn = psycopg.connect(reader_url(url), connect_timeout=10, application_name=application_name)
    except psycopg.OperationalError as e:
        reason = (str(e).strip().splitlines() or ["connection failed"])[-1]
        raise ReaderUnavailable(
            f"cannot log in as the read-only role {READER_ROLE}: {reason}; set {PASSWORD_ENV} to its password "
            f"or allow it in pg_hba.conf (docs/sql.md, 'The read-only role')") from None
    try:
        check_reader_session(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def check_reader_session(conn: psycopg.Connection) -> None:
    """Fail closed unless the session is the reader, with no attribute or membership beyond reading."""
    row = conn.execute(
        "SELECT session_user::text, current_user::text, r.rolsuper, r.rolcreaterole, r.rolcreatedb, "
        "r.rolreplication, r.rolbypassrls, "
        "ARRAY(SELECT g.rolname::text FROM pg_roles g WHERE g.oid <> r.oid AND pg_has_role(r.oid, g.oid, 'MEMBER') "
        "      ORDER BY 1) "
        "FROM pg_roles r WHERE r.rolname = session_user").fetchone()
    conn.rollback()
    if row is None or row[0] != READER_ROLE or row[1] != READER_ROLE:
        raise ReaderUnavailable(f"the query session is not the read-only role {READER_ROLE}; nothing was run")
    powers = [name for name, on in zip(("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS"), row[2:7])
              if on]
    if powers or row[7]:
        extra = ", ".join([*powers, *(f"member of {g}" for g in row[7])])
        raise ReaderUnavailable(
            f"the role {READER_ROLE} can do more than read ({extra}); nothing was run. Remove that "
            f"(ALTER ROLE / REVOKE) so `reasonflux sql` cannot write")
