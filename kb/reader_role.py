"""The read-only database role, `reasonflux_reader`: what `reasonflux sql` (and any BI tool) logs in as.

The role can log in and SELECT the tables and views of our schema, and nothing else: it is not a
superuser, cannot create roles or databases, bypass row security or replicate, and is a member of no
role, so no statement it runs can SET ROLE or SET SESSION AUTHORIZATION its way back to the owner.
Privileges, not the text check in kb.readonly_query, are what keep a query from writing, reading
server files or signalling other sessions. Even in a read-write transaction (default_transaction_read_only
is a setting any session may turn off) it writes nothing anywhere: TEMP on our database and EXECUTE on
the functions in _UNSAFE_FUNCTIONS (large objects, advisory locks, notifications, SQL run from a
string) are revoked from PUBLIC. PostgreSQL lets any role change its own defaults and password, and
nothing forbids it; so neither is trusted: every use puts the defaults (SETTINGS) back, and the owner's
tools never log in with the role's password on the embedded server.

How it logs in:
- the embedded server listens only on its Unix socket with `trust` authentication (pgserver's
  initdb), so the reader connects over the same socket with no password;
- on an external server it connects to the same host, port and database with the password in
  REASONFLUX_READER_PASSWORD (when set), or with whatever the server's pg_hba.conf allows.

`ensure_reader_role` creates the role when the connecting user may (superuser or CREATEROLE), grants
SELECT on whatever in the schema it cannot read yet and revokes what it must not run; where the role is
missing and cannot be created, or could still write and we may not revoke that, it fails closed with
the SQL an administrator runs (docs/sql.md, "The read-only role").
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg import sql as pgsql
from sqlalchemy.engine import Engine, make_url

from kb.errors import KbError
from kb.pglocks import advisory_lock

READER_ROLE = "reasonflux_reader"
PASSWORD_ENV = "REASONFLUX_READER_PASSWORD"
# `db serve` once made the server check the reader's password on the embedded server's socket and left
# that password beside it; a password the reader can change itself then decided whether the owner's
# `reasonflux sql` could log in. Both are removed where found: the socket is trusted (only this OS user
# can reach it) and `db serve` checks its clients' password itself (kb.reader_relay).
LEGACY_HBA_LINE = f"local all {READER_ROLE} scram-sha-256"
PASSWORD_FILE = "reasonflux_reader.password"
_LOCK_KEY = 0x52464B52  # one process at a time creates the role and grants (catalog updates conflict)
_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"


class ReaderUnavailable(KbError):
    """The read-only role is missing, unsafe, or cannot log in: `reasonflux sql` refuses to run."""


def admin_sql(database: str = "<database>", schema: str = "public") -> str:
    """What an administrator runs when we may not create the role ourselves."""
    return (
        f"CREATE ROLE {READER_ROLE} {_ATTRIBUTES} PASSWORD '...'; "
        f"GRANT CONNECT ON DATABASE {database} TO {READER_ROLE}; "
        f"GRANT USAGE ON SCHEMA {schema} TO {READER_ROLE}; "
        f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {READER_ROLE}"
    )


# What every session of the role starts with (ALTER ROLE ... SET), put back on every use: the role may
# change its own defaults (PostgreSQL lets any role do that), so they are never trusted, only re-asserted.
# `db serve` also sends them in each relayed session's start-up message, which outranks the role's.
SETTINGS = {
    "default_transaction_read_only": "on",
    "statement_timeout": "300000",  # ms
    "lock_timeout": "5000",
    "idle_in_transaction_session_timeout": "60000",
}
# Functions no reader may run although PUBLIC may by default: they write outside any table privilege
# (large objects, notifications), hold locks the owner's commands wait on (advisory locks), or run SQL
# text given as a string (where a statement could switch off its own timeout, or hide from any check).
_UNSAFE_NAMES = (
    "loread",
    "lowrite",
    "pg_notify",
    "ts_stat",
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "connectby",
)
_UNSAFE_FUNCTIONS = r"""
SELECT p.oid::regprocedure::text FROM pg_proc p
WHERE (p.proname LIKE 'lo\_%' OR p.proname LIKE 'pg\_advisory\_%' OR p.proname LIKE 'pg\_try\_advisory\_%'
       OR p.proname LIKE 'dblink%' OR p.proname LIKE 'crosstab%' OR p.proname IN ({names}))
  AND (p.pronamespace = 'pg_catalog'::regnamespace OR p.proname LIKE 'dblink%' OR p.proname LIKE 'crosstab%'
       OR p.proname = 'connectby')
  AND has_function_privilege(:r, p.oid, 'EXECUTE')
ORDER BY 1
""".format(names=", ".join(f"'{n}'" for n in _UNSAFE_NAMES))  # prefixes and names: index scans of pg_proc


def ensure_reader_role(engine: Engine) -> None:
    """The reader role as kb.reader_role describes it, on every use: created if missing (when allowed), able to
    SELECT everything in our schema and to write nothing anywhere, its defaults put back. Changes nothing
    (and takes no lock) when all is in place."""
    with engine.connect() as conn:
        state = _state(conn)
        if state["ok"]:
            return
        me = state["me"]
        if not state["exists"] and not (me.rolsuper or me.rolcreaterole):
            raise ReaderUnavailable(
                f"`reasonflux sql` runs queries as the read-only role {READER_ROLE}, which does not exist, and "
                f"{me.current_user} may not create roles; ask an administrator to run: "
                f"{admin_sql(me.current_database, me.current_schema)} (docs/sql.md, 'The read-only role')"
            )
        conn.rollback()
        # One process at a time changes the role (catalog updates of the same rows conflict).
        advisory_lock(conn, _LOCK_KEY, f"the role {READER_ROLE}", xact=True)
        raw = conn.connection.driver_connection
        if not state["exists"]:
            _create(raw)
        elif me.rolsuper and _widened(conn):  # keep an existing role within bounds (someone widened it)
            raw.execute(
                pgsql.SQL("ALTER ROLE {} " + _ATTRIBUTES.replace("LOGIN ", "")).format(
                    pgsql.Identifier(READER_ROLE)
                )
            )
        _grant_reads(conn, me.current_database, me.current_schema)
        _lock_down(conn, me)
        _reassert_settings(conn)
        _drop_password_line(conn)
        conn.commit()


def _state(conn: sa.Connection) -> dict:
    me = conn.execute(
        sa.text(
            "SELECT current_user, current_database(), current_schema(), rolsuper, rolcreaterole "
            "FROM pg_roles WHERE rolname = current_user"
        )
    ).one()
    exists = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": READER_ROLE}).first()
    if not exists:
        return {"ok": False, "exists": False, "me": me}
    ok = (
        (not _widened(conn) or not me.rolsuper)
        and not _reads_missing(conn)
        and not _writable(conn)
        and _settings(conn) == (sorted(f"{k}={v}" for k, v in SETTINGS.items()), False)
    )
    conn.rollback()
    return {"ok": ok and _password_line(conn) is None, "exists": True, "me": me}


def _create(raw: psycopg.Connection) -> None:
    password = os.environ.get(PASSWORD_ENV)
    create = pgsql.SQL("CREATE ROLE {} " + _ATTRIBUTES).format(pgsql.Identifier(READER_ROLE))
    if password:
        create += pgsql.SQL(" PASSWORD {}").format(pgsql.Literal(password))
    try:
        with raw.transaction():  # a savepoint: another database of the cluster may create it first
            raw.execute(create)
    except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
        pass


def _writable(conn: sa.Connection) -> list[str]:
    """What the reader could write or run besides SELECT: unsafe functions, TEMP, CREATE on a schema."""
    found = list(conn.execute(sa.text(_UNSAFE_FUNCTIONS), {"r": READER_ROLE}).scalars())
    if conn.execute(
        sa.text("SELECT has_database_privilege(:r, current_database(), 'TEMP')"), {"r": READER_ROLE}
    ).scalar():
        found.append("TEMP ON DATABASE")
    found += [
        f"CREATE ON SCHEMA {s}"
        for s in conn.execute(
            sa.text(
                "SELECT nspname FROM pg_namespace WHERE has_schema_privilege(:r, oid, 'CREATE') ORDER BY 1"
            ),
            {"r": READER_ROLE},
        ).scalars()
    ]
    return found


def _lock_down(conn: sa.Connection, me) -> None:
    """REVOKE from PUBLIC (and the reader) what _writable finds; the owner keeps it when it is no superuser.
    Fails closed, with the SQL an administrator runs, where we may not."""
    found = _writable(conn)
    if not found:
        return
    role, owner = pgsql.Identifier(READER_ROLE), pgsql.Identifier(me.current_user)
    statements = []
    for item in found:
        if item == "TEMP ON DATABASE":
            target = pgsql.SQL("TEMP ON DATABASE {}").format(pgsql.Identifier(me.current_database))
        elif item.startswith("CREATE ON SCHEMA "):
            target = pgsql.SQL("CREATE ON SCHEMA {}").format(
                pgsql.Identifier(item.removeprefix("CREATE ON SCHEMA "))
            )
        else:
            target = pgsql.SQL("EXECUTE ON FUNCTION " + item)  # regprocedure text: quoted where needed
        statements.append(pgsql.SQL("REVOKE {} FROM PUBLIC, {}").format(target, role))
        if not me.rolsuper:
            statements.append(pgsql.SQL("GRANT {} TO {}").format(target, owner))
    raw = conn.connection.driver_connection
    try:
        with raw.transaction():  # a savepoint
            for statement in statements:
                raw.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        sql_text = "; ".join(s.as_string(raw) for s in statements)
        raise ReaderUnavailable(
            f"the read-only role {READER_ROLE} could still write or run {', '.join(found)}, and "
            f"{me.current_user} may not revoke that; nothing was run. Ask an administrator to run: {sql_text} "
            "(docs/sql.md, 'The read-only role')"
        ) from None
    left = _writable(conn)
    if left:  # granted to a role the reader belongs to, or by another grantor: not ours to undo
        raise ReaderUnavailable(
            f"the read-only role {READER_ROLE} can still write or run {', '.join(left)} "
            "(granted by another role); nothing was run"
        )


def _settings(conn: sa.Connection) -> tuple[list[str], bool]:
    """(the role's own defaults, sorted; whether it has per-database ones too)."""
    row = conn.execute(
        sa.text(
            "SELECT coalesce((SELECT array_agg(x ORDER BY x) FROM pg_db_role_setting s, unnest(s.setconfig) x "
            "                 WHERE s.setrole = r.oid AND s.setdatabase = 0), '{}'), "
            "       EXISTS (SELECT 1 FROM pg_db_role_setting s WHERE s.setrole = r.oid AND s.setdatabase <> 0) "
            "FROM pg_roles r WHERE r.rolname = :r"
        ),
        {"r": READER_ROLE},
    ).one()
    return sorted(row[0]), bool(row[1])


def _reassert_settings(conn: sa.Connection) -> None:
    """RESET ALL (for every database too) and SET ours, when they differ. Where we may not (no superuser,
    no ADMIN on the role), each session of ours sets what it needs itself."""
    if _settings(conn) == (sorted(f"{k}={v}" for k, v in SETTINGS.items()), False):
        return
    raw, role = conn.connection.driver_connection, pgsql.Identifier(READER_ROLE)
    databases = (
        conn.execute(
            sa.text(
                "SELECT d.datname FROM pg_db_role_setting s JOIN pg_database d ON d.oid = s.setdatabase "
                "JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = :r"
            ),
            {"r": READER_ROLE},
        )
        .scalars()
        .all()
    )
    try:
        with raw.transaction():  # a savepoint
            raw.execute(pgsql.SQL("ALTER ROLE {} RESET ALL").format(role))
            for name in databases:
                raw.execute(
                    pgsql.SQL("ALTER ROLE {} IN DATABASE {} RESET ALL").format(role, pgsql.Identifier(name))
                )
            for key, value in SETTINGS.items():
                raw.execute(
                    pgsql.SQL("ALTER ROLE {} SET {} = {}").format(
                        role, pgsql.Identifier(key), pgsql.Literal(value)
                    )
                )
    except psycopg.errors.InsufficientPrivilege:
        pass


def _widened(conn: sa.Connection) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT rolsuper OR rolcreatedb OR rolcreaterole OR rolreplication OR rolbypassrls OR rolinherit "
                "FROM pg_roles WHERE rolname = :r"
            ),
            {"r": READER_ROLE},
        ).scalar()
    )


def _reads_missing(conn: sa.Connection) -> bool:
    return bool(
        conn.execute(
            sa.text(
                "SELECT NOT has_database_privilege(:r, current_database(), 'CONNECT') "
                "OR NOT has_schema_privilege(:r, current_schema(), 'USAGE') "
                "OR EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "           WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
                "           AND NOT has_table_privilege(:r, c.oid, 'SELECT'))"
            ),
            {"r": READER_ROLE},
        ).scalar()
    )


def _grant_reads(conn: sa.Connection, database: str, schema: str) -> None:
    """GRANT only what is missing: a no-op grant still rewrites catalog rows."""
    if not _reads_missing(conn):
        return
    raw, role = conn.connection.driver_connection, pgsql.Identifier(READER_ROLE)
    try:
        with raw.transaction():  # a savepoint
            raw.execute(
                pgsql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(pgsql.Identifier(database), role)
            )
            raw.execute(pgsql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(pgsql.Identifier(schema), role))
            raw.execute(
                pgsql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                    pgsql.Identifier(schema), role
                )
            )
    except psycopg.errors.InsufficientPrivilege:
        # Not the owner of everything: the reader keeps what an administrator granted, and a query on
        # anything else fails with the server's "permission denied", which is the point.
        pass


def _password_line(conn: sa.Connection) -> Path | None:
    """The embedded server's pg_hba.conf when it still holds LEGACY_HBA_LINE (see there)."""
    host = conn.engine.url.query.get("host")
    if (
        not (isinstance(host, str) and host.startswith("/"))
        or not conn.execute(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar()
    ):
        return None
    path = Path(conn.execute(sa.text("SHOW hba_file")).scalar())
    try:
        return path if LEGACY_HBA_LINE in path.read_text().splitlines() else None
    except OSError:
        return None


def _drop_password_line(conn: sa.Connection) -> None:
    path = _password_line(conn)
    if path is None:
        return
    path.write_text("".join(f"{line}\n" for line in path.read_text().splitlines() if line != LEGACY_HBA_LINE))
    (path.parent / PASSWORD_FILE).unlink(missing_ok=True)
    conn.execute(sa.text("SELECT pg_reload_conf()"))


def reader_password(url: str) -> str | None:
    """The reader's password on an external server (REASONFLUX_READER_PASSWORD); the embedded server's
    socket needs none."""
    return os.environ.get(PASSWORD_ENV) or None


def reassert_password(engine: Engine) -> bool:
    """Set the reader's password to REASONFLUX_READER_PASSWORD again, where we may (superuser, or
    CREATEROLE with ADMIN on it): the role may have changed its own, which must not lock the owner's
    `reasonflux sql` out. True when it was set."""
    password = os.environ.get(PASSWORD_ENV)
    if not password:
        return False
    with engine.connect() as conn:
        if not conn.execute(
            sa.text("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
        ).scalar():
            return False
        raw = conn.connection.driver_connection  # not through the engine's parameter scrubbing
        try:
            raw.execute(
                pgsql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    pgsql.Identifier(READER_ROLE), pgsql.Literal(password)
                )
            )
        except psycopg.errors.InsufficientPrivilege:
            return False
        conn.commit()
    return True


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
            f"or allow it in pg_hba.conf (docs/sql.md, 'The read-only role')"
        ) from None
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
        "FROM pg_roles r WHERE r.rolname = session_user"
    ).fetchone()
    conn.rollback()
    if row is None or row[0] != READER_ROLE or row[1] != READER_ROLE:
        raise ReaderUnavailable(f"the query session is not the read-only role {READER_ROLE}; nothing was run")
    powers = [
        name
        for name, on in zip(("SUPERUSER", "CREATEROLE", "CREATEDB", "REPLICATION", "BYPASSRLS"), row[2:7])
        if on
    ]
    if powers or row[7]:
        extra = ", ".join([*powers, *(f"member of {g}" for g in row[7])])
        raise ReaderUnavailable(
            f"the role {READER_ROLE} can do more than read ({extra}); nothing was run. Remove that "
            f"(ALTER ROLE / REVOKE) so `reasonflux sql` cannot write"
        )
