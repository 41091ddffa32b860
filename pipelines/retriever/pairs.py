"""(query, template) pairs drawn from the KB, with hard negatives from the current index, as a dataset version.

Four sources, each switched on by a weight above 0:

- ``examples``: a template's worked example problem -> the template;
- ``mining``: a problem named in a mined version's provenance -> that template;
- ``solve_steps``: a solve round whose step the navigator accepted -> the template it used, queried
  the way the solver queries (template phrase, then the step text);
- ``trajectories``: a trajectory step whose trajectory's reward is at least ``min_reward`` -> the
  step's template (step text, then the plan's abstraction).

Problems of the test split never give pairs (the same rule as everywhere: test never trains). A
chapter (template category) can be excluded whole, which is how leave-one-chapter-out keeps an
evaluated chapter's pairs out of training. The positive is always the template's current version,
the one retrieval ranks; its text is what the embed stage embeds (never its worked example).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from kb import config
from kb.dataset_write import write_dataset
from kb.datasets import DATA_DIR, DataPart, ExportSpec
from kb.db import Database
from kb.embeddings import get_embedder
from kb.errors import InputError
from kb.retrieval import normalize_query
from kb.template_vectors import template_views

KIND = "retriever-pairs"
SOURCES = ("examples", "mining", "solve_steps", "trajectories")
DEFAULT_WEIGHTS = {"examples": 1.0, "mining": 1.0, "solve_steps": 1.0, "trajectories": 1.0}

_SOURCE_SQL = {
    "examples": """
        SELECT ct.example_problem AS query, ct.template_id, 'template_version:' || ct.version_id AS source_ref
        FROM current_template ct WHERE coalesce(ct.example_problem, '') <> ''""",
    "mining": """
        SELECT DISTINCT p.text AS query, v.template_id, 'problem:' || p.id AS source_ref
        FROM template_version v
        CROSS JOIN LATERAL jsonb_array_elements_text(
            CASE WHEN jsonb_typeof(v.provenance->'problems') = 'array' THEN v.provenance->'problems'
                 ELSE '[]'::jsonb END) AS pp(pid)
        JOIN problem p ON p.id = pp.pid::int
        WHERE v.source_kind = 'run' AND pp.pid ~ '^[0-9]+$' AND p.split <> 'test'""",
    "solve_steps": """
        SELECT coalesce(r.adjustment->>'query', '') || '. ' || coalesce(r.step_text, '') AS query,
               (r.adjustment->'template'->>'template_id')::int AS template_id,
               'session:' || r.session_id || '/round:' || r.round_no AS source_ref
        FROM solve_round r JOIN solve_session s ON s.id = r.session_id
        LEFT JOIN problem p ON p.id = s.problem_id
        WHERE r.kind = 'step' AND r.adjustment->>'outcome' = 'accepted'
          AND r.adjustment->'template'->>'template_id' ~ '^[0-9]+$' AND coalesce(p.split, '') <> 'test'""",
    "trajectories": """
        SELECT st.text || coalesce('. ' || nullif(tr.abstraction, ''), '') AS query, v.template_id,
               'trajectory:' || tr.id || '/step:' || st.position AS source_ref
        FROM trajectory_step st JOIN trajectory tr ON tr.id = st.trajectory_id
        JOIN trajectory_reward rw ON rw.trajectory_id = tr.id
        JOIN template_version v ON v.id = st.template_version_id
        JOIN problem p ON p.id = tr.problem_id
        WHERE rw.reward >= :min_reward AND p.split <> 'test'""",
}


def parse_weights(spec: str | dict | None) -> dict[str, float]:
    """`examples=1,mining=0.5` (unnamed sources keep their default weight; 0 switches one off)."""
    if isinstance(spec, dict):
        items = list(spec.items())
    else:
        items = []
        for part in (spec or "").split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise InputError(f"{part.strip()!r} is not SOURCE=WEIGHT", field="--sources")
            items.append((name.strip(), value.strip()))
    weights = dict(DEFAULT_WEIGHTS)
    for name, value in items:
        if name not in SOURCES:
            raise InputError(f"unknown source {name!r}; choose from {', '.join(SOURCES)}", field="--sources")
        try:
            weights[name] = float(value)
        except ValueError:
            raise InputError(f"weight of {name} must be a number, not {value!r}", field="--sources") from None
        if not 0 <= weights[name] <= 100:
            raise InputError(f"weight of {name} must be between 0 and 100", field="--sources")
    if not any(weights.values()):
        raise InputError("every source is switched off", field="--sources")
    return weights


def pair_params(
    *,
    weights: str | dict | None = None,
    min_reward: float = 0.5,
    exclude_categories: list[str] | None = None,
    hard_negatives: int = 1,
    negatives_model: str | None = None,
) -> dict[str, Any]:
    if hard_negatives < 0:
        raise InputError("must be 0 or more", field="--hard-negatives")
    return {
        "sources": parse_weights(weights),
        "min_reward": float(min_reward),
        "exclude_categories": sorted(set(exclude_categories or [])),
        "hard_negatives": int(hard_negatives),
        "negatives_model": config.embed_model_name(negatives_model),
    }


def library(conn) -> list[dict[str, Any]]:
    """Every current template with the texts the embed stage embeds."""
    rows = conn.execute(
        sa.text(
            "SELECT template_id, version_id, key, category, name, tags, description, "
            "application_scope, steps FROM current_template WHERE status = 'active' ORDER BY template_id"
        )
    ).mappings()
    return [
        {
            "template_id": r["template_id"],
            "version_id": r["version_id"],
            "key": r["key"],
            "category": r["category"],
            "views": template_views(
                r["name"], r["tags"], r["description"], r["application_scope"], r["steps"]
            ),
        }
        for r in rows
    ]


def collect_pairs(conn, params: dict[str, Any]) -> list[dict[str, Any]]:
    """The selected pairs, in a stable order, each with its template's chapter and source weight."""
    out: list[dict[str, Any]] = []
    for source in SOURCES:
        weight = params["sources"][source]
        if weight <= 0:
            continue
        rows = conn.execute(
            sa.text(
                f"SELECT x.query, x.template_id, x.source_ref, t.key, t.category FROM ({_SOURCE_SQL[source]}) x "
                "JOIN template t ON t.id = x.template_id AND t.status = 'active' "
                "WHERE NOT (t.category = ANY(:excluded)) AND coalesce(x.query, '') <> '' "
                "ORDER BY x.source_ref, x.template_id"
            ),
            {"min_reward": params["min_reward"], "excluded": params["exclude_categories"]},
        ).mappings()
        out += [
            {
                "query": normalize_query(r["query"]).strip(),
                "template_id": r["template_id"],
                "template_key": r["key"],
                "category": r["category"],
                "source": source,
                "source_ref": r["source_ref"],
                "weight": weight,
            }
            for r in rows
        ]
    return out


def add_hard_negatives(pairs: list[dict], templates: list[dict], params: dict, db: Database) -> None:
    """Each pair's N best-ranked wrong templates by the current index's model (exact cosine over it)."""
    n = params["hard_negatives"]
    for p in pairs:
        p["negative_template_ids"] = []
    if n == 0 or not pairs:
        return

    embedder = get_embedder(params["negatives_model"], db)
    with db.engine.connect() as conn:
        stored = dict(
            conn.execute(
                sa.text(
                    "SELECT e.version_id, e.embedding::real[] FROM template_embedding e WHERE e.model = :m "
                    "AND e.version_id = ANY(:ids)"
                ),
                {"m": embedder.name, "ids": [t["version_id"] for t in templates]},
            ).all()
        )
    missing = [t for t in templates if t["version_id"] not in stored]
    if missing:
        raise InputError(
            f"{len(missing)} current templates have no {embedder.name!r} vector, so the index "
            f"cannot give hard negatives; run `reasonflux embed --model {embedder.name} --what "
            "templates` first",
            field="--hard-negatives",
        )
    # An excluded chapter gives no negatives either: none of its text reaches training.
    templates = [t for t in templates if t["category"] not in params["exclude_categories"]]
    ids = np.array([t["template_id"] for t in templates])
    matrix = np.stack([np.asarray(stored[t["version_id"]], dtype=np.float32) for t in templates])
    queries = embedder.encode([p["query"] for p in pairs])
    order = np.argsort(-(queries @ matrix.T), axis=1, kind="stable")
    for p, row in zip(pairs, order):
        ranked = ids[row]
        p["negative_template_ids"] = [int(t) for t in ranked[ranked != p["template_id"]][:n]]


PAIR_SCHEMA = pa.schema(
    [
        ("query", pa.string()),
        ("template_id", pa.int64()),
        ("template_key", pa.string()),
        ("category", pa.string()),
        ("source", pa.string()),
        ("source_ref", pa.string()),
        ("weight", pa.float64()),
        ("negative_template_ids", pa.list_(pa.int64())),
    ]
)
TEMPLATE_SCHEMA = pa.schema(
    [
        ("template_id", pa.int64()),
        ("version_id", pa.int64()),
        ("key", pa.string()),
        ("category", pa.string()),
        ("views", pa.list_(pa.string())),
    ]
)


def build_pairs(db: Database, params: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """(pairs, the templates they and their negatives refer to) for these parameters."""
    with db.engine.connect() as conn:
        templates = library(conn)
        pairs = collect_pairs(conn, params)
    add_hard_negatives(pairs, templates, params, db)
    used = {p["template_id"] for p in pairs} | {n for p in pairs for n in p["negative_template_ids"]}
    return pairs, [t for t in templates if t["template_id"] in used]


def export_pairs(db: Database, out_dir: str | Path, *, run_id: int | None = None, **options: Any) -> dict:
    """Write the pairs as a dataset version (Parquet + manifest); returns the manifest."""
    params = pair_params(**options)
    pairs, templates = build_pairs(db, params)
    if not pairs:
        raise InputError(
            "the selection gives no (query, template) pairs: no worked examples, mined problems, "
            "accepted solve steps or rewarded trajectory steps outside the excluded chapters",
            field="--sources",
        )
    counts = {s: sum(1 for p in pairs if p["source"] == s) for s in SOURCES}
    spec = ExportSpec(
        kind=KIND,
        params=params,
        parts=[
            DataPart(
                "pairs",
                pa.Table.from_pylist(pairs, schema=PAIR_SCHEMA),
                description="One (query, template) pair per row: the query text, the positive template "
                "(its current version), the chapter, the source and its weight, and the "
                "template ids the current index ranks highest without being the positive.",
                split="pairs",
            ),
            DataPart(
                "templates",
                pa.Table.from_pylist(templates, schema=TEMPLATE_SCHEMA),
                description="The current version of every template the pairs name (as positive or "
                "negative) and the texts the embed stage embeds for it (never the worked example).",
                split="templates",
            ),
        ],
        card_intro="Training pairs for a template retriever (`reasonflux retriever train`).",
        extra_manifest={"pairs_by_source": counts},
    )
    return write_dataset(db, spec, out_dir, run_id=run_id)


def read_pairs(folder: str | Path) -> tuple[list[dict], dict[int, dict]]:
    """(pairs, templates by id) from an exported version folder."""

    data = Path(folder) / DATA_DIR  # one file per part, named by the part (kb.datasets.data_file)
    pairs = pq.read_table(data / "pairs.parquet").to_pylist()
    templates = {t["template_id"]: t for t in pq.read_table(data / "templates.parquet").to_pylist()}
    return pairs, templates
