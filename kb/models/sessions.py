"""Solve sessions: every round of the multi-round solver, kept."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, run_fk, text_field, ts_field


class SolveSession(SQLModel, table=True):
    __tablename__ = "solve_session"

    id: int | None = Field(default=None, primary_key=True)
    problem_id: int | None = Field(default=None, foreign_key="problem.id", index=True, ondelete="SET NULL")
    problem_text: str = text_field(nullable=False, default="")
    config: dict[str, Any] = json_field()
    status: str = Field(default="running", index=True, description="running | solved | failed | limit")
    reason: str | None = text_field()
    final_answer: str | None = text_field()
    reference_answer: str | None = text_field()
    correct: bool | None = None
    rounds: int = 0
    tokens: dict[str, Any] = json_field()  # per role: prompt/completion
    latency_ms: float = 0.0
    run_id: int | None = run_fk()
    started_at: datetime = created_at_field()
    finished_at: datetime | None = ts_field()


class SolveRound(SQLModel, table=True):
    __tablename__ = "solve_round"

    session_id: int = Field(foreign_key="solve_session.id", primary_key=True, ondelete="CASCADE")
    round_no: int = Field(primary_key=True)
    kind: str = Field(default="step", description="plan | step | final")
    step_text: str | None = text_field()
    navigator_prompt: list[Any] = json_field(default_factory=list)
    navigator_output: str | None = text_field()
    retrieved: list[Any] = json_field(default_factory=list)  # [{version_id, template_id, name, score}]
    instantiation: str | None = text_field()
    evaluation: str | None = text_field()
    adjustment: dict[str, Any] = json_field()
    tokens: dict[str, Any] = json_field()
    latency_ms: float = 0.0
    created_at: datetime = created_at_field()
