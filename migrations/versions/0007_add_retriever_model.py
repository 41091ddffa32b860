"""registered retrievers (fine-tuned embedding models accepted by name)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 11:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'retriever_model',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('base_model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('dataset_version_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('code_version', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('run_id', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.ForeignKeyConstraint(['dataset_version_id'], ['dataset_version.id']),
        sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.create_index(op.f('ix_retriever_model_run_id'), 'retriever_model', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_retriever_model_run_id'), table_name='retriever_model')
    op.drop_table('retriever_model')
