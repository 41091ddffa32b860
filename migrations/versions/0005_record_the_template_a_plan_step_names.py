"""trajectory steps record the template their plan named (template_phrase)

The navigator contract renders a stored trajectory back into the reply it stands for; a step that
retrieval could not link to a template version still needs the name the navigator gave it.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trajectory_step", sa.Column("template_phrase", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("trajectory_step", "template_phrase")
