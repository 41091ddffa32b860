"""Registered retrievers: a name for a fine-tuned model folder, with where it came from and how it did.

A registered name is accepted wherever an embedding model name is (kb.embeddings resolves it);
registering never replaces the default model, and a name is never reused for other weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb import config
from kb.db import Database
from kb.embeddings import RETRIEVER_NAME, forget
from kb.errors import ConflictError, InputError, NotFound

COLUMNS = (
    "id",
    "name",
    "path",
    "base_model",
    "dataset_version_id",
    "config",
    "metrics",
    "code_version",
    "run_id",
    "created_at",
)


def check_name(db: Database, name: str) -> None:
    """A new retriever's name: a plain name, not the default model's, not taken."""
    if not RETRIEVER_NAME.match(name):
        raise InputError(
            "a retriever name is letters, digits, '.', '_' and '-' (at most 63), not a path", field="--name"
        )
    if name == config.DEFAULT_EMBED_MODEL:
        raise InputError(f"{name!r} is the default model, which is never replaced", field="--name")
    with db.engine.connect() as conn:
        if conn.execute(sa.text("SELECT 1 FROM retriever_model WHERE name = :n"), {"n": name}).first():
            raise ConflictError(f"a retriever named {name!r} is already registered; choose another --name")


def default_folder(name: str) -> Path:
    return config.home_dir() / "retrievers" / name


def register(
    db: Database,
    *,
    name: str,
    path: str | Path,
    base_model: str,
    dataset_version_id: str | None,
    hyper_params: dict[str, Any],
    metrics: dict[str, Any],
    run_id: int | None,
) -> dict[str, Any]:
    check_name(db, name)
    with db.engine.begin() as conn:
        row = (
            conn.execute(
                sa.text(
                    "INSERT INTO retriever_model (name, path, base_model, dataset_version_id, config, metrics, "
                    "code_version, run_id) VALUES (:n, :p, :b, :d, CAST(:c AS jsonb), CAST(:m AS jsonb), :v, :r) "
                    f"RETURNING {', '.join(COLUMNS)}"
                ),
                {
                    "n": name,
                    "p": str(Path(path).resolve()),
                    "b": base_model,
                    "d": dataset_version_id,
                    "c": _json(hyper_params),
                    "m": _json(metrics),
                    "v": config.code_version(),
                    "r": run_id,
                },
            )
            .mappings()
            .one()
        )
    forget(name)
    return dict(row)


def list_retrievers(db: Database) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(f"SELECT {', '.join(COLUMNS)} FROM retriever_model ORDER BY id")
            ).mappings()
        ]


def get_retriever(db: Database, name: str) -> dict[str, Any]:
    with db.engine.connect() as conn:
        row = (
            conn.execute(
                sa.text(f"SELECT {', '.join(COLUMNS)} FROM retriever_model WHERE name = :n"), {"n": name}
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"no retriever named {name!r} (see `reasonflux retriever list`)")
    return dict(row)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
