"""Embedding stage: vectors for template versions and problems, one row per (item, model).

What a template version's vector is made of (two views, never the worked example, NFKC)
and the one writer of template vectors (`store_vectors`) live in kb.template_vectors, which
the commands that write versions (and mining) also use to embed them at once. This stage is the bulk path: every current version (or the given ones) for
one model, in batches, with a progress bar.

Work is skipped when the stored vector was made from the same text (its hash) by
the same model, so re-running the stage is cheap and resumable; a new version whose
embedded text did not change (an edited example, say) copies its vector in SQL.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from kb import config
from kb.db import Database
from kb.embeddings import Embedder, ensure_hnsw_index, get_embedder
from kb.models import ProblemEmbedding
from kb.progress import progress_bar
from kb.template_vectors import COPY_SAME_TEXT_SQL, content_views, held_models, store_vectors, text_hash

BATCH = 64


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _prepare(db: Database, table: str, embedder: Embedder) -> None:
    if embedder.name != config.DEFAULT_EMBED_MODEL:
        with db.engine.begin() as conn:
            ensure_hnsw_index(conn, table, embedder.name, embedder.dim)


def _template_candidates(
    db: Database, model: str, version_ids: list[int] | None, recompute: bool
) -> list[dict[str, Any]]:
    """Versions to embed: the given ones, or every current version, with their stored text hash."""
    where = (
        "v.id = ANY(:ids)" if version_ids is not None else "v.id IN (SELECT current_version_id FROM template)"
    )
    sql = sa.text(
        "SELECT v.id, v.name, v.tags, v.description, v.application_scope, v.steps, e.text_hash "
        "FROM template_version v LEFT JOIN template_embedding e ON e.version_id = v.id AND e.model = :m "
        f"WHERE {where} ORDER BY v.id"
    )
    params: dict[str, Any] = {"m": model}
    if version_ids is not None:
        params["ids"] = list(version_ids)
    with db.engine.connect() as conn:
        rows = conn.execute(sql, params).mappings().all()
    out = []
    for r in rows:
        views = content_views(r)
        h = text_hash(views)
        if recompute or r["text_hash"] != h:
            out.append({"id": r["id"], "views": views, "hash": h})
    return out


def _copy_same_text(db: Database, model: str, todo: list[dict[str, Any]], run_id: int | None) -> set[int]:
    """Give versions the stored vector of another version with the same embedded text; the ids done."""
    with db.engine.begin() as conn:
        return set(
            conn.execute(
                COPY_SAME_TEXT_SQL,
                {
                    "vids": [c["id"] for c in todo],
                    "hashes": [c["hash"] for c in todo],
                    "m": model,
                    "run": run_id,
                },
            ).scalars()
        )


def embed_templates(
    db: Database,
    model: str | None = None,
    version_ids: list[int] | None = None,
    run_id: int | None = None,
    *,
    recompute: bool = False,
    batch_size: int = BATCH,
    progress: bool | None = None,
) -> int:
    """Embed template versions lacking an up-to-date vector for MODEL; returns how many were written.

    Without VERSION_IDS: every current version. With them: exactly those versions.
    RECOMPUTE re-embeds even when the stored vector was made from the same text.
    """
    embedder = get_embedder(model, db)
    todo = _template_candidates(db, embedder.name, version_ids, recompute)
    if not todo:
        return 0
    _prepare(db, "template_embedding", embedder)
    written = 0
    if not recompute:
        copied = _copy_same_text(db, embedder.name, todo, run_id)
        todo = [c for c in todo if c["id"] not in copied]
        written = len(copied)
    with progress_bar(len(todo), f"embedding templates ({embedder.name})", enabled=progress) as advance:
        for chunk in _batches(todo, batch_size):
            vecs = embedder.encode_views([c["views"] for c in chunk], batch_size=batch_size)
            rows = [(c["id"], c["hash"], v) for c, v in zip(chunk, vecs)]
            with db.engine.begin() as conn:
                written += store_vectors(conn, embedder.name, embedder.dim, rows, run_id)
            advance(len(rows))
    return written


def embed_problems(
    db: Database,
    model: str | None = None,
    problem_ids: list[int] | None = None,
    run_id: int | None = None,
    *,
    recompute: bool = False,
    batch_size: int = BATCH,
    progress: bool | None = None,
) -> int:
    """Embed problems (their text) lacking a vector for MODEL, or the given ones; returns the count."""
    embedder = get_embedder(model, db)
    conds = ["(:recompute OR e.problem_id IS NULL)"]
    params: dict[str, Any] = {"m": embedder.name, "recompute": recompute}
    if problem_ids is not None:
        conds.append("p.id = ANY(:ids)")
        params["ids"] = list(problem_ids)
    sql = sa.text(
        "SELECT p.id, p.text FROM problem p "
        "LEFT JOIN problem_embedding e ON e.problem_id = p.id AND e.model = :m "
        f"WHERE {' AND '.join(conds)} ORDER BY p.id"
    )
    with db.engine.connect() as conn:
        todo = [dict(r) for r in conn.execute(sql, params).mappings()]
    if not todo:
        return 0
    _prepare(db, "problem_embedding", embedder)
    table = ProblemEmbedding.__table__
    written = 0
    with progress_bar(len(todo), f"embedding problems ({embedder.name})", enabled=progress) as advance:
        for chunk in _batches(todo, batch_size):
            vecs = embedder.encode(
                [unicodedata.normalize("NFKC", c["text"]) for c in chunk], batch_size=batch_size
            )
            rows = [
                {
                    "problem_id": c["id"],
                    "model": embedder.name,
                    "dim": embedder.dim,
                    "embedding": v,
                    "run_id": run_id,
                }
                for c, v in zip(chunk, vecs)
            ]
            stmt = insert(table).values(rows)
            stmt = stmt.on_conflict_do_update(
                index_elements=["problem_id", "model"],
                set_={k: stmt.excluded[k] for k in ("dim", "embedding", "run_id")}
                | {"created_at": sa.func.now()},
            )
            with db.engine.begin() as conn:
                conn.execute(stmt)
            written += len(rows)
            advance(len(rows))
    return written


def embed_new_templates(
    db: Database, version_ids: list[int] | None = None, run_id: int | None = None, *, model: str | None = None
) -> int:
    """Vectors for new template versions with MODEL (default: the configured one) and with every other
    model the KB holds template vectors for, so none of them misses the versions; returns the count."""
    with db.engine.connect() as conn:
        models = held_models(conn)
    chosen = config.embed_model_name(model)
    return sum(
        embed_templates(db, m, version_ids=version_ids, run_id=run_id)
        for m in [chosen, *(m for m in models if m != chosen)]
    )
