"""every folder a dataset version was written to (dataset_location)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 23:40:00.000000

dataset_version rows are immutable (an UPDATE is refused by a trigger), so the second folder an export
of the same version writes cannot go into dataset_version.path, which keeps the first. Each folder is a
row here. Upgrading records every version's first folder; downgrading drops the table (the first folders
stay in dataset_version.path; the later ones are what is lost, and `db downgrade` names them).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'dataset_location',
        sa.Column('version_id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['version_id'], ['dataset_version.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('version_id', 'path'),
    )
    op.create_index(op.f('ix_dataset_location_run_id'), 'dataset_location', ['run_id'], unique=False)
    op.execute("INSERT INTO dataset_location (version_id, path, run_id, created_at) "
               "SELECT id, path, run_id, created_at FROM dataset_version WHERE path IS NOT NULL")


def downgrade() -> None:
    op.drop_index(op.f('ix_dataset_location_run_id'), table_name='dataset_location')
    op.drop_table('dataset_location')
