"""Pipeline runs: one row per execution of a stage; every row a run writes carries its id."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, text_field, ts_field


class PipelineRun(SQLModel, table=True):
    __tablename__ = "pipeline_run"

    id: int | None = Field(default=None, primary_key=True)
    stage: str = Field(
        index=True, description="import, embed, mine, similar, sample, evaluate, pairs, export, ..."
    )
    params: dict[str, Any] = json_field()
    code_version: str = Field(default="")
    status: str = Field(
        default="running", index=True, description="running | succeeded | failed | interrupted"
    )
    counts: dict[str, Any] = json_field()
    error: str | None = text_field()
    host: str | None = Field(default=None)
    pid: int | None = Field(default=None)
    heartbeat_at: datetime | None = ts_field()  # the owner's lease: a stale one means the owner is gone
    started_at: datetime = created_at_field()
    finished_at: datetime | None = ts_field()
