"""Landed migrations are history: today's chain keeps every landed revision's id and content, new ones only
append, and a database made by any earlier landed head upgrades with today's code losing nothing.

The earlier heads are built from the landed files themselves: those no longer in migrations/versions are
kept verbatim in tests/fixtures/legacy_migrations/<first head with them>/ (no git history needed), and each
chain of migrations/landed.py picks its files by content hash.
"""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from click.testing import CliRunner
from sqlmodel import SQLModel

import kb.models  # noqa: F401  (registers every table)
from kb import migrate
from kb.db import create_engine
from kb.errors import SchemaMismatch
from migrations import landed

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "migrations" / "versions"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_migrations"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ids(path: Path) -> tuple[str, str | None]:
    """(revision, down_revision) as the file assigns them."""
    values = {}
    for node in ast.parse(path.read_text()).body:
        target = (
            node.target
            if isinstance(node, ast.AnnAssign)
            else (node.targets[0] if isinstance(node, ast.Assign) else None)
        )
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            values[target.id] = ast.literal_eval(node.value)
    return values["revision"], values["down_revision"]


def chain_problems(versions: Path) -> list[str]:
    """Why VERSIONS breaks the rule (landed revisions keep id and content; new ones append), or []."""
    files = sorted(versions.glob("*.py"))
    ids = {path: _ids(path) for path in files}
    problems, by_id = [], {}
    for path, (rev, _) in ids.items():
        if rev in by_id:
            problems.append(f"revision {rev} is in both {by_id[rev].name} and {path.name}")
        by_id[rev] = path
    children: dict[str | None, list[str]] = {}
    for rev, down in ids.values():
        children.setdefault(down, []).append(rev)
    chain, at = [], None
    while children.get(at):
        if len(children[at]) > 1:
            problems.append(f"the chain branches after {at or 'base'}: {sorted(children[at])}")
        at = min(children[at])
        chain.append(at)
    if len(chain) != len(by_id):
        problems.append(f"not one linear chain from base: {sorted(set(by_id) - set(chain))} are off it")
    current = landed.CHAINS[landed.CURRENT]
    for i, entry in enumerate(current):
        if i >= len(chain) or chain[i] != entry.revision:
            problems.append(f"landed revision {entry.revision} is not at position {i + 1} of the chain")
        elif _sha256(by_id[entry.revision]) != entry.sha256:
            problems.append(f"landed revision {entry.revision} ({by_id[entry.revision].name}) was edited")
    ever = {x.revision for c in landed.CHAINS.values() for x in c}
    for rev in chain[len(current) :]:
        if rev in landed.RETIRED:
            problems.append(f"revision {rev} is retired (it landed once with another meaning)")
        elif rev in ever or rev <= max(ever):
            problems.append(f"new revision {rev} does not come after every landed id ({max(ever)})")
    return problems


def test_todays_chain_keeps_every_landed_revision():
    assert chain_problems(VERSIONS) == []


def _copy_versions(tmp_path: Path) -> Path:
    out = tmp_path / "versions"
    shutil.copytree(VERSIONS, out, ignore=shutil.ignore_patterns("__pycache__"))
    return out


def _migration(rev: str, down: str) -> str:
    return f"revision = {rev!r}\ndown_revision = {down!r}\n\ndef upgrade():\n    pass\n"


def test_the_rule_check_refuses_edits_renumbering_and_retired_ids(tmp_path):
    versions = _copy_versions(tmp_path)
    head = landed.CHAINS[landed.CURRENT][-1].revision  # whatever today's head is
    new = f"{int(head) + 1:04d}"
    (versions / f"{new}_next_change.py").write_text(_migration(new, head))
    assert chain_problems(versions) == []  # appending is the one way to add

    (versions / "0008_reuse.py").write_text(_migration("0008", new))
    assert any("0008 is retired" in p for p in chain_problems(versions))
    (versions / "0008_reuse.py").unlink()

    (versions / f"{int(new) + 1:04d}_branch.py").write_text(_migration(f"{int(new) + 1:04d}", "0007"))
    assert any("branches after 0007" in p for p in chain_problems(versions))
    (versions / f"{int(new) + 1:04d}_branch.py").unlink()

    phrase = next(versions.glob("0005_*.py"))
    phrase.write_text(phrase.read_text() + "\n# tweaked\n")
    assert chain_problems(versions) == [
        "landed revision 0005 (0005_record_the_template_a_plan_step_names.py) was edited"
    ]


def _landed_file(sha256: str) -> Path:
    found = [p for p in [*VERSIONS.glob("*.py"), *FIXTURES.glob("*/*.py")] if _sha256(p) == sha256]
    assert found, f"no landed file with sha256 {sha256} in migrations/versions or {FIXTURES}"
    return found[0]


def test_every_landed_chain_is_kept_and_maps_onto_todays():
    today = [rev for rev, _, _ in migrate.history()]
    assert landed.RETIRED == {"0008"}
    for name, chain in landed.CHAINS.items():
        for entry in chain:
            assert _ids(_landed_file(entry.sha256))[0] == entry.revision, (name, entry)
        positions = [today.index(x.today) for x in chain]
        # today's changes in today's order, some maybe missing (head A had the phrase, not authorship)
        assert positions == sorted(set(positions)), f"chain {name} does not map onto today's in order"
        missing = set(today[: positions[-1] + 1]) - {x.today for x in chain}
        assert missing <= landed.PROBES.keys(), f"chain {name} lacks {missing}, which nothing probes"
        for entry in chain:  # an id that ever meant another change must be told apart by the schema
            meanings = {x.today for c in landed.CHAINS.values() for x in c if x.revision == entry.revision}
            if len(meanings) > 1 or entry.revision != entry.today:
                assert entry.today in landed.PROBES, (name, entry)
    for objects in landed.PROBES.values():  # probes name what head's models really have
        for table, column in objects:
            assert table in SQLModel.metadata.tables and (
                column is None or column in SQLModel.metadata.tables[table].c
            ), (table, column)


# -- databases made by earlier heads ----------------------------------------------------------------------


def _build(url: str, tmp_path: Path, chain: str, revision: str = "heads") -> sa.Engine:
    """A database made by CHAIN's own migration files (today's env.py runs them)."""
    versions = tmp_path / chain
    versions.mkdir()
    for entry in landed.CHAINS[chain]:
        shutil.copy(_landed_file(entry.sha256), versions / f"{entry.revision}_{entry.sha256[:8]}.py")
    engine = create_engine(url)
    cfg = migrate.alembic_config(engine)
    cfg.set_main_option("version_locations", str(versions))
    with engine.connect() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()
    return engine


def _columns(conn, table: str) -> set[str]:
    return set(
        conn.execute(
            sa.text(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = :t"
            ),
            {"t": table},
        ).scalars()
    )


def _insert(conn, table: str, **values) -> None:
    """Insert VALUES, keeping only the columns this schema has (JSON for dicts)."""
    have = _columns(conn, table)
    values = {
        k: json.dumps(v) if isinstance(v, dict | list) and k != "tags" else v
        for k, v in values.items()
        if k in have
    }
    conn.execute(
        sa.text(f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join(':' + k for k in values)})"),
        values,
    )


def _populate(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        _insert(
            conn,
            "pipeline_run",
            id=1,
            stage="import",
            params={},
            code_version="x",
            status="succeeded",
            counts={"n": 1},
            heartbeat_at="2026-11-29T12:00:00+00",
        )
        _insert(conn, "template", id=1, key="t1", category="algebra", status="active", current_version_no=1)
        _insert(
            conn,
            "template_version",
            id=1,
            template_id=1,
            version_no=1,
            name="Vieta",
            tags=["roots"],
            description="d",
            application_scope="s",
            steps=["a", "b"],
            extra={},
            content_hash="h1",
            source_kind="import",
            provenance={},
            run_id=1,
            author="alice",
        )
        conn.execute(sa.text("UPDATE template SET current_version_id = 1"))
        _insert(conn, "problem", id=1, text="1+1?", split="train", content_hash="p1", extra={}, answer="2")
        _insert(
            conn,
            "trajectory",
            id=1,
            problem_id=1,
            navigator_model="nav",
            sample_key="k",
            sampling={},
            raw_output="plan",
            run_id=1,
        )
        _insert(
            conn,
            "trajectory_step",
            trajectory_id=1,
            position=0,
            text="use Vieta",
            template_version_id=1,
            template_phrase="Vieta's formulas",
        )
        _insert(conn, "trajectory_step", trajectory_id=1, position=1, text="guess", template_phrase="unknown")
        _insert(
            conn,
            "rollout",
            trajectory_id=1,
            problem_id=1,
            sample_index=0,
            model="m",
            output="2",
            correct=True,
            grader="exact",
            prompt_tokens=3,
            completion_tokens=1,
            latency_ms=1.0,
        )
        _insert(
            conn,
            "training_run",
            id=1,
            stage="sft",
            base_model="b",
            config={},
            code_version="x",
            status="succeeded",
            metrics={},
            heartbeat_at="2026-11-29T12:30:00+00",
            host="h",
            pid=7,
        )
        _insert(
            conn,
            "solve_session",
            id=1,
            problem_text="1+1?",
            config={},
            status="done",
            rounds=1,
            tokens={},
            latency_ms=2.0,
        )
        _insert(
            conn,
            "solve_round",
            session_id=1,
            round_no=1,
            kind="step",
            navigator_prompt={},
            retrieved=[],
            adjustment={"template": {"version_id": 1, "score": 0.9}, "step_no": 1, "outcome": "accepted"},
            tokens={},
            latency_ms=1.0,
        )
        if _columns(conn, "solve_step_template"):
            _insert(
                conn,
                "solve_step_template",
                session_id=1,
                round_no=1,
                version_id=1,
                step_no=1,
                score=0.9,
                outcome="accepted",
                accepted=True,
            )


def _rows(engine: sa.Engine) -> dict[str, list[dict]]:
    """Every table's rows (as JSON objects, sorted), alembic_version aside."""
    with engine.connect() as conn:
        tables = (
            conn.execute(
                sa.text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                    "AND tablename <> 'alembic_version'"
                )
            )
            .scalars()
            .all()
        )
        return {
            t: sorted(conn.execute(sa.text(f'SELECT to_jsonb(x) FROM "{t}" x')).scalars(), key=json.dumps)
            for t in tables
        }


SCHEMA_QUERIES = {
    "columns": "SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, "
    "pg_get_expr(d.adbin, d.adrelid), a.attgenerated FROM pg_attribute a "
    "JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
    "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
    "WHERE n.nspname = current_schema() AND a.attnum > 0 AND NOT a.attisdropped "
    "AND c.relkind IN ('r', 'v', 'm')",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()",
    "constraints": "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
    "WHERE connamespace = current_schema()::regnamespace",
    "triggers": "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid) FROM pg_trigger "
    "WHERE NOT tgisinternal",
    "functions": "SELECT proname, pg_get_functiondef(oid) FROM pg_proc "
    "WHERE pronamespace = current_schema()::regnamespace AND prokind = 'f'",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = current_schema() "
    "UNION ALL SELECT matviewname, definition FROM pg_matviews WHERE schemaname = current_schema()",
}


def _schema(engine: sa.Engine, *, skip_views: frozenset[str] = frozenset()) -> dict[str, set]:
    with engine.connect() as conn:
        out = {k: {tuple(r) for r in conn.execute(sa.text(q))} for k, q in SCHEMA_QUERIES.items()}
        out["views"] = {r for r in out["views"] if r[0] not in skip_views}
        out["revision"] = {migrate.current_revision(conn)}
        return out


@pytest.fixture(scope="module")
def head_schema(pg_server) -> dict[str, set]:
    engine = create_engine(pg_server.create_database("rf_head"))
    migrate.upgrade(engine)
    try:
        return _schema(engine)
    finally:
        engine.dispose()


# (chain whose files make the database, alembic target, stamp it ends at, view definitions that differ)
EARLIER_HEADS = {
    "0002 at 1aa7580": (
        "1aa7580",
        "heads",
        "0002",
        frozenset({"trajectory_reward", "trajectory_reward_live"}),
    ),
    "0003 at 008465e": (landed.CURRENT, "0003", "0003", frozenset()),
    "head A at 106eb62": ("106eb62", "heads", "0008", frozenset()),
    "head B at fd4158a": ("fd4158a", "heads", "0008", frozenset()),
    "head B, one step down": ("fd4158a", "0006", "0006", frozenset()),
    "head C at b6d039d": ("b6d039d", "heads", "0005", frozenset()),
    "today's 0005": (landed.CURRENT, "0005", "0005", frozenset()),
}


@pytest.mark.parametrize("case", list(EARLIER_HEADS))
def test_a_database_from_an_earlier_head_upgrades_losing_nothing(case, pg_server, tmp_path, head_schema):
    """0002's view at 1aa7580 had the same columns and types, with counts cast later: its definition
    stays as it was made, and only that is allowed to differ from a fresh head."""
    chain, target, stamp, old_views = EARLIER_HEADS[case]
    engine = _build(pg_server.create_database("rf_legacy"), tmp_path, chain, target)
    try:
        assert migrate.current_revision(engine) == stamp
        _populate(engine)
        before = _rows(engine)
        migrate.upgrade(engine)
        after = _rows(engine)
        for table, rows in before.items():  # the same rows, every old column's value unchanged
            kept = sorted(({k: r[k] for k in rows[0]} for r in after[table]), key=json.dumps) if rows else []
            assert kept == rows and len(after[table]) == len(rows), table
        assert _schema(engine, skip_views=old_views) == {
            **head_schema,
            "views": {v for v in head_schema["views"] if v[0] not in old_views},
        }
        assert migrate.schema_state(engine) == "at head"
    finally:
        engine.dispose()


def test_upgrade_maps_the_renumbered_revisions_exactly(pg_server, tmp_path):
    """Head A has the plan phrase but not authorship: only authorship is applied; head C has everything
    up to the heartbeats: nothing is re-applied (this was the DuplicateColumn: heartbeat_at failure)."""
    a = _build(pg_server.create_database("rf_legacy"), tmp_path, "106eb62")
    c = _build(pg_server.create_database("rf_legacy"), tmp_path, "b6d039d")
    try:
        assert migrate.upgrade(a) == [("stamp", "0003"), ("upgrade", "0004"), ("stamp", "0005")]
        assert migrate.upgrade(c) == [
            ("stamp", "0003"),
            ("stamp", "0004"),
            ("stamp", "0005"),
            ("stamp", "0006"),
        ]
        assert migrate.upgrade(c) == []  # at head now: nothing more to map
    finally:
        a.dispose()
        c.dispose()


def test_schemas_no_landed_version_made_are_refused_untouched(pg_server):
    engine = create_engine(pg_server.create_database("rf_odd"))
    try:
        migrate.upgrade(engine, "0005")
        with engine.begin() as conn:  # half of 0006: by hand, or by a failed tool
            conn.execute(sa.text("ALTER TABLE pipeline_run ADD COLUMN heartbeat_at timestamptz"))
        with pytest.raises(
            SchemaMismatch,
            match=r"only part of migration 0006's: it has pipeline_run\.heartbeat_at but not training_run",
        ):
            migrate.upgrade(engine)
        assert migrate.current_revision(engine) == "0005"
        assert "not recognised" in migrate.schema_state(engine)

        with engine.begin() as conn:  # all of 0006 under today's stamp 0004: no chain ever had that
            conn.execute(
                sa.text(
                    "ALTER TABLE training_run ADD COLUMN heartbeat_at timestamptz, "
                    "ADD COLUMN host varchar, ADD COLUMN pid integer"
                )
            )
            conn.execute(sa.text("ALTER TABLE trajectory_step DROP COLUMN template_phrase"))
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0004'"))
        with pytest.raises(
            SchemaMismatch, match=r"stamped 0004 and has the changes of revisions \{0004, 0006\}"
        ):
            migrate.upgrade(engine)

        with engine.begin() as conn:  # made by newer code
            conn.execute(sa.text("UPDATE alembic_version SET version_num = '0042'"))
        with pytest.raises(SchemaMismatch, match="revision 0042, which this code does not know"):
            migrate.upgrade(engine)
        assert migrate.current_revision(engine) == "0042"
        from kb.cli import cli as root

        url = engine.url.render_as_string(hide_password=False)
        for args in (["templates", "list"], ["db", "upgrade"]):  # one clear line, exit 4, never a traceback
            result = CliRunner().invoke(root, ["--database-url", url, *args])
            assert result.exit_code == 4 and "0042, which this code does not know" in result.output, (
                result.output
            )
    finally:
        engine.dispose()


def test_commands_on_a_database_from_head_c(pg_server, tmp_path):
    """What the issue saw: every command failed with a traceback. Now: a clear line and exit 4, and
    `db upgrade` maps and upgrades it; a downgrade is refused until then."""
    from kb.cli import cli as root

    url = pg_server.create_database("rf_legacy")
    _build(url, tmp_path, "b6d039d").dispose()
    runner = CliRunner()

    def run(*args):
        return runner.invoke(root, ["--database-url", url, *args], catch_exceptions=True)

    state = json.loads(run("db", "current", "--json").output)
    assert state["current"] == "0005" and "earlier landed version" in state["schema_state"]
    refused = run("templates", "list")
    assert refused.exit_code == 4 and "Traceback" not in refused.output, refused.output
    assert "0005 as an earlier version of reasonflux numbered it" in refused.output
    assert "run `reasonflux db upgrade`" in refused.output
    down = run("db", "downgrade", "--yes")
    assert down.exit_code == 4 and "run `reasonflux db upgrade` first" in down.output, down.output
    up = run("db", "upgrade")
    assert up.exit_code == 0, up.output
    assert "revision 0005 was numbered by an earlier version of reasonflux" in up.output
    assert f"at revision {migrate.head_revision()}" in up.output
    assert json.loads(run("db", "current", "--json").output)["schema_state"] == "at head"


def test_the_head_known_without_alembic_is_alembics_head():
    """kb.db compares a database's stamp with landed.HEAD (no alembic import on the common path)."""
    assert landed.HEAD == migrate.head_revision()
