"""Registered retrievers: fine-tuned embedding models that any `--model` option accepts by name."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, run_fk, text_field


class RetrieverModel(SQLModel, table=True):
    """One fine-tuned sentence-transformers folder, by name; vectors it makes are stored under NAME."""

    __tablename__ = "retriever_model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    path: str = text_field(nullable=False)
    base_model: str
    dataset_version_id: str | None = Field(default=None, foreign_key="dataset_version.id")
    config: dict[str, Any] = json_field()  # hyper-parameters, seed, device
    metrics: dict[str, Any] = json_field()
    code_version: str = Field(default="")
    run_id: int | None = run_fk()
    created_at: datetime = created_at_field()
