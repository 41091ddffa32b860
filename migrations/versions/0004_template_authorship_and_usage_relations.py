"""template authorship, template usage as relations, and the views that read them

- `template_version.author`: who made a version (`--author` or the OS user of the command,
  including the user who ran an import or mining run; `run_id` names the run). Versions written
  before this revision have NULL: nobody recorded it, and immutable rows are not rewritten.
- `solve_step_template`: one row per template version a solve round gave the inference model,
  with the step and the navigator's verdict, written in the round's own statement.
- `template_history` gains `author`, `provenance` and the writing run's stage;
  `rollout_step_template` links every rollout to the template versions of its trajectory's steps.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 11:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HISTORY_0001 = """
    SELECT t.id AS template_id, t.key, v.id AS version_id, v.version_no, v.name,
           v.parent_version_id, v.content_hash, v.source_kind, v.source_ref,
           v.change_note, v.run_id, v.created_at,
           (v.id = t.current_version_id) AS is_current
    FROM template t JOIN template_version v ON v.template_id = t.id
"""
# Columns appended (CREATE OR REPLACE VIEW may only add at the end), so 0001's queries keep working.
HISTORY = """
    SELECT t.id AS template_id, t.key, v.id AS version_id, v.version_no, v.name,
           v.parent_version_id, v.content_hash, v.source_kind, v.source_ref,
           v.change_note, v.run_id, v.created_at,
           (v.id = t.current_version_id) AS is_current,
           v.author, v.provenance, r.stage AS run_stage
    FROM template t JOIN template_version v ON v.template_id = t.id
    LEFT JOIN pipeline_run r ON r.id = v.run_id
"""
ROLLOUT_STEP_TEMPLATE = """
    SELECT r.id AS rollout_id, r.trajectory_id, r.problem_id, r.correct, r.model, r.run_id,
           s.position AS step_position, s.template_version_id AS version_id, v.template_id, v.version_no
    FROM rollout r
    JOIN trajectory_step s ON s.trajectory_id = r.trajectory_id
    JOIN template_version v ON v.id = s.template_version_id
"""


def upgrade() -> None:
    op.add_column('template_version', sa.Column('author', sa.Text(), nullable=True))
    op.create_table(
        'solve_step_template',
        sa.Column('session_id', sa.Integer(), nullable=False),
        sa.Column('round_no', sa.Integer(), nullable=False),
        sa.Column('version_id', sa.Integer(), nullable=False),
        sa.Column('step_no', sa.Integer(), nullable=True),
        sa.Column('score', sa.Float(), nullable=True),
        sa.Column('outcome', sa.Text(), nullable=True),
        sa.Column('accepted', sa.Boolean(), nullable=True),
        sa.ForeignKeyConstraint(['session_id'], ['solve_session.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['version_id'], ['template_version.id'], ),
        sa.PrimaryKeyConstraint('session_id', 'round_no', 'version_id'),
    )
    op.create_index(op.f('ix_solve_step_template_version_id'), 'solve_step_template', ['version_id'], unique=False)
    # Sessions solved before this revision: their rounds' JSON holds the same facts.
    op.execute("""
        INSERT INTO solve_step_template (session_id, round_no, version_id, step_no, score, outcome, accepted)
        SELECT r.session_id, r.round_no, (r.adjustment->'template'->>'version_id')::int,
               (r.adjustment->>'step_no')::int, (r.adjustment->'template'->>'score')::float8,
               r.adjustment->>'outcome',
               CASE WHEN r.adjustment ? 'outcome' THEN r.adjustment->>'outcome' = 'accepted' END
        FROM solve_round r
        JOIN template_version v ON v.id = (r.adjustment->'template'->>'version_id')::int
        WHERE r.kind = 'step' AND jsonb_typeof(r.adjustment->'template'->'version_id') = 'number'
        ON CONFLICT DO NOTHING
    """)
    op.execute(f"CREATE OR REPLACE VIEW template_history AS {HISTORY}")
    op.execute(f"CREATE VIEW rollout_step_template AS {ROLLOUT_STEP_TEMPLATE}")


def downgrade() -> None:
    op.execute("DROP VIEW IF EXISTS rollout_step_template")
    op.execute("DROP VIEW IF EXISTS template_history")
    op.execute(f"CREATE VIEW template_history AS {HISTORY_0001}")
    op.drop_index(op.f('ix_solve_step_template_version_id'), table_name='solve_step_template')
    op.drop_table('solve_step_template')
    op.drop_column('template_version', 'author')
