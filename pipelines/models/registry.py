"""Registered base models (`model` rows): add, list, show, remove; and the GGUF path of any registered name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import InputError, NotFound
from pipelines.models import names

COLUMNS = ("name", "source", "path", "gguf_path", "parameters", "licence", "sha256", "details", "created_at")


def register(
    db: Database,
    *,
    name: str,
    path: str | Path,
    source: str,
    gguf_path: str | Path | None = None,
    sha256: str | None = None,
    licence: str | None = None,
    parameters: int | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    names.check_name(name)
    with db.engine.begin() as conn:
        names.claim(conn, name, "model")
        row = (
            conn.execute(
                sa.text(
                    "INSERT INTO model (name, path, gguf_path, source, sha256, licence, parameters, details) "
                    "VALUES (:n, :p, :g, :s, :h, :l, :k, CAST(:d AS jsonb)) "
                    f"RETURNING {', '.join(COLUMNS)}"
                ),
                {
                    "n": name,
                    "p": str(path),
                    "g": str(gguf_path) if gguf_path else None,
                    "s": source,
                    "h": sha256,
                    "l": licence,
                    "k": parameters,
                    "d": json.dumps(details or {}, sort_keys=True),
                },
            )
            .mappings()
            .one()
        )
    return dict(row)


def add_local(db: Database, name: str, path: str | Path) -> dict[str, Any]:
    """Register a local Hugging Face folder by reference: its weights stay where they are."""
    names.check_name(name)
    folder = Path(path).expanduser().resolve()
    config_file = folder / "config.json"
    if not folder.is_dir() or not config_file.is_file():
        raise InputError("not a Hugging Face model folder (no config.json)", file=str(folder), field="PATH")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"config.json cannot be read: {e}", file=str(config_file)) from None
    if not isinstance(config, dict) or not config.get("model_type"):
        raise InputError("config.json names no model_type", file=str(config_file), field="model_type")
    ggufs = sorted(folder.glob("*.gguf"))
    details = {"model_type": config["model_type"], "architectures": config.get("architectures")}
    return register(
        db,
        name=name,
        path=folder,
        source="local",
        gguf_path=ggufs[0] if len(ggufs) == 1 else None,
        details=details,
    )


def get(db: Database, name: str) -> dict[str, Any] | None:
    with db.engine.connect() as conn:
        row = (
            conn.execute(sa.text(f"SELECT {', '.join(COLUMNS)} FROM model WHERE name = :n"), {"n": name})
            .mappings()
            .first()
        )
    return dict(row) if row is not None else None


def show(db: Database, name: str) -> dict[str, Any]:
    row = get(db, name)
    if row is None:
        raise NotFound(f"no model named {name!r} (see `reasonflux models list`)")
    row["present"] = (Path(row["path"]) / "config.json").is_file()
    return row


def list_models(db: Database) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        return [
            dict(r)
            for r in conn.execute(
                sa.text(
                    "SELECT name, source, path, gguf_path, parameters, licence, created_at FROM model ORDER BY id"
                )
            ).mappings()
        ]


def remove(db: Database, name: str) -> dict[str, Any]:
    """Forget NAME; files are left alone (a local folder is the user's; a fetched one may be refetched)."""
    with db.engine.begin() as conn:
        row = (
            conn.execute(sa.text("DELETE FROM model WHERE name = :n RETURNING name, path"), {"n": name})
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"no model named {name!r} (see `reasonflux models list`)")
    return dict(row)


def relocate(db: Database, name: str, path: Path, gguf_path: Path) -> dict[str, Any]:
    with db.engine.begin() as conn:
        return dict(
            conn.execute(
                sa.text(
                    f"UPDATE model SET path = :p, gguf_path = :g WHERE name = :n RETURNING {', '.join(COLUMNS)}"
                ),
                {"p": str(path), "g": str(gguf_path), "n": name},
            )
            .mappings()
            .one()
        )


def set_gguf_path(db: Database, named: names.Named, gguf_path: str | Path) -> None:
    table = {"navigator": "navigator_model", "model": "model"}[named.kind]
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {table} SET gguf_path = :g WHERE name = :n"),
            {"g": str(gguf_path), "n": named.name},
        )
