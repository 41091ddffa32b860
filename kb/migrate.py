"""Alembic, driven from code: the only way the schema changes."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

import migrations

_LOCK_KEY = 0x52464B42  # pg_advisory_lock key: one migrator at a time per database


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Per-embedding-model HNSW indexes (ix_hnsw_*) are made at run time; they are not drift."""
    return not (type_ == "index" and name and name.startswith("ix_hnsw_"))


def alembic_config(engine: Engine | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(migrations.__file__).parent))
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _run(engine: Engine, fn, *args) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_KEY})
        conn.commit()
        try:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            fn(cfg, *args)
            conn.commit()
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str = "-1") -> None:
    _run(engine, command.downgrade, revision)


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down_revision, message) from base to head."""
    script = ScriptDirectory.from_config(alembic_config())
    revs = list(script.walk_revisions())
    return [(r.revision, r.down_revision, r.doc) for r in reversed(revs)]
