"""What a template version's vector is made of, and keeping every model's vectors current.

The embedded text (`template_views`) and its hash live here, in kb, so that the commands
that write versions (`templates add/edit/revert` here; import and mine in pipelines) embed
the new versions in the same command, for every embedding model the KB already holds
vectors for: a version never silently drops out of vector and hybrid search. The bulk stage
(`reasonflux embed`, pipelines/embed.py) uses the same text and hash, and every template vector is
written by `store_vectors`.

Mining embeds its candidates (templates not yet versions) from this same text too. It once used a
text of its own (name, tags, "Applies when", description, steps cut at 400 characters) and stored it
without a hash until the embed stage replaced it: a candidate was then compared with imported versions
by a different text than with the versions mined earlier in the run, so one threshold meant two things.
One text makes every comparison like with like, and a mined version's vector is final when written.

What a template's vector is made of matters more than anything else in retrieval.
all-MiniLM-L6-v2 reads at most 256 word pieces and most ReasonFlux templates are longer
(median about 340 with their steps), so a template is embedded as two views, each within
the window, and its vector is their normalised mean: what it is for (name, tags,
description, application scope) and what it does (its steps, which share the vocabulary of
the problems they solve). The worked example is never embedded: it is what a user's problem
looks like, and retrieval is judged by it. Text is NFKC-normalised, as queries are.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert

from kb.embeddings import get_embedder
from kb.errors import KbError
from kb.models import TemplateEmbedding


def template_views(
    name: str,
    tags: Sequence[str] | None,
    description: str | None,
    application_scope: str | None,
    steps: Sequence[Any] | None,
) -> list[str]:
    """The texts embedded for a template version (never its worked example)."""
    head = [name.strip()]
    if tags:
        head.append("Tags: " + ", ".join(t.strip() for t in tags if t and t.strip()))
    head += [t.strip() for t in (description, application_scope) if t and t.strip()]
    views = ["\n".join(head)]
    step_text = "\n".join(str(s).strip() for s in (steps or []) if str(s).strip())
    if step_text:
        views.append(step_text)
    return [unicodedata.normalize("NFKC", v) for v in views]


def content_views(content: Mapping[str, Any]) -> list[str]:
    """template_views of a version's content fields (a TemplateSpec's, a mined candidate's, a row's)."""
    return template_views(
        content["name"],
        content["tags"],
        content["description"],
        content["application_scope"],
        content["steps"],
    )


def text_hash(views: Sequence[str]) -> str:
    return hashlib.sha256("\x1e".join(views).encode()).hexdigest()


def store_vectors(
    conn: sa.Connection,
    model: str,
    dim: int,
    rows: Sequence[tuple[int, str, Sequence[float]]],
    run_id: int | None,
) -> int:
    """Write (version_id, text_hash, vector) rows for MODEL, replacing what a version held for it: the one
    writer of template vectors (add/edit/revert, import, the embed stage, mining). The vector is bound by
    pgvector's own type, so every path stores the same float32 values. Returns the rows written."""
    if not rows:
        return 0
    table = TemplateEmbedding.__table__
    stmt = pg_insert(table).values(
        [
            {
                "version_id": vid,
                "model": model,
                "dim": dim,
                "embedding": vec,
                "text_hash": h,
                "run_id": run_id,
            }
            for vid, h, vec in rows
        ]
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["version_id", "model"],
            set_={k: stmt.excluded[k] for k in ("dim", "embedding", "text_hash", "run_id")}
            | {"created_at": sa.func.now()},
        )
    )
    return len(rows)


def held_models(conn: sa.Connection) -> list[str]:
    """The embedding models the KB holds template vectors for."""
    return list(
        conn.execute(sa.text("SELECT DISTINCT model FROM template_embedding ORDER BY model")).scalars()
    )


def missing_vectors(conn: sa.Connection, models: Iterable[str] | None = None) -> dict[str, int]:
    """Per model (held ones by default): how many current template versions have no vector for it."""
    models = list(models) if models is not None else held_models(conn)
    if not models:
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT m.model, count(t.id) FROM unnest(CAST(:models AS text[])) AS m(model) "
            "LEFT JOIN template t ON t.current_version_id IS NOT NULL AND NOT EXISTS ("
            "  SELECT 1 FROM template_embedding e WHERE e.version_id = t.current_version_id AND e.model = m.model) "
            "GROUP BY m.model ORDER BY m.model"
        ),
        {"models": models},
    ).all()
    return {model: int(n) for model, n in rows}


def embed_versions(
    conn: sa.Connection,
    version_ids: Sequence[int],
    *,
    models: Iterable[str] | None = None,
    run_id: int | None = None,
) -> dict[str, int]:
    """Vectors for VERSION_IDS for every held model (or MODELS), inside the caller's transaction.

    A version whose embedded text another version already has gets that vector copied in SQL;
    the rest are encoded. Returns {model: vectors written}. A model that cannot be loaded is a
    KbError, so the caller's transaction (and the version it wrote) rolls back.
    """

    ids = sorted(set(version_ids))
    models = list(models) if models is not None else held_models(conn)
    if not ids or not models:
        return {}
    rows = (
        conn.execute(
            sa.text(
                "SELECT id, name, tags, description, application_scope, steps FROM template_version "
                "WHERE id = ANY(:ids) ORDER BY id"
            ),
            {"ids": ids},
        )
        .mappings()
        .all()
    )
    todo = [(r["id"], views, text_hash(views)) for r in rows for views in [content_views(r)]]
    written: dict[str, int] = {}
    for model in models:
        copied = set(
            conn.execute(
                COPY_SAME_TEXT_SQL,
                {
                    "vids": [vid for vid, _, _ in todo],
                    "hashes": [h for _, _, h in todo],
                    "m": model,
                    "run": run_id,
                },
            ).scalars()
        )
        rest = [(vid, views, h) for vid, views, h in todo if vid not in copied]
        if rest:
            try:
                embedder = get_embedder(model)
            except (KbError, OSError, ValueError) as e:
                raise KbError(
                    f"cannot embed the new template version(s) with {model!r} ({e}); nothing was "
                    "written. Make the model available, or pass --no-embed and run "
                    f"`reasonflux embed --model {model}` later"
                ) from None
            vecs = embedder.encode_views([views for _, views, _ in rest])
            store_vectors(
                conn, model, embedder.dim, [(vid, h, vec) for (vid, _, h), vec in zip(rest, vecs)], run_id
            )
        written[model] = len(copied) + len(rest)
    return written


COPY_SAME_TEXT_SQL = sa.text(
    "INSERT INTO template_embedding (version_id, model, dim, embedding, text_hash, run_id) "
    "SELECT DISTINCT ON (x.vid) x.vid, e.model, e.dim, e.embedding, e.text_hash, :run "
    "FROM unnest(CAST(:vids AS integer[]), CAST(:hashes AS text[])) AS x(vid, h) "
    "JOIN template_embedding e ON e.model = :m AND e.text_hash = x.h AND e.version_id <> x.vid "
    "ORDER BY x.vid "
    "ON CONFLICT (version_id, model) DO UPDATE SET dim = excluded.dim, embedding = excluded.embedding, "
    "text_hash = excluded.text_hash, run_id = excluded.run_id, created_at = now() "
    "RETURNING version_id"
)


def missing_vectors_advice(counts: dict[str, int]) -> list[str]:
    """One line per model with current versions lacking vectors: the count and the command that fixes it."""
    return [
        f"{n} current template version(s) have no vector for {model!r}, so vector and hybrid search "
        f"cannot rank them: run `reasonflux embed --model {model}`"
        for model, n in counts.items()
        if n
    ]
