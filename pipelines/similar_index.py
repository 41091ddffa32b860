"""The index path of similar-set building: one SQL statement per batch of anchors, a nearest-neighbour scan of
the model's partial HNSW index per anchor. Its statement is the reference definition of a set (same split,
optionally same subject or a shared tag, no duplicates, at least min_similarity); the exact path
(`pipelines.similar_exact`) computes the same sets and ends its statement the same way (MEMBERS_SQL).
"""

from __future__ import annotations

import sqlalchemy as sa

from kb.db import Database, session_scope

# Cosine similarity at or above this is the same problem written twice, not a similar one.
DUPLICATE_SIMILARITY = 0.9999


# Both paths end the same way: the sets (CTE `sets`, from neighbours `nn`) get their members in the same
# statement, and the statement reports what it wrote.
MEMBERS_SQL = """, members AS (
        INSERT INTO similar_set_member (set_id, problem_id, rank, similarity)
        SELECT sets.id, nn.member_id, nn.rank, nn.similarity FROM sets JOIN nn ON nn.anchor_id = sets.anchor_problem_id
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM sets) AS sets, (SELECT count(*) FROM members) AS members
"""

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
    ){MEMBERS_SQL}"""


def index_sets(
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
