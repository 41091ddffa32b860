"""Migration 0010 (dataset_location) both ways on a populated database: the first folder of every
version is carried over, a downgrade drops only the table (naming what it loses), an upgrade brings the
first folders back."""

from __future__ import annotations

import sqlalchemy as sa

from kb import migrate
from kb.db import create_engine


def _locations(engine) -> list[tuple]:
    with engine.connect() as conn:
        return [
            tuple(r)
            for r in conn.execute(
                sa.text("SELECT version_id, path, run_id FROM dataset_location ORDER BY version_id, path")
            )
        ]


def test_0010_carries_every_first_folder_over_and_back(fresh_database_url):
    engine = create_engine(fresh_database_url)
    migrate.upgrade(engine, "0009")
    with engine.begin() as conn:
        run = conn.execute(
            sa.text(
                "INSERT INTO pipeline_run (stage, params, code_version, status, counts) "
                "VALUES ('export', '{}', 'test', 'succeeded', '{}') RETURNING id"
            )
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO dataset_version (id, kind, params, schema_revision, row_counts, files, path, run_id) "
                "VALUES ('dpo-a', 'dpo', '{}', '0009', '{\"train\": 1}', '{}', '/x/a', :run), "
                "('problems-b', 'problems', '{}', '0009', '{\"problems\": 2}', '{}', NULL, NULL)"
            ),
            {"run": run},
        )
    migrate.upgrade(engine)
    assert migrate.current_revision(engine) == "0010"
    assert _locations(engine) == [("dpo-a", "/x/a", run)]  # a version with no folder has no location
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO dataset_location (version_id, path) VALUES ('dpo-a', '/x/b')"))
    assert migrate.downgrade_losses(engine, "0009") == [
        {"table": "dataset_location", "rows": 2, "columns": None}
    ]
    migrate.downgrade(engine, "0009")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dataset_version")).scalar() == 2
        assert not sa.inspect(conn).has_table("dataset_location")
    migrate.upgrade(engine)
    assert _locations(engine) == [("dpo-a", "/x/a", run)]
    engine.dispose()
