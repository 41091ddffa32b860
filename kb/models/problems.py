"""Problems and versioned similar-problem sets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, run_fk, text_field


class Problem(SQLModel, table=True):
    __tablename__ = "problem"

    id: int | None = Field(default=None, primary_key=True)
    text: str = text_field(nullable=False)
    solution: str | None = text_field()
    answer: str | None = text_field()
    source: str | None = Field(default=None, index=True, description="dataset name, e.g. math500")
    source_id: str | None = Field(default=None, description="id within the source, e.g. MATH unique_id")
    split: str = Field(default="train", index=True, description="train | test | ...; test never trains")
    subject: str | None = Field(default=None, index=True)
    difficulty: int | None = Field(default=None, index=True)
    content_hash: str = Field(unique=True, description="a problem is stored once")
    extra: dict[str, Any] = json_field()
    run_id: int | None = run_fk()
    created_at: datetime = created_at_field()


class ProblemEmbedding(SQLModel, table=True):
    __tablename__ = "problem_embedding"

    problem_id: int = Field(foreign_key="problem.id", primary_key=True, ondelete="CASCADE")
    model: str = Field(primary_key=True)
    dim: int
    embedding: Any = Field(sa_column=sa.Column(Vector(), nullable=False))
    run_id: int | None = run_fk()
    created_at: datetime = created_at_field()


class SimilarBuild(SQLModel, table=True):
    """One way of building similar-problem sets (method + parameters); a new one never overwrites."""

    __tablename__ = "similar_build"

    id: int | None = Field(default=None, primary_key=True)
    method: str
    params: dict[str, Any] = json_field()
    params_hash: str = Field(unique=True)
    run_id: int | None = run_fk()
    created_at: datetime = created_at_field()


class SimilarSet(SQLModel, table=True):
    __tablename__ = "similar_set"
    __table_args__ = (sa.UniqueConstraint("build_id", "anchor_problem_id"),)

    id: int | None = Field(default=None, primary_key=True)
    build_id: int = Field(foreign_key="similar_build.id", index=True, ondelete="CASCADE")
    anchor_problem_id: int = Field(foreign_key="problem.id", index=True, ondelete="CASCADE")
    anchor_split: str = Field(description="copied from the anchor so training filters are one predicate")
    size: int = 0
    run_id: int | None = run_fk()
    created_at: datetime = created_at_field()


class SimilarSetMember(SQLModel, table=True):
    __tablename__ = "similar_set_member"

    set_id: int = Field(foreign_key="similar_set.id", primary_key=True, ondelete="CASCADE")
    problem_id: int = Field(foreign_key="problem.id", primary_key=True, index=True, ondelete="CASCADE")
    rank: int
    similarity: float
