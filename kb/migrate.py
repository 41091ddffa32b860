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
from kb.pglocks import advisory_lock, bounded_lock_waits

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
        advisory_lock(conn, _LOCK_KEY, "the schema (another migration runs)")
        conn.commit()
        try:
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            with bounded_lock_waits(conn, "the migration"):
                fn(cfg, *args)
                conn.commit()
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()


def upgrade(engine: Engine, revision: str = "head") -> None:
    _run(engine, command.upgrade, revision)


def downgrade(engine: Engine, revision: str = "-1") -> None:
    _run(engine, command.downgrade, revision)


_COLUMNS = sa.text(
    "SELECT c.relname, a.attname FROM pg_class c "
    "JOIN pg_namespace n ON n.oid = c.relnamespace "
    "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
    "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname <> 'alembic_version'"
)


def _columns(conn: sa.Connection) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for table, column in conn.execute(_COLUMNS):
        out.setdefault(table, set()).add(column)
    return out


def downgrade_losses(engine: Engine, revision: str = "-1") -> list[dict]:
    """What a downgrade to REVISION would delete: tables, or columns of kept tables, that hold rows.

    The downgrade itself is run and rolled back (PostgreSQL DDL is transactional), so the answer is
    exactly what the migrations drop, not a guess. Each entry: table, rows, and the columns lost
    (None: the whole table).
    """
    with engine.connect() as conn:
        advisory_lock(conn, _LOCK_KEY, "the schema (another migration runs)")
        conn.commit()
        try:
            before = _columns(conn)  # opens the transaction alembic then runs in (and we roll back)
            cfg = alembic_config(engine)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
            after = _columns(conn)
            conn.rollback()
            lost = {t: (None if t not in after else sorted(cols - after[t])) for t, cols in before.items()
                    if t not in after or cols - after[t]}
            losses = []
            for table, columns in sorted(lost.items()):
                rows = conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar()
                if rows:
                    losses.append({"table": table, "rows": rows, "columns": columns})
            conn.rollback()
            return losses
        finally:
            conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()


def describe_losses(losses: list[dict]) -> str:
    """'template (51 rows), trajectory.reward (12 rows)'."""
    return ", ".join(
        f"{x['table']} ({x['rows']} rows)" if x["columns"] is None
        else f"{x['table']}.{{{', '.join(x['columns'])}}} ({x['rows']} rows)" for x in losses
    )


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down_revision, message) from base to head."""
    script = ScriptDirectory.from_config(alembic_config())
    revs = list(script.walk_revisions())
    return [(r.revision, r.down_revision, r.doc) for r in reversed(revs)]
