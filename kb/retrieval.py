"""Template retrieval: vector, full-text, hybrid (fused) and the ReasonFlux-v1 hierarchical matcher.

Search always runs over the *current* version of each template. Modes:

- ``vector``: pgvector cosine distance on the model's partial HNSW index
  (``WHERE model = 'm' ORDER BY embedding::vector(dim) <=> q``).
- ``text``: PostgreSQL full text on ``template_version.search_tsv`` (the worked
  example is not part of it). A problem statement AND-ed into one tsquery would
  never match, so the query is the OR of its words, ranked by ts_rank with the
  column's weights (name and tags over description and scope over steps),
  length-normalised.
- ``hybrid``: both candidate lists fused by weighted reciprocal rank fusion.
- ``hierarchical``: the ReasonFlux-v1 matcher, reimplemented: the best category
  name, then the two best section names in it, then the best template names in
  those sections, scored 0.9 x name similarity + 0.1 x section similarity.
"""

from __future__ import annotations

import contextlib
import re
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa

from kb import config
from kb.embeddings import get_embedder
from kb.errors import InputError, NotFound
from kb.models._common import vector_param
from kb.retrieval_modes import MODES  # apart, so CLI options list them without numpy

# Fusion: score = sum over lists of weight / (RRF_K + rank). Vector similarity
# carries the meaning; full text adds exact vocabulary a small model blurs, but
# alone it is the weaker signal, so it weighs less: its first place counts like
# a vector's fifteenth, enough to lift a template that both lists agree on.
# Chosen on one chapter of the sample and checked on the others (docs/retrieval.md).
RRF_K = 5
VECTOR_WEIGHT = 1.0
TEXT_WEIGHT = 0.3
TEXT_RANK = "ts_rank(v.search_tsv, q.q, 1)"
CANDIDATES = 50  # per list, before fusion
EF_SEARCH = 100  # HNSW candidate list; >= CANDIDATES so the index can fill the list
MAX_EF_SEARCH = 1000  # pgvector's limit; larger pools continue through the iterative scan
MAX_POOL = 20_000  # past this many ranked rows, rank the filtered rows directly

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]+")

# Current versions, joined through primary keys only (template.current_version_id has no index).
_CURRENT = "template_version v JOIN template t ON t.id = v.template_id AND t.current_version_id = v.id"
_CURRENT_OF_E = (
    "JOIN template_version v ON v.id = e.version_id "
    "JOIN template t ON t.id = v.template_id AND t.current_version_id = v.id"
)


@dataclass
class TemplateHit:
    """One ranked template (its current version)."""

    template_id: int
    version_id: int
    key: str
    name: str
    category: str
    section: str | None
    score: float
    description: str = ""
    application_scope: str = ""
    steps: list[Any] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    template_type: str | None = None
    status: str = "active"
    version_no: int = 0
    rank: int = 0
    vector_score: float | None = None
    text_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- connections


@contextlib.contextmanager
def _executor(target: Any) -> Iterator[Any]:
    """Anything with .execute (Session, Connection), or a Database/Engine to open a connection on."""
    if isinstance(target, sa.Engine):
        engine = target
    elif hasattr(target, "execute"):
        yield target
        return
    else:
        engine = target.engine
    with engine.connect() as conn:
        yield conn


# ---------------------------------------------------------------- filters


def _filter_sql(tags: Sequence[str] | None, category: str | None, status: str | None) -> tuple[str, dict]:
    conds, params = [], {}
    if status and status != "all":
        conds.append("t.status = :f_status")
        params["f_status"] = status
    if category:
        # A category, or a "category/section" path, case-insensitively.
        conds.append(
            "(lower(t.category) = lower(:f_cat) OR lower(t.category || '/' || coalesce(t.section, '')) "
            "= lower(:f_cat))"
        )
        params["f_cat"] = category.strip().strip("/")
    if tags:
        conds.append("v.tags @> CAST(:f_tags AS text[])")
        params["f_tags"] = list(tags)
    return (" AND " + " AND ".join(conds)) if conds else "", params


# ---------------------------------------------------------------- candidate lists


def _model_literal(model: str) -> str:
    # Inlined (not bound) so the planner can match the model's partial HNSW index.
    return "'" + model.replace("'", "''") + "'"


def _pooled(
    conn: Any,
    fetch,
    n: int,
    pool: int,
    filters: tuple[str, dict],
    exact,
    checked: dict[int, bool] | None = None,
) -> list[tuple[int, float]]:
    """The best N current versions passing FILTERS, from a ranked pool that grows until it has them.

    FETCH(pool) ranks one table alone (so the index, not a join, drives the plan); the
    survivors are then checked against template and the filters in one lookup. When a
    large pool still falls short (a very selective filter), EXACT() ranks the filtered
    rows directly, which is then the cheaper plan. CHECKED (version id -> passes) carries
    the lookups between the candidate lists of one search: a hybrid search over a small
    library checks its text candidates without another statement.
    """
    where, params = filters
    keep = sa.text(f"SELECT v.id FROM {_CURRENT} WHERE v.id = ANY(:ids){where}")
    checked = {} if checked is None else checked
    while pool <= MAX_POOL:
        ranked = fetch(pool)
        unknown = [vid for vid, _ in ranked if vid not in checked]
        if unknown:
            allowed = set(conn.execute(keep, {**params, "ids": unknown}).scalars())
            checked.update((vid, vid in allowed) for vid in unknown)
        kept = [(vid, score) for vid, score in ranked if checked[vid]]
        if len(kept) >= n or len(ranked) < pool:
            return kept[:n]
        pool *= 4
    return exact()[:n]


def vector_candidates(
    conn: Any,
    query_vector: Sequence[float] | np.ndarray,
    model: str,
    n: int,
    filters: tuple[str, dict] = ("", {}),
    ef_search: int | None = None,
    checked: dict[int, bool] | None = None,
) -> list[tuple[int, float]]:
    """[(version_id, cosine similarity)] best first, over current versions passing the filters."""
    dim = len(query_vector)
    ef = min(max(ef_search or EF_SEARCH, n), MAX_EF_SEARCH)
    # Transaction-local; a pool larger than ef_search continues the index scan instead of stopping short.
    conn.execute(
        sa.text(
            "SELECT set_config('hnsw.ef_search', :ef, true), "
            "set_config('hnsw.iterative_scan', 'relaxed_order', true)"
        ),
        {"ef": str(int(ef))},
    )
    distance = f"e.embedding::vector({dim}) <=> CAST(:q AS vector({dim}))"
    q = query_vector  # bound by pgvector's own type (vector_param), not formatted here
    where, params = filters

    def fetch(pool: int) -> list[tuple[int, float]]:
        rows = conn.execute(
            sa.text(
                f"SELECT e.version_id, {distance} FROM template_embedding e WHERE e.model = {_model_literal(model)} "
                f"ORDER BY {distance} LIMIT :pool"
            ).bindparams(vector_param("q")),
            {"q": q, "pool": pool},
        ).all()
        return [(int(r[0]), 1.0 - float(r[1])) for r in sorted(rows, key=lambda r: r[1])]

    def exact() -> list[tuple[int, float]]:
        rows = conn.execute(
            sa.text(
                f"SELECT e.version_id, {distance} FROM template_embedding e {_CURRENT_OF_E} "
                f"WHERE e.model = {_model_literal(model)}{where} ORDER BY 2 LIMIT :n"
            ).bindparams(vector_param("q")),
            {**params, "q": q, "n": n},
        ).all()
        return [(int(r[0]), 1.0 - float(r[1])) for r in rows]

    return _pooled(conn, fetch, n, ef, filters, exact, checked)


def normalize_query(query: str) -> str:
    """NFKC, as the embedded template text: subscripts and superscripts become plain characters."""
    return unicodedata.normalize("NFKC", query)


def text_query(query: str) -> str:
    """websearch_to_tsquery input: the OR of the query's words (stop words are dropped by PostgreSQL)."""
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(normalize_query(query))))
    return " or ".join(words)


def text_candidates(
    conn: Any,
    query: str,
    n: int,
    filters: tuple[str, dict] = ("", {}),
    checked: dict[int, bool] | None = None,
) -> list[tuple[int, float]]:
    """[(version_id, ts_rank)] best first, over current versions passing the filters."""
    q = text_query(query)
    if not q:
        return []
    where, params = filters
    tsq = "websearch_to_tsquery('english', :q)"

    def fetch(pool: int) -> list[tuple[int, float]]:
        rows = conn.execute(
            sa.text(
                f"SELECT v.id, {TEXT_RANK} AS score FROM template_version v, {tsq} AS q(q) "
                "WHERE v.search_tsv @@ q.q ORDER BY score DESC, v.id LIMIT :pool"
            ),
            {"q": q, "pool": pool},
        ).all()
        return [(int(r[0]), float(r[1])) for r in rows]

    def exact() -> list[tuple[int, float]]:
        rows = conn.execute(
            sa.text(
                f"SELECT v.id, {TEXT_RANK} AS score FROM {tsq} AS q(q), {_CURRENT} "
                f"WHERE v.search_tsv @@ q.q{where} ORDER BY score DESC, v.id LIMIT :n"
            ),
            {**params, "q": q, "n": n},
        ).all()
        return [(int(r[0]), float(r[1])) for r in rows]

    return _pooled(conn, fetch, n, 2 * n, filters, exact, checked)


def fuse(
    vector: list[tuple[int, float]],
    text: list[tuple[int, float]],
    *,
    k: int = RRF_K,
    vector_weight: float = VECTOR_WEIGHT,
    text_weight: float = TEXT_WEIGHT,
) -> list[tuple[int, float]]:
    """Weighted reciprocal rank fusion of two best-first lists."""
    scores: dict[int, float] = {}
    for weight, ranked in ((vector_weight, vector), (text_weight, text)):
        for rank, (vid, _) in enumerate(ranked, start=1):
            scores[vid] = scores.get(vid, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))


# ---------------------------------------------------------------- hierarchical (ReasonFlux-v1)

_name_cache: dict[tuple[str, str], np.ndarray] = {}
_name_lock = threading.Lock()


def _name_vectors(model: str, names: Sequence[str]) -> np.ndarray:
    """Embeddings of short names (categories, sections, template names), cached per process."""

    with _name_lock:
        missing = [n for n in dict.fromkeys(names) if (model, n) not in _name_cache]
        if missing:
            for n, v in zip(missing, get_embedder(model).encode(missing)):
                _name_cache[(model, n)] = v
        return np.stack([_name_cache[(model, n)] for n in names]) if names else np.zeros((0, 1), np.float32)


def preload_names(session_or_conn: Any, model: str | None = None) -> int:
    """Embed every current category, section and template name now (the hierarchical matcher's
    cache), so that its first searches do not pay for it; returns how many names."""
    model = config.embed_model_name(model)
    with _executor(session_or_conn) as conn:
        names = list(
            conn.execute(
                sa.text(
                    f"SELECT DISTINCT unnest(ARRAY[t.category, coalesce(t.section, t.category), v.name]) FROM {_CURRENT}"
                )
            ).scalars()
        )
    _name_vectors(model, names)
    return len(names)


def hierarchical_candidates(
    conn: Any,
    query_vector: np.ndarray,
    model: str,
    n: int,
    filters: tuple[str, dict] = ("", {}),
    sections: int = 2,
    method_weight: float = 0.9,
) -> list[tuple[int, float]]:
    """Best category, then its top SECTIONS sections, then templates: 0.9 x name + 0.1 x section."""
    where, params = filters
    q = np.asarray(query_vector, dtype=np.float32)
    categories = list(
        conn.execute(
            sa.text(f"SELECT DISTINCT t.category FROM {_CURRENT} WHERE true{where} ORDER BY 1"), params
        ).scalars()
    )
    if not categories:
        return []
    best = categories[int(np.argmax(_name_vectors(model, categories) @ q))]
    section_names = list(
        conn.execute(
            sa.text(
                f"SELECT DISTINCT coalesce(t.section, t.category) FROM {_CURRENT} "
                f"WHERE t.category = :h_cat{where} ORDER BY 1"
            ),
            {**params, "h_cat": best},
        ).scalars()
    )
    sims = _name_vectors(model, section_names) @ q
    top = {section_names[i]: float(sims[i]) for i in np.argsort(-sims)[:sections]}
    rows = conn.execute(
        sa.text(
            f"SELECT v.id, coalesce(t.section, t.category), v.name FROM {_CURRENT} "
            f"WHERE t.category = :h_cat AND coalesce(t.section, t.category) = ANY(:h_secs){where}"
        ),
        {**params, "h_cat": best, "h_secs": list(top)},
    ).all()
    name_sims = _name_vectors(model, [r[2] for r in rows]) @ q if rows else []
    scored = [
        (int(r[0]), method_weight * float(s) + (1 - method_weight) * top[r[1]])
        for r, s in zip(rows, name_sims)
    ]
    return sorted(scored, key=lambda kv: (-kv[1], kv[0]))[:n]


# ---------------------------------------------------------------- search


def _hits(
    conn: Any, ranked: list[tuple[int, float]], vector: dict[int, float], text: dict[int, float]
) -> list[TemplateHit]:
    if not ranked:
        return []
    rows = (
        conn.execute(
            sa.text(
                "SELECT t.id AS template_id, v.id AS version_id, t.key, v.name, t.category, t.section, t.status, "
                "v.version_no, v.template_type, v.description, v.application_scope, v.steps, v.tags "
                f"FROM {_CURRENT} WHERE v.id = ANY(:ids)"
            ),
            {"ids": [vid for vid, _ in ranked]},
        )
        .mappings()
        .all()
    )
    by_id = {r["version_id"]: r for r in rows}
    hits = []
    for rank, (vid, score) in enumerate(ranked, start=1):
        r = by_id.get(vid)
        if r is None:
            continue
        hits.append(
            TemplateHit(
                **dict(r),
                score=round(score, 6),
                rank=rank,
                vector_score=vector.get(vid),
                text_score=text.get(vid),
            )
        )
    return hits


def _require_vectors(conn: Any, model: str) -> None:
    """An empty vector search because nothing was embedded with MODEL is an error the user can fix."""
    if conn.execute(
        sa.text("SELECT 1 FROM template_embedding WHERE model = :m LIMIT 1"), {"m": model}
    ).first():
        return
    if conn.execute(sa.text("SELECT 1 FROM template LIMIT 1")).first():
        raise NotFound(f"no template embeddings for model {model!r}; run `reasonflux embed --model {model}`")


def search_templates(
    session_or_conn: Any,
    query: str | None = None,
    *,
    query_vector: Sequence[float] | np.ndarray | None = None,
    k: int = 5,
    mode: str = "hybrid",
    model: str | None = None,
    tags: list[str] | None = None,
    category: str | None = None,
    status: str | None = "active",
    candidates: int = CANDIDATES,
    ef_search: int | None = None,
) -> list[TemplateHit]:
    """Ranked current templates for QUERY (text), or QUERY_VECTOR (already embedded with MODEL).

    session_or_conn: a Session, Connection, Engine or kb.db.Database. status None or 'all': any status.
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}", field="mode")
    if k < 1:
        raise InputError("must be at least 1", field="k")
    if mode == "text" and not query:
        raise InputError("text search needs a query string", field="query")
    if query is None and query_vector is None:
        raise InputError("give a query or a query vector", field="query")
    model = config.embed_model_name(model)
    if mode != "text" and query_vector is None:
        query_vector = get_embedder(model, session_or_conn).encode([normalize_query(query)])[0]
    filters = _filter_sql(tags, category, status)
    n = max(candidates, k)
    with _executor(session_or_conn) as conn:
        vec: list[tuple[int, float]] = []
        txt: list[tuple[int, float]] = []
        if mode == "hierarchical":
            ranked = hierarchical_candidates(conn, np.asarray(query_vector), model, k, filters)
        else:
            checked: dict[int, bool] = {}  # the filters' verdict per version, shared by both lists
            if mode in ("vector", "hybrid"):
                vec = vector_candidates(conn, query_vector, model, n, filters, ef_search, checked)
                if not vec and mode == "vector":
                    _require_vectors(conn, model)
            if mode in ("text", "hybrid") and query:
                txt = text_candidates(conn, query, n, filters, checked)
            ranked = vec if mode == "vector" else txt if mode == "text" else fuse(vec, txt)
        return _hits(conn, ranked[:k], dict(vec), dict(txt))


def search_many(db: Any, queries: list[str], **kw: Any) -> list[list[TemplateHit]]:
    """search_templates for each query; the queries are embedded in one batch."""
    mode = kw.get("mode", "hybrid")
    vectors: list[Any] = [None] * len(queries)
    if mode != "text" and queries:
        embedder = get_embedder(config.embed_model_name(kw.get("model")), db)
        vectors = list(embedder.encode([normalize_query(q) for q in queries]))
    with _executor(db) as conn:
        return [search_templates(conn, q, query_vector=v, **kw) for q, v in zip(queries, vectors)]
