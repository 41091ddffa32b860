"""registered base models (`reasonflux models`) and the GGUF exported from a navigator

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-03 20:00:00.000000

('0008' is reserved: it landed once with another meaning.)
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'model',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('path', sa.Text(), nullable=False),
        sa.Column('gguf_path', sa.Text(), nullable=True),
        sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column('sha256', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('licence', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
        sa.Column('parameters', sa.BigInteger(), nullable=True),
        sa.Column('details', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
    )
    op.add_column('navigator_model', sa.Column('gguf_path', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('navigator_model', 'gguf_path')
    op.drop_table('model')
