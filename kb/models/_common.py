"""Column helpers shared by the model modules."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field


def utcnow() -> datetime:
    return datetime.now(UTC)


def vector_param(name: str) -> sa.BindParameter:
    """A vector bound through pgvector's own SQLAlchemy type (a list or array in, exact float32 text on
    the wire): the one way a vector reaches SQL, instead of hand-formatted literals."""
    return sa.bindparam(name, type_=Vector())


def created_at_field() -> Any:
    return Field(
        default_factory=utcnow,
        sa_column_kwargs={"server_default": sa.func.now()},
        sa_type=sa.DateTime(timezone=True),
        nullable=False,
    )


def ts_field(nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=nullable)


def json_field(default_factory=dict, nullable: bool = False) -> Any:
    return Field(default_factory=default_factory, sa_type=JSONB, nullable=nullable)


def text_field(nullable: bool = True, default: Any = None) -> Any:
    return Field(default=default, sa_type=sa.Text, nullable=nullable)


def run_fk(*, immutable: bool = False) -> Any:
    """The pipeline run that wrote a row (dlt-style lineage on every row).

    Immutable tables' rows cannot be updated, so ON DELETE SET NULL could never succeed there: they
    keep the default NO ACTION, and deleting a run whose history they hold is refused.
    """
    if immutable:
        return Field(default=None, foreign_key="pipeline_run.id", index=True, nullable=True)
    return Field(default=None, foreign_key="pipeline_run.id", index=True, nullable=True, ondelete="SET NULL")
