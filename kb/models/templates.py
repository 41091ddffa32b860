"""Thought templates: a stable identity plus immutable versions and their embeddings."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import ARRAY, TSVECTOR
from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, run_fk, text_field

# What full-text search indexes, weighted: name and tags matter most.
TEMPLATE_TSV_EXPR = (
    "setweight(to_tsvector('english', coalesce(name, '')), 'A') || "
    "setweight(to_tsvector('english', reasonflux_join_tags(tags)), 'A') || "
    "setweight(to_tsvector('english', coalesce(description, '') || ' ' || coalesce(application_scope, '')), 'B') || "
    "setweight(to_tsvector('english', coalesce(steps::text, '')), 'C')"
)


class Template(SQLModel, table=True):
    """The identity of a template; its content lives in TemplateVersion."""

    __tablename__ = "template"

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(
        unique=True, description="category path plus name, e.g. 'Sequences/Arithmetic/Sum formula'"
    )
    category: str = Field(index=True, description="top-level category (a ReasonFlux-v1 chapter)")
    section: str | None = Field(
        default=None, index=True, description="second level (a ReasonFlux-v1 section)"
    )
    status: str = Field(default="active", index=True, description="active | deprecated")
    current_version_no: int = Field(
        default=0, description="version_no of the current version; optimistic lock"
    )
    current_version_id: int | None = Field(
        default=None,
        sa_column=sa.Column(
            sa.Integer,
            sa.ForeignKey("template_version.id", use_alter=True, name="fk_template_current_version"),
            nullable=True,
        ),
    )
    created_at: datetime = created_at_field()
    updated_at: datetime = created_at_field()


class TemplateVersion(SQLModel, table=True):
    """An immutable snapshot of a template's content (UPDATE is refused by a trigger)."""

    __tablename__ = "template_version"
    __table_args__ = (
        sa.UniqueConstraint("template_id", "version_no"),
        sa.Index("ix_template_version_tsv", "search_tsv", postgresql_using="gin"),
    )

    id: int | None = Field(default=None, primary_key=True)
    template_id: int = Field(foreign_key="template.id", index=True, ondelete="CASCADE")
    version_no: int
    name: str
    template_type: str | None = Field(default=None)
    tags: list[str] = Field(default_factory=list, sa_column=sa.Column(ARRAY(sa.Text), nullable=False))
    description: str = text_field(nullable=False, default="")
    application_scope: str = text_field(nullable=False, default="")
    steps: list[Any] = json_field(default_factory=list)
    example_problem: str | None = text_field()
    example_solution: str | None = text_field()
    example_answer: str | None = text_field()
    extra: dict[str, Any] = json_field()  # source fields we could not map, kept verbatim
    content_hash: str = Field(index=True)
    parent_version_id: int | None = Field(default=None, foreign_key="template_version.id")
    source_kind: str = Field(default="user", description="file | run | user")
    source_ref: str | None = text_field()
    provenance: dict[str, Any] = json_field()
    change_note: str | None = text_field()
    author: str | None = text_field()  # who made it: --author or the OS user; NULL only for rows before 0004
    run_id: int | None = run_fk(immutable=True)
    created_at: datetime = created_at_field()
    search_tsv: Any = Field(
        default=None,
        sa_column=sa.Column(TSVECTOR, sa.Computed(TEMPLATE_TSV_EXPR, persisted=True)),
    )


class TemplateEmbedding(SQLModel, table=True):
    """One vector per (template version, embedding model)."""

    __tablename__ = "template_embedding"

    version_id: int = Field(foreign_key="template_version.id", primary_key=True, ondelete="CASCADE")
    model: str = Field(primary_key=True)
    dim: int
    embedding: Any = Field(sa_column=sa.Column(Vector(), nullable=False))
    text_hash: str = Field(default="", description="hash of the embedded text, to skip unchanged work")
    run_id: int | None = run_fk()
    created_at: datetime = created_at_field()
