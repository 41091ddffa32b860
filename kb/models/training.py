"""Training runs of the navigator (SFT, DPO) and their per-step metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, text_field, ts_field


class TrainingRun(SQLModel, table=True):
    __tablename__ = "training_run"
    __table_args__ = (
        sa.Index(
            "ux_training_run_resumed_from",
            "resumed_from",
            unique=True,
            postgresql_where=sa.text("resumed_from IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    stage: str = Field(index=True, description="sft | dpo")
    base_model: str
    dataset_version_id: str | None = Field(default=None, foreign_key="dataset_version.id")
    config: dict[str, Any] = json_field()
    code_version: str = Field(default="")
    status: str = Field(
        default="running", index=True, description="running | succeeded | failed | interrupted"
    )
    metrics: dict[str, Any] = json_field()
    output_path: str | None = text_field()
    # Unique (partial index, migration 0006): a run is resumed at most once, since every resume writes
    # into the run's own folder; two resumes would share checkpoints and register one set of weights twice.
    resumed_from: int | None = Field(default=None, foreign_key="training_run.id")
    error: str | None = text_field()
    host: str | None = Field(default=None)
    pid: int | None = Field(default=None)
    heartbeat_at: datetime | None = ts_field()  # the owner's lease: a stale one means the owner is gone
    started_at: datetime = created_at_field()
    finished_at: datetime | None = ts_field()


class TrainingMetric(SQLModel, table=True):
    __tablename__ = "training_metric"

    run_id: int = Field(foreign_key="training_run.id", primary_key=True, ondelete="CASCADE")
    step: int = Field(primary_key=True)
    metrics: dict[str, Any] = json_field()
    created_at: datetime = created_at_field()
