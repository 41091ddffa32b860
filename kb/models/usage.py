"""Which template versions a solve actually used, as rows (not only inside solve_round JSON)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from kb.models._common import text_field


class SolveStepTemplate(SQLModel, table=True):
    """One template version given to the inference model in one solve round.

    Written by the solver's trace writer in the round's own statement, so it exists exactly
    when the round does; `accepted` is the navigator's verdict on the step (NULL when the
    round ended before a verdict).
    """

    __tablename__ = "solve_step_template"

    session_id: int = Field(foreign_key="solve_session.id", primary_key=True, ondelete="CASCADE")
    round_no: int = Field(primary_key=True)
    version_id: int = Field(
        sa_column=sa.Column(sa.Integer, sa.ForeignKey("template_version.id"), primary_key=True, index=True)
    )
    step_no: int | None = Field(default=None, description="1-based position of the step in the trajectory")
    score: float | None = Field(default=None, description="retrieval score of the version for the step")
    outcome: str | None = text_field()  # accepted | revised | removed | ... as the solver reported it
    accepted: bool | None = None
