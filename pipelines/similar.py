"""Similar-problem sets: for each anchor problem, its k nearest problems by embedding.

A build is a (method, parameters) pair identified by the hash of its parameters.
Rebuilding with the same parameters only fills in anchors that have no set yet
(usually nothing); other parameters make a new build, never overwriting one.
Members always come from the anchor's split, so a train anchor never sees a test
problem; test anchors keep anchor_split='test' and are never used to train.

Two ways to compute the same sets (the way is not a parameter: both give the same
members, ranks and build):

- ``index``: one SQL statement per batch of anchors, a nearest-neighbour scan of the
  model's partial HNSW index per anchor (approximate, like any HNSW search);
- ``exact``: the candidate vectors read once (binary COPY), then one matrix product
  per block of anchors against the candidates of their split (and subject), top k
  by numpy, and the sets written per block. Exact, and faster while the pool is
  small enough for anchors x candidates products to be cheap (benchmarks/similar_sets.py).

``auto`` (the default) takes the exact path when the filters allow it (not
``shared_tags``) and the largest candidate pool is at most EXACT_MAX_CANDIDATES.
The index path is `pipelines.similar_index`, the exact path `pipelines.similar_exact`.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from kb import config
from kb.datasets import params_hash
from kb.db import Database
from kb.errors import InputError, NotFound
from kb.runs import pipeline_run
from pipelines.problems import embed_problems
from pipelines.selection import PROBLEM_KEYS, Selection, parse_selection, select_problem_ids
from pipelines.similar_exact import exact_sets
from pipelines.similar_index import DUPLICATE_SIMILARITY, index_sets

METHOD = "embedding-knn"

PATHS = ("auto", "exact", "index")
# Largest candidate pool (problems of one split, or split and subject) for which `auto` computes
# sets exactly: at 10^5 candidates an anchor costs ~4*10^7 flops, under the index scan's cost on
# 2 cores (benchmarks/similar_sets.py); past it the per-anchor cost grows with the pool, the index's not.
EXACT_MAX_CANDIDATES = 150_000


def parse_anchors(spec: str | None) -> dict[str, Any]:
    """The anchor selection (the selection language of pipelines.selection), normalised for the params."""
    return parse_selection(spec, PROBLEM_KEYS, option="--anchors").to_dict()


def _model_dim(conn, model: str) -> int | None:
    dims = (
        conn.execute(sa.text("SELECT DISTINCT dim FROM problem_embedding WHERE model = :m"), {"m": model})
        .scalars()
        .all()
    )
    if len(dims) > 1:
        raise InputError(
            f"embeddings of model {model!r} have several dimensions {sorted(dims)}", field="--model"
        )
    return dims[0] if dims else None


def build_params(
    *,
    k: int = 8,
    min_similarity: float = 0.5,
    same_subject: bool = False,
    shared_tags: bool = False,
    anchors: str | dict | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    if k < 1:
        raise InputError("must be at least 1", field="--k")
    if not -1.0 <= min_similarity <= 1.0:
        raise InputError("must be between -1 and 1", field="--min-similarity")
    selection = anchors if isinstance(anchors, dict) else parse_anchors(anchors)
    return {
        "method": METHOD,
        "model": config.embed_model_name(model),
        "k": int(k),
        "min_similarity": float(min_similarity),
        "same_subject": bool(same_subject),
        "shared_tags": bool(shared_tags),
        "anchors": selection,
        "duplicate_similarity": DUPLICATE_SIMILARITY,
    }


def build_similar_sets(
    db: Database, *, batch_size: int = 256, embed_missing: bool = True, path: str = "auto", **options: Any
) -> dict[str, Any]:
    """Make (or complete) the build for these parameters; returns its id and what was written.

    PATH: "exact", "index" or "auto" (see the module's docstring); the result names the one taken.
    """
    if path not in PATHS:
        raise InputError(f"unknown path {path!r}; choose one of {', '.join(PATHS)}", field="--path")
    params = build_params(**options)
    phash = params_hash(params)
    with pipeline_run(db, "similar", params) as (run_id, counts):
        if embed_missing:
            with db.engine.connect() as conn:
                missing = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM problem p WHERE NOT EXISTS (SELECT 1 FROM problem_embedding e "
                        "WHERE e.problem_id = p.id AND e.model = :m)"
                    ),
                    {"m": params["model"]},
                ).scalar()
            if missing:
                counts["embedded"] = embed_problems(db, model=params["model"], run_id=run_id)
        with db.engine.connect() as conn:
            dim = _model_dim(conn, params["model"])
        if dim is None:
            raise InputError(
                f"no problem has an embedding of model {params['model']!r}; import or embed problems first",
                field="--model",
            )
        build_id, created = _get_or_create_build(db, params, phash, run_id)
        with db.engine.connect() as conn:
            selected = select_problem_ids(conn, Selection("anchors", params["anchors"]))
            anchors = (
                conn.execute(
                    sa.text(
                        "SELECT a.id FROM problem a JOIN problem_embedding ea ON ea.problem_id = a.id AND ea.model = :m "
                        "WHERE a.id = ANY(:ids) AND NOT EXISTS "
                        "(SELECT 1 FROM similar_set s WHERE s.build_id = :b AND s.anchor_problem_id = a.id) ORDER BY a.id"
                    ),
                    {"m": params["model"], "b": build_id, "ids": selected},
                )
                .scalars()
                .all()
            )
        taken = _choose_path(db, params, path) if anchors else "index"
        if taken == "exact":
            sets, members = exact_sets(db, params, dim, anchors, build_id, run_id)
        else:
            sets, members = index_sets(db, params, dim, anchors, build_id, run_id, batch_size)
        counts.update(build_id=build_id, new_build=created, sets=sets, members=members, path=taken)
    return {
        "build_id": build_id,
        "params_hash": phash,
        "new_build": created,
        "sets": sets,
        "members": members,
        "run_id": run_id,
        "path": taken,
    }


def _pool_sizes(conn, params: dict) -> int:
    """The largest candidate pool: problems with a vector, per split (and subject when it must match)."""
    group = "p.split, p.subject" if params["same_subject"] else "p.split"
    return conn.execute(
        sa.text(
            f"SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM problem p JOIN problem_embedding e "
            f"ON e.problem_id = p.id AND e.model = :m GROUP BY {group}) g"
        ),
        {"m": params["model"]},
    ).scalar()


def _choose_path(db: Database, params: dict, path: str) -> str:
    if path == "exact" and params["shared_tags"]:
        raise InputError(
            "the exact path does not filter by shared tags; use --path index or auto", field="--path"
        )
    if path != "auto":
        return path
    if params["shared_tags"]:
        return "index"
    with db.engine.connect() as conn:
        return "exact" if _pool_sizes(conn, params) <= EXACT_MAX_CANDIDATES else "index"


def _get_or_create_build(db: Database, params: dict, phash: str, run_id: int) -> tuple[int, bool]:
    with db.engine.begin() as conn:
        new_id = conn.execute(
            sa.text(
                "INSERT INTO similar_build (method, params, params_hash, run_id) "
                "VALUES (:method, CAST(:params AS jsonb), :h, :run) ON CONFLICT (params_hash) DO NOTHING RETURNING id"
            ),
            {"method": params["method"], "params": _json(params), "h": phash, "run": run_id},
        ).scalar()
        if new_id is not None:
            return new_id, True
        return conn.execute(
            sa.text("SELECT id FROM similar_build WHERE params_hash = :h"), {"h": phash}
        ).scalar(), False


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


# ---- reading -----------------------------------------------------------------------------------------


def list_builds(session) -> list[dict[str, Any]]:
    rows = session.execute(
        sa.text(
            "SELECT b.id, b.method, b.params_hash, b.params, b.run_id, b.created_at, "
            "count(s.id) AS sets, coalesce(sum(s.size), 0) AS members "
            "FROM similar_build b LEFT JOIN similar_set s ON s.build_id = b.id GROUP BY b.id ORDER BY b.id"
        )
    ).mappings()
    return [dict(r) for r in rows]


def show_set(session, anchor_id: int, build_id: int | None = None) -> dict[str, Any]:
    """The anchor's set in BUILD (default: the newest build that has one), with its members."""
    s = (
        session.execute(
            sa.text(
                "SELECT s.id AS set_id, s.build_id, s.anchor_problem_id, s.anchor_split, s.size, s.run_id, b.params "
                "FROM similar_set s JOIN similar_build b ON b.id = s.build_id "
                "WHERE s.anchor_problem_id = :a AND (CAST(:b AS int) IS NULL OR s.build_id = :b) "
                "ORDER BY s.build_id DESC LIMIT 1"
            ),
            {"a": anchor_id, "b": build_id},
        )
        .mappings()
        .first()
    )
    if s is None:
        raise NotFound(
            f"problem {anchor_id} has no similar set" + (f" in build {build_id}" if build_id else "")
        )
    members = session.execute(
        sa.text(
            "SELECT m.rank, m.problem_id, m.similarity, p.split, p.subject, left(p.text, 120) AS text "
            "FROM similar_set_member m JOIN problem p ON p.id = m.problem_id WHERE m.set_id = :s ORDER BY m.rank"
        ),
        {"s": s["set_id"]},
    ).mappings()
    return {**dict(s), "members": [dict(m) for m in members]}
