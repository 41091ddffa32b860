"""immutable rows keep their run and similar-set references (no ON DELETE SET NULL)

The immutability trigger refuses every UPDATE of template_version, trajectory, rollout
and dataset_version, so ON DELETE SET NULL on their references could never succeed:
deleting a pipeline run (or a similar set) that wrote history failed with a confusing
"rows are immutable" error. NO ACTION makes the refusal a plain foreign-key error.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 10:10:59.197824
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# (table, column, referenced table)
REFERENCES = (
    ("template_version", "run_id", "pipeline_run"),
    ("trajectory", "run_id", "pipeline_run"),
    ("trajectory", "similar_set_id", "similar_set"),
    ("rollout", "run_id", "pipeline_run"),
    ("dataset_version", "run_id", "pipeline_run"),
)


def _recreate(ondelete: str | None) -> None:
    for table, column, target in REFERENCES:
        name = f"{table}_{column}_fkey"  # PostgreSQL's default name, which 0001 got
        op.drop_constraint(name, table, type_="foreignkey")
        op.create_foreign_key(name, table, target, [column], ["id"], ondelete=ondelete)


def upgrade() -> None:
    _recreate(None)


def downgrade() -> None:
    _recreate("SET NULL")
