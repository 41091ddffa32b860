"""create initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21 08:30:06.343103
"""

from __future__ import annotations

from collections.abc import Sequence

import pgvector.sqlalchemy
import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Vectors of any dimension share one column; each embedding model gets a partial
# HNSW index on a cast to its dimension (kb.embeddings.ensure_hnsw_index makes
# them for other models). The default model's indexes are created here.
DEFAULT_MODEL = "all-MiniLM-L6-v2"
DEFAULT_DIM = 384

IMMUTABLE_TABLES = ("template_version", "trajectory", "trajectory_step", "rollout", "dataset_version")

VIEWS = {
    "current_template": """
        SELECT t.id AS template_id, t.key, t.category, t.section, t.status,
               v.id AS version_id, v.version_no, v.name, v.template_type, v.tags,
               v.description, v.application_scope, v.steps,
               v.example_problem, v.example_solution, v.example_answer,
               v.content_hash, v.source_kind, v.source_ref, v.change_note, v.run_id,
               v.created_at AS version_created_at, t.created_at, t.updated_at
        FROM template t JOIN template_version v ON v.id = t.current_version_id
    """,
    "template_history": """
        SELECT t.id AS template_id, t.key, v.id AS version_id, v.version_no, v.name,
               v.parent_version_id, v.content_hash, v.source_kind, v.source_ref,
               v.change_note, v.run_id, v.created_at,
               (v.id = t.current_version_id) AS is_current
        FROM template t JOIN template_version v ON v.template_id = t.id
    """,
}


def _hnsw(table: str, model: str, dim: int) -> str:
    slug = "".join(c if c.isalnum() else "_" for c in model.lower())
    return (
        f"CREATE INDEX IF NOT EXISTS ix_hnsw_{table}_{slug} ON {table} "
        f"USING hnsw ((embedding::vector({dim})) vector_cosine_ops) WHERE model = '{model}'"
    )


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    # array_to_string is only STABLE; a generated column needs an IMMUTABLE expression.
    op.execute(
        "CREATE FUNCTION reasonflux_join_tags(text[]) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE "
        "AS $$ SELECT coalesce(array_to_string($1, ' '), '') $$"
    )
    op.create_table('pipeline_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('code_version', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('counts', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('host', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('pid', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_pipeline_run_stage'), 'pipeline_run', ['stage'], unique=False)
    op.create_index(op.f('ix_pipeline_run_status'), 'pipeline_run', ['status'], unique=False)
    op.create_table('template',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('category', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('section', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('current_version_no', sa.Integer(), nullable=False),
    sa.Column('current_version_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key')
    )
    op.create_index(op.f('ix_template_category'), 'template', ['category'], unique=False)
    op.create_index(op.f('ix_template_section'), 'template', ['section'], unique=False)
    op.create_index(op.f('ix_template_status'), 'template', ['status'], unique=False)
    op.create_table('dataset_version',
    sa.Column('id', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('schema_revision', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('row_counts', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('files', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_dataset_version_kind'), 'dataset_version', ['kind'], unique=False)
    op.create_index(op.f('ix_dataset_version_run_id'), 'dataset_version', ['run_id'], unique=False)
    op.create_table('failure',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('unit_key', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('raw_output', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_failure_run_id'), 'failure', ['run_id'], unique=False)
    op.create_index(op.f('ix_failure_stage'), 'failure', ['stage'], unique=False)
    op.create_table('problem',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('solution', sa.Text(), nullable=True),
    sa.Column('answer', sa.Text(), nullable=True),
    sa.Column('source', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('source_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('split', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('subject', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('difficulty', sa.Integer(), nullable=True),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('extra', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('content_hash')
    )
    op.create_index(op.f('ix_problem_difficulty'), 'problem', ['difficulty'], unique=False)
    op.create_index(op.f('ix_problem_run_id'), 'problem', ['run_id'], unique=False)
    op.create_index(op.f('ix_problem_source'), 'problem', ['source'], unique=False)
    op.create_index(op.f('ix_problem_split'), 'problem', ['split'], unique=False)
    op.create_index(op.f('ix_problem_subject'), 'problem', ['subject'], unique=False)
    op.create_table('similar_build',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('method', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('params_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('params_hash')
    )
    op.create_index(op.f('ix_similar_build_run_id'), 'similar_build', ['run_id'], unique=False)
    op.create_table('template_version',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('template_id', sa.Integer(), nullable=False),
    sa.Column('version_no', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('template_type', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('tags', postgresql.ARRAY(sa.Text()), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('application_scope', sa.Text(), nullable=False),
    sa.Column('steps', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('example_problem', sa.Text(), nullable=True),
    sa.Column('example_solution', sa.Text(), nullable=True),
    sa.Column('example_answer', sa.Text(), nullable=True),
    sa.Column('extra', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('content_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('parent_version_id', sa.Integer(), nullable=True),
    sa.Column('source_kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('source_ref', sa.Text(), nullable=True),
    sa.Column('provenance', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('change_note', sa.Text(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('search_tsv', postgresql.TSVECTOR(), sa.Computed("setweight(to_tsvector('english', coalesce(name, '')), 'A') || setweight(to_tsvector('english', reasonflux_join_tags(tags)), 'A') || setweight(to_tsvector('english', coalesce(description, '') || ' ' || coalesce(application_scope, '')), 'B') || setweight(to_tsvector('english', coalesce(steps::text, '')), 'C')", persisted=True), nullable=True),
    sa.ForeignKeyConstraint(['parent_version_id'], ['template_version.id'], ),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['template_id'], ['template.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('template_id', 'version_no')
    )
    op.create_index(op.f('ix_template_version_content_hash'), 'template_version', ['content_hash'], unique=False)
    op.create_index(op.f('ix_template_version_run_id'), 'template_version', ['run_id'], unique=False)
    op.create_index(op.f('ix_template_version_template_id'), 'template_version', ['template_id'], unique=False)
    op.create_index('ix_template_version_tsv', 'template_version', ['search_tsv'], unique=False, postgresql_using='gin')
    op.create_table('work_unit',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('scope', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('unit_key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('claimed_by', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('stage', 'scope', 'unit_key')
    )
    op.create_index('ix_work_unit_pending', 'work_unit', ['stage', 'scope', 'status'], unique=False)
    op.create_index(op.f('ix_work_unit_run_id'), 'work_unit', ['run_id'], unique=False)
    op.create_table('problem_embedding',
    sa.Column('problem_id', sa.Integer(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('embedding', pgvector.sqlalchemy.vector.VECTOR(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['problem_id'], ['problem.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('problem_id', 'model')
    )
    op.create_index(op.f('ix_problem_embedding_run_id'), 'problem_embedding', ['run_id'], unique=False)
    op.create_table('similar_set',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('build_id', sa.Integer(), nullable=False),
    sa.Column('anchor_problem_id', sa.Integer(), nullable=False),
    sa.Column('anchor_split', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['anchor_problem_id'], ['problem.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['build_id'], ['similar_build.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('build_id', 'anchor_problem_id')
    )
    op.create_index(op.f('ix_similar_set_anchor_problem_id'), 'similar_set', ['anchor_problem_id'], unique=False)
    op.create_index(op.f('ix_similar_set_build_id'), 'similar_set', ['build_id'], unique=False)
    op.create_index(op.f('ix_similar_set_run_id'), 'similar_set', ['run_id'], unique=False)
    op.create_table('solve_session',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('problem_id', sa.Integer(), nullable=True),
    sa.Column('problem_text', sa.Text(), nullable=False),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('final_answer', sa.Text(), nullable=True),
    sa.Column('reference_answer', sa.Text(), nullable=True),
    sa.Column('correct', sa.Boolean(), nullable=True),
    sa.Column('rounds', sa.Integer(), nullable=False),
    sa.Column('tokens', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['problem_id'], ['problem.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_solve_session_problem_id'), 'solve_session', ['problem_id'], unique=False)
    op.create_index(op.f('ix_solve_session_run_id'), 'solve_session', ['run_id'], unique=False)
    op.create_index(op.f('ix_solve_session_status'), 'solve_session', ['status'], unique=False)
    op.create_table('template_embedding',
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('dim', sa.Integer(), nullable=False),
    sa.Column('embedding', pgvector.sqlalchemy.vector.VECTOR(), nullable=False),
    sa.Column('text_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['version_id'], ['template_version.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('version_id', 'model')
    )
    op.create_index(op.f('ix_template_embedding_run_id'), 'template_embedding', ['run_id'], unique=False)
    op.create_table('training_run',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('base_model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('dataset_version_id', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('config', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('code_version', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('status', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('output_path', sa.Text(), nullable=True),
    sa.Column('resumed_from', sa.Integer(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['dataset_version_id'], ['dataset_version.id'], ),
    sa.ForeignKeyConstraint(['resumed_from'], ['training_run.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_training_run_stage'), 'training_run', ['stage'], unique=False)
    op.create_index(op.f('ix_training_run_status'), 'training_run', ['status'], unique=False)
    op.create_table('llm_call',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('session_id', sa.Integer(), nullable=True),
    sa.Column('stage', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('backend', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('messages', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('response', sa.Text(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['session_id'], ['solve_session.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_llm_call_run_id'), 'llm_call', ['run_id'], unique=False)
    op.create_index(op.f('ix_llm_call_session_id'), 'llm_call', ['session_id'], unique=False)
    op.create_table('navigator_model',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('path', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('base_model', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('training_run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['training_run_id'], ['training_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('similar_set_member',
    sa.Column('set_id', sa.Integer(), nullable=False),
    sa.Column('problem_id', sa.Integer(), nullable=False),
    sa.Column('rank', sa.Integer(), nullable=False),
    sa.Column('similarity', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['problem_id'], ['problem.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['set_id'], ['similar_set.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('set_id', 'problem_id')
    )
    op.create_index(op.f('ix_similar_set_member_problem_id'), 'similar_set_member', ['problem_id'], unique=False)
    op.create_table('solve_round',
    sa.Column('session_id', sa.Integer(), nullable=False),
    sa.Column('round_no', sa.Integer(), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('step_text', sa.Text(), nullable=True),
    sa.Column('navigator_prompt', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('navigator_output', sa.Text(), nullable=True),
    sa.Column('retrieved', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('instantiation', sa.Text(), nullable=True),
    sa.Column('evaluation', sa.Text(), nullable=True),
    sa.Column('adjustment', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('tokens', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['solve_session.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('session_id', 'round_no')
    )
    op.create_table('training_metric',
    sa.Column('run_id', sa.Integer(), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('metrics', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['training_run.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('run_id', 'step')
    )
    op.create_table('trajectory',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('problem_id', sa.Integer(), nullable=False),
    sa.Column('similar_set_id', sa.Integer(), nullable=True),
    sa.Column('navigator_model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('checkpoint', sqlmodel.sql.sqltypes.AutoString(), nullable=True),
    sa.Column('sample_key', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('sampling', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('abstraction', sa.Text(), nullable=True),
    sa.Column('raw_output', sa.Text(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['problem_id'], ['problem.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['similar_set_id'], ['similar_set.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('problem_id', 'navigator_model', 'sample_key')
    )
    op.create_index(op.f('ix_trajectory_problem_id'), 'trajectory', ['problem_id'], unique=False)
    op.create_index(op.f('ix_trajectory_run_id'), 'trajectory', ['run_id'], unique=False)
    op.create_index(op.f('ix_trajectory_similar_set_id'), 'trajectory', ['similar_set_id'], unique=False)
    op.create_table('dpo_pair',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('problem_id', sa.Integer(), nullable=False),
    sa.Column('chosen_trajectory_id', sa.Integer(), nullable=False),
    sa.Column('rejected_trajectory_id', sa.Integer(), nullable=False),
    sa.Column('chosen_reward', sa.Float(), nullable=False),
    sa.Column('rejected_reward', sa.Float(), nullable=False),
    sa.Column('margin', sa.Float(), nullable=False),
    sa.Column('params', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.Column('params_hash', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['chosen_trajectory_id'], ['trajectory.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['problem_id'], ['problem.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rejected_trajectory_id'], ['trajectory.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('params_hash', 'chosen_trajectory_id', 'rejected_trajectory_id')
    )
    op.create_index(op.f('ix_dpo_pair_params_hash'), 'dpo_pair', ['params_hash'], unique=False)
    op.create_index(op.f('ix_dpo_pair_problem_id'), 'dpo_pair', ['problem_id'], unique=False)
    op.create_index(op.f('ix_dpo_pair_run_id'), 'dpo_pair', ['run_id'], unique=False)
    op.create_table('rollout',
    sa.Column('id', sa.BigInteger(), autoincrement=True, nullable=False),
    sa.Column('trajectory_id', sa.Integer(), nullable=False),
    sa.Column('problem_id', sa.Integer(), nullable=False),
    sa.Column('sample_index', sa.Integer(), nullable=False),
    sa.Column('model', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('output', sa.Text(), nullable=False),
    sa.Column('extracted_answer', sa.Text(), nullable=True),
    sa.Column('correct', sa.Boolean(), nullable=False),
    sa.Column('grader', sqlmodel.sql.sqltypes.AutoString(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_ms', sa.Float(), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['problem_id'], ['problem.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['run_id'], ['pipeline_run.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['trajectory_id'], ['trajectory.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('trajectory_id', 'problem_id', 'sample_index')
    )
    op.create_index(op.f('ix_rollout_problem_id'), 'rollout', ['problem_id'], unique=False)
    op.create_index(op.f('ix_rollout_run_id'), 'rollout', ['run_id'], unique=False)
    op.create_table('trajectory_step',
    sa.Column('trajectory_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('template_version_id', sa.Integer(), nullable=True),
    sa.Column('retrieval_score', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['template_version_id'], ['template_version.id'], ),
    sa.ForeignKeyConstraint(['trajectory_id'], ['trajectory.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('trajectory_id', 'position')
    )
    op.create_index(op.f('ix_trajectory_step_template_version_id'), 'trajectory_step', ['template_version_id'], unique=False)
    # template <-> template_version reference each other: this side is added last.
    op.create_foreign_key(
        "fk_template_current_version", "template", "template_version", ["current_version_id"], ["id"]
    )
    op.execute(_hnsw("template_embedding", DEFAULT_MODEL, DEFAULT_DIM))
    op.execute(_hnsw("problem_embedding", DEFAULT_MODEL, DEFAULT_DIM))
    for name, body in VIEWS.items():
        op.execute(f"CREATE VIEW {name} AS {body}")
    # Immutable rows: corrections are new rows, never edits (docs/architecture.md).
    op.execute("""
        CREATE FUNCTION reasonflux_refuse_update() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION 'rows of % are immutable; write a new row instead', TG_TABLE_NAME
                USING ERRCODE = 'restrict_violation';
        END $$
    """)
    for table in IMMUTABLE_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION reasonflux_refuse_update()"
        )


def downgrade() -> None:
    for table in IMMUTABLE_TABLES:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_immutable ON {table}")
    op.execute("DROP FUNCTION IF EXISTS reasonflux_refuse_update()")
    for name in VIEWS:
        op.execute(f"DROP VIEW IF EXISTS {name}")
    op.drop_constraint("fk_template_current_version", "template", type_="foreignkey")
    op.drop_index(op.f('ix_trajectory_step_template_version_id'), table_name='trajectory_step')
    op.drop_table('trajectory_step')
    op.drop_index(op.f('ix_rollout_run_id'), table_name='rollout')
    op.drop_index(op.f('ix_rollout_problem_id'), table_name='rollout')
    op.drop_table('rollout')
    op.drop_index(op.f('ix_dpo_pair_run_id'), table_name='dpo_pair')
    op.drop_index(op.f('ix_dpo_pair_problem_id'), table_name='dpo_pair')
    op.drop_index(op.f('ix_dpo_pair_params_hash'), table_name='dpo_pair')
    op.drop_table('dpo_pair')
    op.drop_index(op.f('ix_trajectory_similar_set_id'), table_name='trajectory')
    op.drop_index(op.f('ix_trajectory_run_id'), table_name='trajectory')
    op.drop_index(op.f('ix_trajectory_problem_id'), table_name='trajectory')
    op.drop_table('trajectory')
    op.drop_table('training_metric')
    op.drop_table('solve_round')
    op.drop_index(op.f('ix_similar_set_member_problem_id'), table_name='similar_set_member')
    op.drop_table('similar_set_member')
    op.drop_table('navigator_model')
    op.drop_index(op.f('ix_llm_call_session_id'), table_name='llm_call')
    op.drop_index(op.f('ix_llm_call_run_id'), table_name='llm_call')
    op.drop_table('llm_call')
    op.drop_index(op.f('ix_training_run_status'), table_name='training_run')
    op.drop_index(op.f('ix_training_run_stage'), table_name='training_run')
    op.drop_table('training_run')
    op.drop_index(op.f('ix_template_embedding_run_id'), table_name='template_embedding')
    op.drop_table('template_embedding')
    op.drop_index(op.f('ix_solve_session_status'), table_name='solve_session')
    op.drop_index(op.f('ix_solve_session_run_id'), table_name='solve_session')
    op.drop_index(op.f('ix_solve_session_problem_id'), table_name='solve_session')
    op.drop_table('solve_session')
    op.drop_index(op.f('ix_similar_set_run_id'), table_name='similar_set')
    op.drop_index(op.f('ix_similar_set_build_id'), table_name='similar_set')
    op.drop_index(op.f('ix_similar_set_anchor_problem_id'), table_name='similar_set')
    op.drop_table('similar_set')
    op.drop_index(op.f('ix_problem_embedding_run_id'), table_name='problem_embedding')
    op.drop_table('problem_embedding')
    op.drop_index(op.f('ix_work_unit_run_id'), table_name='work_unit')
    op.drop_index('ix_work_unit_pending', table_name='work_unit')
    op.drop_table('work_unit')
    op.drop_index('ix_template_version_tsv', table_name='template_version', postgresql_using='gin')
    op.drop_index(op.f('ix_template_version_template_id'), table_name='template_version')
    op.drop_index(op.f('ix_template_version_run_id'), table_name='template_version')
    op.drop_index(op.f('ix_template_version_content_hash'), table_name='template_version')
    op.drop_table('template_version')
    op.drop_index(op.f('ix_similar_build_run_id'), table_name='similar_build')
    op.drop_table('similar_build')
    op.drop_index(op.f('ix_problem_subject'), table_name='problem')
    op.drop_index(op.f('ix_problem_split'), table_name='problem')
    op.drop_index(op.f('ix_problem_source'), table_name='problem')
    op.drop_index(op.f('ix_problem_run_id'), table_name='problem')
    op.drop_index(op.f('ix_problem_difficulty'), table_name='problem')
    op.drop_table('problem')
    op.drop_index(op.f('ix_failure_stage'), table_name='failure')
    op.drop_index(op.f('ix_failure_run_id'), table_name='failure')
    op.drop_table('failure')
    op.drop_index(op.f('ix_dataset_version_run_id'), table_name='dataset_version')
    op.drop_index(op.f('ix_dataset_version_kind'), table_name='dataset_version')
    op.drop_table('dataset_version')
    op.drop_index(op.f('ix_template_status'), table_name='template')
    op.drop_index(op.f('ix_template_section'), table_name='template')
    op.drop_index(op.f('ix_template_category'), table_name='template')
    op.drop_table('template')
    op.drop_index(op.f('ix_pipeline_run_status'), table_name='pipeline_run')
    op.drop_index(op.f('ix_pipeline_run_stage'), table_name='pipeline_run')
    op.drop_table('pipeline_run')
    op.execute("DROP FUNCTION IF EXISTS reasonflux_join_tags(text[])")
