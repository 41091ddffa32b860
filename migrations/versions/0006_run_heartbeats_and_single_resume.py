"""run owners keep a heartbeat; a training run is resumed at most once

pipeline_run and training_run get `heartbeat_at` (the owner's lease, renewed while it runs), and
training_run gets `host` and `pid` like pipeline_run, so any command can tell a run whose owner is
gone, on any host, and mark it interrupted. A partial unique index on training_run.resumed_from
refuses a second resume of the same run (both would write into the run's one folder).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("pipeline_run", "training_run"):
        op.add_column(table, sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        # Rows from before: their last sign of life is their start (or end).
        op.execute(f"UPDATE {table} SET heartbeat_at = coalesce(finished_at, started_at)")
    op.add_column("training_run", sa.Column("host", sqlmodel.sql.sqltypes.AutoString(), nullable=True))
    op.add_column("training_run", sa.Column("pid", sa.Integer(), nullable=True))
    op.create_index("ux_training_run_resumed_from", "training_run", ["resumed_from"], unique=True,
                    postgresql_where=sa.text("resumed_from IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ux_training_run_resumed_from", table_name="training_run")
    op.drop_column("training_run", "pid")
    op.drop_column("training_run", "host")
    for table in ("pipeline_run", "training_run"):
        op.drop_column(table, "heartbeat_at")
