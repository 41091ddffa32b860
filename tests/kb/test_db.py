"""The database layer: migrations both ways on a populated database, no drift, db commands."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import kb.models
from kb import migrate
from kb.db import SchemaOutOfDate, connect, create_engine, mask_url


def _populate(engine) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_run (stage, params, code_version, status, counts) "
                "VALUES ('import', '{}', 'test', 'succeeded', '{}')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO template (key, category, status, current_version_no) "
                "VALUES ('Algebra/Quadratics', 'Algebra', 'active', 1)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO template_version (template_id, version_no, name, tags, description, "
                "application_scope, steps, extra, content_hash, source_kind, provenance) "
                "VALUES (1, 1, 'Quadratics', ARRAY['algebra'], 'd', 's', '[]', '{}', 'h', 'user', '{}')"
            )
        )
        conn.execute(sa.text("UPDATE template SET current_version_id = 1"))


def test_upgrade_downgrade_upgrade_on_populated_database(fresh_database_url):
    engine = create_engine(fresh_database_url)
    migrate.upgrade(engine)
    _populate(engine)
    assert migrate.current_revision(engine) == migrate.head_revision()
    migrate.downgrade(engine, "base")
    assert migrate.current_revision(engine) is None
    migrate.upgrade(engine)
    _populate(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM current_template")).scalar() == 1
    # Step down and up one revision at a time, data in place.
    for rev in reversed([r for r, _, _ in migrate.history()][:-1] or []):
        migrate.downgrade(engine, rev)
    migrate.upgrade(engine)
    engine.dispose()


def test_models_and_migrations_do_not_drift(database_url):
    engine = create_engine(database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_object": migrate.include_object}
        )
        diff = compare_metadata(ctx, kb.models.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; write a migration: {diff}"


def test_template_versions_are_immutable(db):
    _populate(db.engine)
    try:
        with db.engine.begin() as conn:
            conn.execute(sa.text("UPDATE template_version SET name = 'changed'"))
    except sa.exc.DBAPIError as e:
        assert "immutable" in str(e)
    else:
        raise AssertionError("UPDATE of a template version was allowed")


def test_external_database_behind_gets_a_clear_message(fresh_database_url):
    with pytest.raises(SchemaOutOfDate, match="reasonflux db upgrade"):
        connect(fresh_database_url)


def test_db_commands(cli, db):
    out = json.loads(cli("db", "info", "--json").output)
    assert out["pgvector_version"]
    assert out["revision"] == out["head"]
    assert "template" in out["row_counts"]
    assert (
        "***" in out["url"] or "@" not in out["url"].split("//", 1)[1].split("/")[0] or ":" not in out["url"]
    )
    assert json.loads(cli("db", "current", "--json").output)["current"] == migrate.head_revision()


def test_mask_url_hides_password():
    assert "s3cret" not in mask_url("postgresql://u:s3cret@h:5432/d")


def test_deleting_a_run_keeps_immutable_history_and_detaches_the_rest(db):
    _populate(db.engine)
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE template SET current_version_id = NULL"))
        conn.execute(sa.text("DELETE FROM template_version"))
        conn.execute(
            sa.text(
                "INSERT INTO template_version (template_id, version_no, name, tags, description, application_scope, "
                "steps, extra, content_hash, source_kind, provenance, run_id) "
                "VALUES (1, 1, 'Quadratics', ARRAY['algebra'], 'd', 's', '[]', '{}', 'h', 'run', '{}', 1)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO pipeline_run (stage, params, code_version, status, counts) "
                "VALUES ('import-problems', '{}', 'test', 'succeeded', '{}')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO problem (text, split, content_hash, extra, run_id) "
                "VALUES ('1+1?', 'train', 'p1', '{}', 2)"
            )
        )
    try:
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM pipeline_run WHERE id = 1"))
    except sa.exc.IntegrityError as e:
        assert "foreign key" in str(e) and "template_version" in str(e)
    else:
        raise AssertionError("a run that wrote immutable template versions was deleted")
    with db.engine.begin() as conn:  # a run that wrote only mutable rows can go; its rows stay, detached
        conn.execute(sa.text("DELETE FROM pipeline_run WHERE id = 2"))
        assert conn.execute(sa.text("SELECT run_id FROM problem")).scalar() is None


def _invoke(url: str, *args: str):
    from click.testing import CliRunner

    from kb.cli import cli as root

    return CliRunner().invoke(root, ["--database-url", url, *args], catch_exceptions=True)


def test_destructive_downgrade_names_tables_and_counts_and_needs_yes(fresh_database_url):
    engine = create_engine(fresh_database_url)
    migrate.upgrade(engine)
    head = migrate.head_revision()
    _populate(engine)
    assert migrate.downgrade_losses(engine, "base") == [
        {"table": "pipeline_run", "rows": 1, "columns": None},
        {"table": "template", "rows": 1, "columns": None},
        {"table": "template_version", "rows": 1, "columns": None},
    ]
    refused = _invoke(fresh_database_url, "db", "downgrade", "base")
    assert refused.exit_code == 2 and refused.exception is not None and "Traceback" not in refused.output
    assert "pipeline_run (1 rows)" in refused.output and "template_version (1 rows)" in refused.output
    assert "--yes" in refused.output
    # The dry run changed nothing: still at head, rows in place.
    assert migrate.current_revision(engine) == head
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar() == 1

    # Stepping down one revision never drops a table holding rows; at most named columns.
    assert all(loss["columns"] for loss in migrate.downgrade_losses(engine, "-1"))
    done = _invoke(fresh_database_url, "db", "downgrade", "base", "--yes")
    assert done.exit_code == 0 and "at revision base" in done.output
    assert migrate.current_revision(engine) is None
    engine.dispose()


def test_empty_tables_downgrade_without_confirmation(fresh_database_url):
    engine = create_engine(fresh_database_url)
    migrate.upgrade(engine)
    assert migrate.downgrade_losses(engine, "base") == []
    assert _invoke(fresh_database_url, "db", "downgrade", "base").exit_code == 0
    assert migrate.current_revision(engine) is None
    engine.dispose()
