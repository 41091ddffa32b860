"""Navigators by name: the `navigator_model` rows a training run registers, resolved with models' names
(one namespace, pipelines.models.names)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import select

from kb.db import Database
from kb.errors import ConflictError
from kb.models import NavigatorModel
from pipelines.models import names


def navigator_name_for(stage: str, run_id: int) -> str:
    return f"navigator-{stage}-run{run_id}"


def check_navigator_name_free(db: Database, name: str) -> None:
    """Before training: the name is free among navigators and models (`register_navigator` checks it again)."""
    named = names.lookup_db(db, name)
    if named is not None:
        raise ConflictError(
            f"{name!r} is already a registered {named.kind} (path {named.path}); choose another --name"
        )


def register_navigator(
    db: Database, *, name: str, path: str, base_model: str | None, training_run_id: int | None
) -> dict[str, Any]:
    with db.session() as s:
        names.claim(s, name, "navigator")
        row = NavigatorModel(name=name, path=path, base_model=base_model, training_run_id=training_run_id)
        s.add(row)
        try:
            s.commit()
        except sa.exc.IntegrityError:
            raise ConflictError(f"navigator {name!r} already exists; choose another --name") from None
        return row.model_dump()


# A navigator name, a model name or a local folder -> the folder; one resolver for both kinds.
resolve_navigator = names.resolve


def navigator_path(db: Database, name: str) -> str | None:
    with db.session() as s:
        return s.exec(select(NavigatorModel.path).where(NavigatorModel.name == name)).first()


def list_navigators(db: Database) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    "SELECT n.name, n.path, n.base_model, n.training_run_id, r.stage, r.dataset_version_id, "
                    "n.gguf_path, n.created_at FROM navigator_model n LEFT JOIN training_run r ON r.id = n.training_run_id "
                    "ORDER BY n.created_at, n.id"
                )
            )
            .mappings()
            .all()
        )
    return [dict(r) for r in rows]
