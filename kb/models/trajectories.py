"""Navigator trajectories, their rollouts, rewards (a view) and DPO pairs."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, run_fk, text_field


class NavigatorModel(SQLModel, table=True):
    """A named navigator checkpoint that sample/solve/serve/eval accept by name."""

    __tablename__ = "navigator_model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    path: str
    base_model: str | None = Field(default=None)
    training_run_id: int | None = Field(default=None, foreign_key="training_run.id", ondelete="SET NULL")
    gguf_path: str | None = text_field()  # the latest `reasonflux models export-gguf` of this checkpoint
    created_at: datetime = created_at_field()


class Trajectory(SQLModel, table=True):
    """A navigator's plan for one problem. Immutable once written."""

    __tablename__ = "trajectory"
    __table_args__ = (sa.UniqueConstraint("problem_id", "navigator_model", "sample_key"),)

    id: int | None = Field(default=None, primary_key=True)
    problem_id: int = Field(foreign_key="problem.id", index=True, ondelete="CASCADE")
    # NO ACTION: trajectories are immutable, so SET NULL could never succeed.
    similar_set_id: int | None = Field(default=None, foreign_key="similar_set.id", index=True)
    navigator_model: str
    checkpoint: str | None = Field(default=None)
    sample_key: str = Field(description="what makes samples distinct and reruns idempotent, e.g. 'seed=3'")
    sampling: dict[str, Any] = json_field()
    abstraction: str | None = text_field()
    raw_output: str = text_field(nullable=False, default="")
    run_id: int | None = run_fk(immutable=True)
    created_at: datetime = created_at_field()


class TrajectoryStep(SQLModel, table=True):
    __tablename__ = "trajectory_step"

    trajectory_id: int = Field(foreign_key="trajectory.id", primary_key=True, ondelete="CASCADE")
    position: int = Field(primary_key=True)
    text: str = text_field(nullable=False)
    # The template the navigator named for the step (its plan's "template"); the linked version is what
    # retrieval found for it. Exports render the linked version's name, this phrase when none was linked.
    template_phrase: str | None = text_field()
    template_version_id: int | None = Field(default=None, foreign_key="template_version.id", index=True)
    retrieval_score: float | None = None


class Rollout(SQLModel, table=True):
    """One inference-LLM attempt at one similar problem while following a trajectory."""

    __tablename__ = "rollout"
    __table_args__ = (sa.UniqueConstraint("trajectory_id", "problem_id", "sample_index"),)

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=True)
    )
    trajectory_id: int = Field(foreign_key="trajectory.id", ondelete="CASCADE")
    problem_id: int = Field(foreign_key="problem.id", index=True, ondelete="CASCADE")
    sample_index: int = 0
    model: str = Field(default="")
    output: str = text_field(nullable=False, default="")
    extracted_answer: str | None = text_field()
    correct: bool
    grader: str = Field(default="math-verify")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    run_id: int | None = run_fk(immutable=True)
    created_at: datetime = created_at_field()


class DpoPair(SQLModel, table=True):
    __tablename__ = "dpo_pair"
    __table_args__ = (sa.UniqueConstraint("params_hash", "chosen_trajectory_id", "rejected_trajectory_id"),)

    id: int | None = Field(default=None, primary_key=True)
    problem_id: int = Field(foreign_key="problem.id", index=True, ondelete="CASCADE")
    chosen_trajectory_id: int = Field(foreign_key="trajectory.id", ondelete="CASCADE")
    rejected_trajectory_id: int = Field(foreign_key="trajectory.id", ondelete="CASCADE")
    chosen_reward: float
    rejected_reward: float
    margin: float
    params: dict[str, Any] = json_field()
    params_hash: str = Field(
        index=True, description="the selection that built this pair; rebuilds are idempotent"
    )
    run_id: int | None = run_fk()
    created_at: datetime = created_at_field()


class DatasetVersion(SQLModel, table=True):
    """An immutable exported dataset: its files are verified against these hashes."""

    __tablename__ = "dataset_version"

    id: str = Field(primary_key=True, description="content-derived id, e.g. dpo-3f2a9c1b7e4d")
    kind: str = Field(index=True, description="dpo | sft | templates | problems")
    params: dict[str, Any] = json_field()
    schema_revision: str
    row_counts: dict[str, Any] = json_field()
    files: dict[str, Any] = json_field()  # file name -> sha256
    path: str | None = text_field()  # the first folder it was written to; every folder: DatasetLocation
    run_id: int | None = run_fk(immutable=True)
    created_at: datetime = created_at_field()


class DatasetLocation(SQLModel, table=True):
    """A folder a dataset version was written to (one row per folder: the same version may be exported to
    several). Its own table because dataset_version rows are immutable (migration 0010)."""

    __tablename__ = "dataset_location"

    version_id: str = Field(foreign_key="dataset_version.id", primary_key=True, ondelete="CASCADE")
    path: str = Field(primary_key=True, sa_type=sa.Text)
    run_id: int | None = run_fk()  # the export run that wrote it there
    created_at: datetime = created_at_field()
