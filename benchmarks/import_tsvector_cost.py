"""Where the template importer's time goes: the generated full-text vector, not the GIN index.

    python benchmarks/import_tsvector_cost.py [--n 20000]

COPYs N rows of sample-sized template text (the shared ReasonFlux-v1 sample's fields, cycled, or a
built-in record when ../shared/data is absent) into four scratch tables, side by side: plain text
columns; plus a stored tsvector generated with the expression template_version uses; plus its GIN
index; plus a GIN index with fastupdate off. Rows/s for each, in one run on one throwaway database.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from demo.scratch import scratch_database
from kb.models.templates import TEMPLATE_TSV_EXPR

SAMPLE = (
    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "reasonflux_v1_templates_sample.json"
)
FALLBACK = {
    "template_name": "Telescoping sums",
    "knowledge_tag": ["series", "partial fractions"],
    "description": "Rewrite each term as a difference so that consecutive terms cancel. " * 6,
    "application_scenario": "Sums of rational terms whose denominators factor. " * 6,
    "reason_flow": [
        "Decompose the general term",
        "Write out the first terms",
        "Cancel",
        "Take the remaining terms to the limit",
    ]
    * 3,
}


def records() -> list[dict]:
    if not SAMPLE.exists():
        return [FALLBACK]
    out: list[dict] = []

    def walk(node):
        if isinstance(node, dict):
            if "template_name" in node:
                out.append(node)
                return
            node = list(node.values())
        if isinstance(node, list):
            for child in node:
                walk(child)

    walk(json.loads(SAMPLE.read_text()))
    return out


def rows(n: int) -> list[tuple]:
    recs = records()
    return [
        (
            f"{r['template_name']} {i}",
            list(r.get("knowledge_tag") or []),
            str(r.get("description") or ""),
            str(r.get("application_scenario") or ""),
            json.dumps(r.get("reason_flow") or []),
        )
        for i, r in ((i, recs[i % len(recs)]) for i in range(n))
    ]


VARIANTS = {
    "plain text columns": ("", ""),
    "+ generated tsvector": (f", search_tsv tsvector GENERATED ALWAYS AS ({TEMPLATE_TSV_EXPR}) STORED", ""),
    "+ tsvector + GIN": (
        f", search_tsv tsvector GENERATED ALWAYS AS ({TEMPLATE_TSV_EXPR}) STORED",
        "CREATE INDEX ON bench_tsv USING gin (search_tsv)",
    ),
    "+ tsvector + GIN (fastupdate off)": (
        f", search_tsv tsvector GENERATED ALWAYS AS ({TEMPLATE_TSV_EXPR}) STORED",
        "CREATE INDEX ON bench_tsv USING gin (search_tsv) WITH (fastupdate = off)",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    n = parser.parse_args().n
    data = rows(n)
    results = []
    with scratch_database("rf_bench") as db:
        raw = db.engine.raw_connection()
        try:
            cur = raw.cursor()
            for label, (column, index) in VARIANTS.items():
                cur.execute("DROP TABLE IF EXISTS bench_tsv")
                cur.execute(
                    "CREATE TABLE bench_tsv (name text, tags text[], description text, "
                    f"application_scope text, steps jsonb{column})"
                )
                if index:
                    cur.execute(index)
                raw.commit()
                t0 = time.perf_counter()
                with cur.copy(
                    "COPY bench_tsv (name, tags, description, application_scope, steps) FROM STDIN"
                ) as cp:
                    for row in data:
                        cp.write_row(row)
                raw.commit()
                results.append((label, n / (time.perf_counter() - t0)))
        finally:
            raw.close()
    base = results[0][1]
    print(
        f"COPY of {n} sample-sized template rows ({'shared sample' if SAMPLE.exists() else 'built-in record'})"
    )
    print(f"{'variant':38} {'rows/s':>10} {'vs plain':>9}")
    for label, rate in results:
        print(f"{label:38} {rate:10,.0f} {rate / base:8.2f}x")


if __name__ == "__main__":
    main()
