"""LLM call log, claimable work units and recorded failures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, run_fk, text_field, ts_field


class LlmCall(SQLModel, table=True):
    """Every prompt and response, so a run can be audited with SQL. Never holds secrets."""

    __tablename__ = "llm_call"

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=True)
    )
    run_id: int | None = run_fk()
    session_id: int | None = Field(
        default=None, foreign_key="solve_session.id", index=True, ondelete="SET NULL"
    )
    stage: str | None = Field(default=None, description="mine | sample | evaluate | solve:navigator | ...")
    backend: str
    model: str
    messages: list[Any] = json_field(default_factory=list)
    params: dict[str, Any] = json_field()
    response: str | None = text_field()
    error: str | None = text_field()
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    created_at: datetime = created_at_field()


class WorkUnit(SQLModel, table=True):
    """A unit of a stage's work, claimed with FOR UPDATE SKIP LOCKED so workers never overlap."""

    __tablename__ = "work_unit"
    __table_args__ = (
        sa.UniqueConstraint("stage", "scope", "unit_key"),
        sa.Index("ix_work_unit_pending", "stage", "scope", "status"),
    )

    id: int | None = Field(
        default=None, sa_column=sa.Column(sa.BigInteger, primary_key=True, autoincrement=True)
    )
    stage: str
    scope: str = Field(description="hash of the stage parameters the unit belongs to")
    unit_key: str
    payload: dict[str, Any] = json_field()
    status: str = Field(default="pending", description="pending | claimed | done | failed")
    attempts: int = 0
    claimed_by: str | None = Field(default=None)
    claimed_at: datetime | None = ts_field()
    finished_at: datetime | None = ts_field()
    error: str | None = text_field()
    run_id: int | None = run_fk()


class Failure(SQLModel, table=True):
    """Unparseable model output or bad unit, with the raw text and the reason; never silently dropped."""

    __tablename__ = "failure"

    id: int | None = Field(default=None, primary_key=True)
    run_id: int | None = run_fk()
    stage: str = Field(index=True)
    unit_key: str | None = Field(default=None)
    attempt: int = 0
    reason: str = text_field(nullable=False, default="")
    raw_output: str | None = text_field()
    created_at: datetime = created_at_field()
