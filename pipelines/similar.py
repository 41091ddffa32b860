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
"""

from __future__ import annotations

from typing import Any

import numpy as np
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
PATHS = ("auto", "exact", "index")
# Largest candidate pool (problems of one split, or split and subject) for which `auto` computes
# sets exactly: at 10^5 candidates an anchor costs ~4*10^7 flops, under the index scan's cost on
# 2 cores (benchmarks/similar_sets.py); past it the per-anchor cost grows with the pool, the index's not.
EXACT_MAX_CANDIDATES = 150_000
EXACT_BLOCK = 1024  # anchors per matrix product: a 1024 x 10^5 float32 block is 400 MB


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


# Tags a problem carries: its own (extra.tags, from import) and those of the templates its trajectories use.
# Both paths end the same way: the sets (CTE `sets`, from neighbours `nn`) get their members in the same
# statement, and the statement reports what it wrote.
_MEMBERS = """, members AS (
        INSERT INTO similar_set_member (set_id, problem_id, rank, similarity)
        SELECT sets.id, nn.member_id, nn.rank, nn.similarity FROM sets JOIN nn ON nn.anchor_id = sets.anchor_problem_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM sets) AS sets, (SELECT count(*) FROM members) AS members
"""

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
        extra += (
            " AND EXISTS (SELECT 1 FROM ptags ta JOIN ptags tb ON tb.tag = ta.tag "
            "WHERE ta.problem_id = a.id AND tb.problem_id = p.id)"
        )
    # One statement per batch of anchors: a LATERAL nearest-neighbour scan per anchor (the partial
    # HNSW index on the model's vectors), then the sets and their members in the same statement.
    return f"""
    WITH {PROBLEM_TAGS if shared_tags else ""}
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
    ){_MEMBERS}"""


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
            from pipelines.problems import embed_problems

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
            sets, members = _exact_sets(db, params, dim, anchors, build_id, run_id)
        else:
            sets, members = _index_sets(db, params, dim, anchors, build_id, run_id, batch_size)
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


def _index_sets(
    db: Database, params: dict, dim: int, anchors: list[int], build_id: int, run_id: int, batch_size: int
) -> tuple[int, int]:
    """The HNSW path: one statement per batch of anchors."""
    sql = sa.text(_batch_sql(params["model"], dim, params["same_subject"], params["shared_tags"]))
    sets = members = 0
    for start in range(0, len(anchors), batch_size):
        with session_scope(db) as s:
            # Filtered HNSW scans keep going until k rows pass the filters, in exact distance order.
            s.execute(sa.text("SET LOCAL hnsw.iterative_scan = strict_order"))
            s.execute(sa.text(f"SET LOCAL hnsw.ef_search = {max(40, 4 * params['k'])}"))
            row = s.execute(
                sql,
                {
                    "ids": anchors[start : start + batch_size],
                    "k": params["k"],
                    "build_id": build_id,
                    "run_id": run_id,
                    "min_similarity": params["min_similarity"],
                    "dup_distance": 1.0 - DUPLICATE_SIMILARITY,
                },
            ).one()
        sets += row.sets
        members += row.members
    return sets, members


# ---- the exact path ----------------------------------------------------------------------------------


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


def load_vectors(db: Database, model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(problem ids, their MODEL vectors as float32 rows), ordered by id, read with one binary COPY."""
    row = np.dtype(
        [
            ("nf", ">i2"),
            ("l1", ">i4"),
            ("id", ">i4"),
            ("l2", ">i4"),
            ("dim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )
    safe = model.replace("'", "''")
    raw = db.engine.raw_connection()
    try:
        buf = bytearray()
        sql = (
            f"COPY (SELECT problem_id, embedding FROM problem_embedding WHERE model = '{safe}' "
            "ORDER BY problem_id) TO STDOUT (FORMAT BINARY)"
        )
        with raw.driver_connection.cursor() as cur, cur.copy(sql) as copy:
            for chunk in copy:
                buf += chunk
        raw.driver_connection.rollback()
    finally:
        raw.close()
    body = memoryview(buf)[19 : len(buf) - 2]  # the COPY header (no extension area) and the trailer
    rows = np.frombuffer(body, dtype=row)
    return rows["id"].astype(np.int64), rows["vec"].astype(np.float32)


def _groups(db: Database, params: dict, ids: np.ndarray) -> dict[tuple, np.ndarray]:
    """Positions (into IDS) of the candidates of each (split[, subject]); a NULL subject matches nothing."""
    with db.engine.connect() as conn:
        meta = conn.execute(
            sa.text("SELECT id, split, subject FROM problem WHERE id = ANY(:ids)"), {"ids": ids.tolist()}
        ).all()
    pos = {int(i): n for n, i in enumerate(ids)}
    groups: dict[tuple, list[int]] = {}
    for pid, split, subject in meta:
        if params["same_subject"] and subject is None:
            continue
        groups.setdefault((split, subject) if params["same_subject"] else (split,), []).append(pos[pid])
    return {g: np.array(sorted(v), dtype=np.int64) for g, v in groups.items()}


# |fp16 dot - exact dot| for unit vectors: inputs rounded to 11-bit mantissas (2 x 2^-11 by
# Cauchy-Schwarz) plus fp32 accumulation, with room to spare.
FP16_ERROR = 2e-3
PRESELECT = 32  # fp16 candidates re-scored in fp32 per anchor


def exact_neighbours(
    anchor_vecs: np.ndarray,
    anchor_ids: np.ndarray,
    cand_vecs: np.ndarray,
    cand_ids: np.ndarray,
    k: int,
    min_similarity: float,
    cand_half=None,
) -> list[list[tuple[int, float]]]:
    """Each anchor's k most similar candidates [(id, similarity)], best first (ties: lower id first),
    without itself, duplicates (similarity >= DUPLICATE_SIMILARITY) or members below MIN_SIMILARITY.

    Exact, but not by brute fp32: one fp16 matrix product (about twice the speed on CPUs with fp16
    units) preselects PRESELECT candidates per anchor, which are re-scored in fp32. A row is
    certified when its k-th exact score beats the best any unselected candidate could reach (the
    smallest preselected fp16 score + FP16_ERROR); a row that is not (or that lost too many
    candidates as self or duplicates) is recomputed over all its candidates in fp32.
    CAND_HALF: CAND_VECS as an fp16 torch tensor, when the caller reuses it across blocks.
    """
    import torch

    n = len(cand_ids)
    half = cand_half if cand_half is not None else torch.from_numpy(cand_vecs).half()
    approx = torch.from_numpy(anchor_vecs).half() @ half.T
    pre = min(max(PRESELECT, k + 8), n)
    floor, cols = torch.topk(approx, pre, dim=1)
    floor, cols = floor[:, -1].float().numpy(), cols.numpy()
    exact = np.einsum("rd,rcd->rc", anchor_vecs, cand_vecs[cols])
    out = []
    for r, anchor in enumerate(anchor_ids):
        v, c = exact[r], cols[r]
        keep = (v < DUPLICATE_SIMILARITY) & (cand_ids[c] != anchor)
        v, c = v[keep], c[keep]
        order = np.lexsort((cand_ids[c], -v))[:k]
        # An unselected candidate scores at most floor + FP16_ERROR: it can enter the answer only if
        # that reaches min_similarity and beats (or, with fewer than k, joins) what was found.
        bound = floor[r] + FP16_ERROR
        certified = bound < min_similarity or (len(order) == k and v[order[-1]] > bound)
        if pre < n and not certified:
            v = cand_vecs @ anchor_vecs[r]  # not certified: this row over every candidate, fp32
            c = np.arange(n)
            keep = (v < DUPLICATE_SIMILARITY) & (cand_ids != anchor)
            v, c = v[keep], c[keep]
            order = np.lexsort((cand_ids[c], -v))[:k]
        out.append([(int(cand_ids[c[i]]), float(v[i])) for i in order if v[i] >= min_similarity])
    return out


_WRITE_SQL = sa.text(
    """
    WITH nn AS (
        SELECT * FROM unnest(CAST(:a AS integer[]), CAST(:m AS integer[]), CAST(:r AS integer[]),
                             CAST(:s AS double precision[])) AS x(anchor_id, member_id, rank, similarity)
    ), sets AS (
        INSERT INTO similar_set (build_id, anchor_problem_id, anchor_split, size, run_id)
        SELECT :build_id, p.id, p.split, x.size, :run_id
        FROM unnest(CAST(:ids AS integer[]), CAST(:sizes AS integer[])) AS x(id, size) JOIN problem p ON p.id = x.id
        ON CONFLICT (build_id, anchor_problem_id) DO NOTHING
        RETURNING id, anchor_problem_id
    )"""
    + _MEMBERS
)


def _exact_sets(
    db: Database, params: dict, dim: int, anchors: list[int], build_id: int, run_id: int
) -> tuple[int, int]:
    """The exact path: one matrix product per block of anchors against their group's candidates."""
    ids, vecs = load_vectors(db, params["model"], dim)
    groups = _groups(db, params, ids)
    group_of = {int(ids[p]): g for g, members in groups.items() for p in members}
    pos = {int(i): n for n, i in enumerate(ids)}
    by_group: dict[tuple, list[int]] = {}
    for a in anchors:
        by_group.setdefault(group_of.get(a), []).append(a)
    import torch

    sets = members = 0
    for group, group_anchors in by_group.items():
        cand = groups.get(group, np.zeros(0, dtype=np.int64))
        cand_vecs, cand_ids = vecs[cand], ids[cand]
        cand_half = torch.from_numpy(cand_vecs).half()
        for start in range(0, len(group_anchors), EXACT_BLOCK):
            block = np.array(group_anchors[start : start + EXACT_BLOCK], dtype=np.int64)
            if len(cand):
                found = exact_neighbours(
                    vecs[[pos[a] for a in block]],
                    block,
                    cand_vecs,
                    cand_ids,
                    params["k"],
                    params["min_similarity"],
                    cand_half,
                )
            else:  # no candidates (a NULL subject under same_subject): empty sets, as the SQL path writes
                found = [[] for _ in block]
            flat = [
                (int(a), m, r, s) for a, hits in zip(block, found) for r, (m, s) in enumerate(hits, start=1)
            ]
            with session_scope(db) as s:
                row = s.execute(
                    _WRITE_SQL,
                    {
                        "a": [f[0] for f in flat],
                        "m": [f[1] for f in flat],
                        "r": [f[2] for f in flat],
                        "s": [f[3] for f in flat],
                        "ids": block.tolist(),
                        "sizes": [len(h) for h in found],
                        "build_id": build_id,
                        "run_id": run_id,
                    },
                ).one()
            sets += row.sets
            members += row.members
    return sets, members


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
    import json

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
