"""Alembic, driven from code: the only way the schema changes."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Engine

import migrations
from kb.errors import KbError, SchemaMismatch
from kb.pglocks import advisory_lock, bounded_lock_waits
from migrations import landed

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


def current_revision(bind: Engine | sa.Connection) -> str | None:
    if isinstance(bind, sa.Connection):
        return MigrationContext.configure(bind).get_current_revision()
    with bind.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextlib.contextmanager
def _locked(engine: Engine) -> Iterator[sa.Connection]:
    """A connection holding the migration lock; whatever it leaves uncommitted is rolled back."""
    with engine.connect() as conn:
        advisory_lock(conn, _LOCK_KEY, "the schema (another migration runs)")
        conn.commit()
        try:
            with bounded_lock_waits(conn, "the migration"):
                yield conn
        finally:
            conn.rollback()
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_KEY})
            conn.commit()


def _config(engine: Engine, conn: sa.Connection) -> Config:
    cfg = alembic_config(engine)
    cfg.attributes["connection"] = conn
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> list[tuple[str, str]]:
    """Upgrade to REVISION; a database stamped by an earlier landed chain is first brought onto today's.

    Returns the steps of that repair ([] when there was none), as ("stamp" | "upgrade", revision). The
    repair, the upgrade and the new stamp are one transaction: all of it happens or nothing does.
    """
    with _locked(engine) as conn:
        steps = repair_plan(conn)
        cfg = _config(engine, conn)
        with _alembic_errors():
            for action, rev in steps:
                if action == "stamp":  # its change is already there: record it, run nothing
                    conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": rev})
                else:
                    command.upgrade(cfg, rev)
            command.upgrade(cfg, revision)
        conn.commit()
    return steps


def downgrade(engine: Engine, revision: str = "-1") -> None:
    with _locked(engine) as conn:
        _refuse_earlier_chain(conn)
        with _alembic_errors():
            command.downgrade(_config(engine, conn), revision)
        conn.commit()


@contextlib.contextmanager
def _alembic_errors() -> Iterator[None]:
    """Alembic's own refusals (an unknown revision, a target behind the database) as one clear line."""
    try:
        yield
    except CommandError as e:
        raise KbError(f"alembic: {e}") from None


# -- databases stamped by an earlier landed chain (migrations/landed.py) --------------------------------


def _probe(conn: sa.Connection) -> tuple[set[str], dict[str, tuple[list[str], list[str]]]]:
    """The probed revisions whose objects the schema has, and those it has only some of (found, missing)."""
    columns = _columns(conn)
    present, partial = set(), {}
    for rev, objects in landed.PROBES.items():
        names = {f"{t}.{c}" if c else t: t in columns and (c is None or c in columns[t]) for t, c in objects}
        found = [name for name, there in names.items() if there]
        if len(found) == len(names):
            present.add(rev)
        elif found:
            partial[rev] = (found, [name for name, there in names.items() if not there])
    return present, partial


def _meanings(stamp: str) -> dict[str, set[str]]:
    """Chain -> the probed revisions of today's chain that a database stamped STAMP by that chain has.

    Today's chain is read from migrations/versions (it may hold a new revision that has not landed yet)."""
    chains = {name: [(x.revision, x.today) for x in chain] for name, chain in landed.CHAINS.items()}
    chains[landed.CURRENT] = [(rev, rev) for rev, _, _ in history()]
    out = {}
    for name, chain in chains.items():
        ids = [rev for rev, _ in chain]
        if stamp in ids:
            out[name] = {today for _, today in chain[: ids.index(stamp) + 1]} & landed.PROBES.keys()
    return out


def _names(revs: set[str]) -> str:
    return "{" + ", ".join(sorted(revs)) + "}"


def repair_plan(conn: sa.Connection) -> list[tuple[str, str]]:
    """[] when the database's stamp means, in today's chain, what its schema has; else the steps that put
    a database stamped by an earlier landed chain onto today's: back to the revision before the first
    probed one (0003, where every chain agrees), then each of today's revisions up to the last one it
    has, stamped when its change is there and applied when not. Raises SchemaMismatch when the stamp or
    the schema matches no landed chain (nothing is changed then)."""
    stamp = MigrationContext.configure(conn).get_current_revision()
    if stamp is None:
        return []
    present, partial = _probe(conn)
    if partial:
        parts = "; ".join(
            f"migration {rev}'s: it has {', '.join(found)} but not {', '.join(missing)}"
            for rev, (found, missing) in sorted(partial.items())
        )
        raise SchemaMismatch(
            f"the database (revision {stamp}) has only part of {parts}; no version of reasonflux made that "
            "schema; nothing was changed"
        )
    meanings = _meanings(stamp)
    if meanings.get(landed.CURRENT) == present:
        return []
    earlier = [name for name, revs in meanings.items() if name != landed.CURRENT and revs == present]
    if not meanings:
        raise SchemaMismatch(
            f"the database is at revision {stamp}, which this code does not know and no landed version of "
            f"reasonflux made (newer code?); this code's head is {head_revision()}; nothing was changed"
        )
    if not earlier:
        raise SchemaMismatch(
            f"the database is stamped {stamp} and has the changes of revisions {_names(present)}; that is "
            f"neither what {stamp} means here ({_names(meanings.get(landed.CURRENT, set()))}) nor in any "
            f"landed chain ({'; '.join(f'{n}: {_names(r)}' for n, r in sorted(meanings.items()))}); "
            "nothing was changed"
        )
    today = [rev for rev, _, _ in history()]
    first = min(today.index(rev) for rev in landed.PROBES)
    last = max((today.index(rev) for rev in present), default=first - 1)
    return [("stamp", today[first - 1])] + [
        ("stamp" if rev in present else "upgrade", rev) for rev in today[first : last + 1]
    ]


def _refuse_earlier_chain(conn: sa.Connection) -> None:
    if repair_plan(conn):
        raise SchemaMismatch(
            f"the database is at revision {current_revision(conn)} as an earlier version of reasonflux "
            "numbered it: run `reasonflux db upgrade` first (it maps it onto this code's chain)"
        )


def earlier_chain(engine: Engine) -> bool:
    """Whether the database's stamp was numbered by an earlier landed chain (`upgrade` maps it); raises
    SchemaMismatch when no landed version made its schema."""
    with engine.connect() as conn:
        return bool(repair_plan(conn))


def schema_state(engine: Engine) -> str:
    """One line for `db current` / `db info`: at head, behind, stamped by an earlier chain, or unknown."""
    try:
        earlier = earlier_chain(engine)
    except SchemaMismatch as e:
        return f"not recognised: {e}"
    stamp = current_revision(engine)
    if earlier:
        return (
            f"revision {stamp} as numbered by an earlier landed version: `reasonflux db upgrade` maps it "
            "onto this code's chain and upgrades it, losing nothing"
        )
    if stamp is None:
        return "empty: `reasonflux db upgrade` creates the schema"
    if stamp == head_revision():
        return "at head"
    return "behind head: run `reasonflux db upgrade`"


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
    with _locked(engine) as conn:
        _refuse_earlier_chain(conn)
        conn.commit()
        before = _columns(conn)  # opens the transaction alembic then runs in (and we roll back)
        with _alembic_errors():
            command.downgrade(_config(engine, conn), revision)
        after = _columns(conn)
        conn.rollback()
        lost = {
            t: (None if t not in after else sorted(cols - after[t]))
            for t, cols in before.items()
            if t not in after or cols - after[t]
        }
        losses = []
        for table, columns in sorted(lost.items()):
            rows = conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar()
            if rows:
                losses.append({"table": table, "rows": rows, "columns": columns})
        return losses


def describe_losses(losses: list[dict]) -> str:
    """'template (51 rows), trajectory.reward (12 rows)'."""
    return ", ".join(
        f"{x['table']} ({x['rows']} rows)"
        if x["columns"] is None
        else f"{x['table']}.{{{', '.join(x['columns'])}}} ({x['rows']} rows)"
        for x in losses
    )


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down_revision, message) from base to head."""
    script = ScriptDirectory.from_config(alembic_config())
    revs = list(script.walk_revisions())
    return [(r.revision, r.down_revision, r.doc) for r in reversed(revs)]
