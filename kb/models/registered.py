"""Registered base models: a name for a local Hugging Face folder, fetched from the catalogue or added by hand.

Names are one namespace with navigators (`navigator_model`): the resolver in pipelines looks a name up in
both, so a name may live in only one of them (checked when either is registered).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from kb.models._common import created_at_field, json_field, text_field


class RegisteredModel(SQLModel, table=True):
    __tablename__ = "model"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    path: str = text_field(nullable=False)  # the Hugging Face folder (config.json, weights, tokenizer)
    gguf_path: str | None = text_field()  # a GGUF of the same weights: fetched beside it, or exported
    source: str = Field(description="catalogue | local")
    sha256: str | None = Field(default=None)  # the catalogue GGUF's pinned digest, verified when fetched
    licence: str | None = Field(default=None)
    parameters: int | None = Field(default=None, sa_type=sa.BigInteger)
    details: dict[str, Any] = json_field()  # where it came from: package, version, wheel digest, member
    created_at: datetime = created_at_field()
