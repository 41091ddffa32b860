"""Similar-problem sets: for each anchor problem, its k nearest problems by embedding.

A build is a (method, parameters) pair identified by the hash of its parameters.
Rebuilding with the same parameters only fills in anchors that have no set yet
(usually nothing); other parameters make a new build, never overwriting one.
Members always come from the anchor's split, so a train anchor never sees a test
problem; test anchors keep anchor_split='test' and are never used to train.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb import config
from kb.datasets import params_hash
from kb.db import Database, session_scope
from kb.errors import InputError, NotFound
from kb.runs import pipeline_run
from pipelines.selection import PROBLEM_KEYS, Selection, parse_selection, select_problem_ids

METHOD = "embedding-knn"
# Cosine similarity at or above this is the same problem written twice, not a similar one.
DUPLICATE_SIMILARITY = 0.9999


def parse_anchors(spec: str | None) -> dict[str, Any]:
    """The anchor selection (the selection language of pipelines.selection), normalised for the params."""
    return parse_selection(spec, PROBLEM_KEYS, option="--anchors").to_dict()


def _model_dim(conn, model: str) -> int | None:
    dims = conn.execute(sa.text("SELECT DISTINCT dim FROM problem_embedding WHERE model = :m"),
                        {"m": model}).scalars().all()
    if len(dims) > 1:
        raise InputError(f"embeddings of model {model!r} have several dimensions {sorted(dims)}", field="--model")
    return dims[0] if dims else None


# Tags a problem carries: its own (extra.tags, from import) and those of the templates its trajectories use.
PROBLEM_TAGS = """
    ptags AS (
        SELECT p.id AS problem_id, t.tag FROM problem p,
            jsonb_array_elements_text(CASE WHEN jsonb_typeof(p.extra->'tags') = 'array'
                                           THEN p.extra->'tags' ELSE '[]'::jsonb END) AS t(tag)
        UNION
        SELECT tr.problem_id, unnest(v.tags) FROM trajectory tr
        JOIN trajectory_step st ON st.trajectory_id = tr.id
        JOIN template_version v ON v.id = st.template_version_id
    ),"""


def _batch_sql(model: str, dim: int, same_subject: bool, shared_tags: bool) -> str:
    m = model.replace("'", "''")
    vec = f"::vector({int(dim)})"
    dist = f"e.embedding{vec} <=> ea.embedding{vec}"
    extra = ""
    if same_subject:
        extra += " AND p.subject = a.subject"
    if shared_tags:
        extra += (" AND EXISTS (SELECT 1 FROM ptags ta JOIN ptags tb ON tb.tag = ta.tag "
                  "WHERE ta.problem_id = a.id AND tb.problem_id = p.id)")
    # One statement per batch of anchors: a LATERAL nearest-neighbour scan per anchor (the partial
    # HNSW index on the model's vectors), then the sets and their members in the same statement.
    return f"""
    WITH {PROBLEM_TAGS if shared_tags else ''}
    nn AS (
        SELECT a.id AS anchor_id, x.id AS member_id, 1 - x.dist AS similarity,
               row_number() OVER (PARTITION BY a.id ORDER BY x.dist, x.id) AS rank
        FROM problem a
        JOIN problem_embedding ea ON ea.problem_id = a.id AND ea.model = '{m}'
        CROSS JOIN LATERAL (
            SELECT p.id, {dist} AS dist
            FROM problem_embedding e JOIN problem p ON p.id = e.problem_id
            WHERE e.model = '{m}' AND p.id <> a.id AND p.split = a.split
              AND {dist} > :dup_distance{extra}
            ORDER BY {dist}
            LIMIT :k
        ) x
        WHERE a.id = ANY(:ids) AND 1 - x.dist >= :min_similarity
    ), sets AS (
        INSERT INTO similar_set (build_id, anchor_problem_id, anchor_split, size, run_id)
        SELECT :build_id, a.id, a.split, (SELECT count(*) FROM nn WHERE nn.anchor_id = a.id), :run_id
        FROM problem a WHERE a.id = ANY(:ids)
        ON CONFLICT (build_id, anchor_problem_id) DO NOTHING
        RETURNING id, anchor_problem_id
    ), members AS (
        INSERT INTO similar_set_member (set_id, problem_id, rank, similarity)
        SELECT sets.id, nn.member_id, nn.rank, nn.similarity FROM sets JOIN nn ON nn.anchor_id = sets.anchor_problem_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM sets) AS sets, (SELECT count(*) FROM members) AS members
    """


def build_params(*, k: int = 8, min_similarity: float = 0.5, same_subject: bool = False,
                 shared_tags: bool = False, anchors: str | dict | None = None,
                 model: str | None = None) -> dict[str, Any]:
    if k < 1:
        raise InputError("must be at least 1", field="--k")
    if not -1.0 <= min_similarity <= 1.0:
        raise InputError("must be between -1 and 1", field="--min-similarity")
    selection = anchors if isinstance(anchors, dict) else parse_anchors(anchors)
    return {"method": METHOD, "model": config.embed_model_name(model), "k": int(k),
            "min_similarity": float(min_similarity), "same_subject": bool(same_subject),
            "shared_tags": bool(shared_tags), "anchors": selection, "duplicate_similarity": DUPLICATE_SIMILARITY}


def build_similar_sets(db: Database, *, batch_size: int = 256, embed_missing: bool = True,
                       **options: Any) -> dict[str, Any]:
    """Make (or complete) the build for these parameters; returns its id and what was written."""
    params = build_params(**options)
    phash = params_hash(params)
    with pipeline_run(db, "similar", params) as (run_id, counts):
        if embed_missing:
            from pipelines.problems import embed_problems

            with db.engine.connect() as conn:
                missing = conn.execute(sa.text(
                    "SELECT count(*) FROM problem p WHERE NOT EXISTS (SELECT 1 FROM problem_embedding e "
                    "WHERE e.problem_id = p.id AND e.model = :m)"), {"m": params["model"]}).scalar()
            if missing:
                counts["embedded"] = embed_problems(db, model=params["model"], run_id=run_id)
        with db.engine.connect() as conn:
            dim = _model_dim(conn, params["model"])
        if dim is None:
            raise InputError(f"no problem has an embedding of model {params['model']!r}; import or embed problems "
                             "first", field="--model")
        build_id, created = _get_or_create_build(db, params, phash, run_id)
        with db.engine.connect() as conn:
            selected = select_problem_ids(conn, Selection("anchors", params["anchors"]))
            anchors = conn.execute(sa.text(
                "SELECT a.id FROM problem a JOIN problem_embedding ea ON ea.problem_id = a.id AND ea.model = :m "
                "WHERE a.id = ANY(:ids) AND NOT EXISTS "
                "(SELECT 1 FROM similar_set s WHERE s.build_id = :b AND s.anchor_problem_id = a.id) ORDER BY a.id"),
                {"m": params["model"], "b": build_id, "ids": selected}).scalars().all()
        sql = sa.text(_batch_sql(params["model"], dim, params["same_subject"], params["shared_tags"]))
        sets = members = 0
        for start in range(0, len(anchors), batch_size):
            with session_scope(db) as s:
                # Filtered HNSW scans keep going until k rows pass the filters, in exact distance order.
                s.execute(sa.text("SET LOCAL hnsw.iterative_scan = strict_order"))
                s.execute(sa.text(f"SET LOCAL hnsw.ef_search = {max(40, 4 * params['k'])}"))
                row = s.execute(sql, {
                    "ids": anchors[start:start + batch_size], "k": params["k"], "build_id": build_id,
                    "run_id": run_id, "min_similarity": params["min_similarity"],
                    "dup_distance": 1.0 - DUPLICATE_SIMILARITY,
                }).one()
            sets += row.sets
            members += row.members
        counts.update(build_id=build_id, new_build=created, sets=sets, members=members)
    return {"build_id": build_id, "params_hash": phash, "new_build": created, "sets": sets, "members": members,
            "run_id": run_id}


def _get_or_create_build(db: Database, params: dict, phash: str, run_id: int) -> tuple[int, bool]:
    with db.engine.begin() as conn:
        new_id = conn.execute(sa.text(
            "INSERT INTO similar_build (method, params, params_hash, run_id) "
            "VALUES (:method, CAST(:params AS jsonb), :h, :run) ON CONFLICT (params_hash) DO NOTHING RETURNING id"),
            {"method": params["method"], "params": _json(params), "h": phash, "run": run_id}).scalar()
        if new_id is not None:
            return new_id, True
        return conn.execute(sa.text("SELECT id FROM similar_build WHERE params_hash = :h"), {"h": phash}).scalar(), False


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)


# ---- reading -----------------------------------------------------------------------------------------

def list_builds(session) -> list[dict[str, Any]]:
    rows = session.execute(sa.text(
        "SELECT b.id, b.method, b.params_hash, b.params, b.run_id, b.created_at, "
        "count(s.id) AS sets, coalesce(sum(s.size), 0) AS members "
        "FROM similar_build b LEFT JOIN similar_set s ON s.build_id = b.id GROUP BY b.id ORDER BY b.id")).mappings()
    return [dict(r) for r in rows]


def show_set(session, anchor_id: int, build_id: int | None = None) -> dict[str, Any]:
    """The anchor's set in BUILD (default: the newest build that has one), with its members."""
    s = session.execute(sa.text(
        "SELECT s.id AS set_id, s.build_id, s.anchor_problem_id, s.anchor_split, s.size, s.run_id, b.params "
        "FROM similar_set s JOIN similar_build b ON b.id = s.build_id "
        "WHERE s.anchor_problem_id = :a AND (CAST(:b AS int) IS NULL OR s.build_id = :b) "
        "ORDER BY s.build_id DESC LIMIT 1"), {"a": anchor_id, "b": build_id}).mappings().first()
    if s is None:
        raise NotFound(f"problem {anchor_id} has no similar set" + (f" in build {build_id}" if build_id else ""))
    members = session.execute(sa.text(
        "SELECT m.rank, m.problem_id, m.similarity, p.split, p.subject, left(p.text, 120) AS text "
        "FROM similar_set_member m JOIN problem p ON p.id = m.problem_id WHERE m.set_id = :s ORDER BY m.rank"),
        {"s": s["set_id"]}).mappings()
    return {**dict(s), "members": [dict(m) for m in members]}
