"""Bulk template import speed (no embeddings): the set-based path against per-template upserts.

    python benchmarks/import_templates.py [--n 20000] [--baseline-n 1000]

Templates are synthetic variations of the shared ReasonFlux-v1 sample (or of a
built-in record when ../shared/data is absent), written as a JSONL file and
imported through `pipelines.import_templates.import_file` into a throwaway
database on a temporary embedded server (or on DATABASE_URL, in a database it
creates and drops). Figures: first import, re-import (nothing changes), and an
import where 10% of the templates changed; the baseline is
`kb.templates.upsert_template` called once per template.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.scratch import scratch_database
from kb import templates as T
from kb.db import session_scope
from kb.template_jsonl import template_record
from pipelines.import_templates import import_file, read_reasonflux_v1

SAMPLE = ROOT.parent / "shared" / "data" / "reasonflux_v1_templates_sample.json"


def base_specs() -> list[T.TemplateSpec]:
    if SAMPLE.exists():
        return [r.spec for r in read_reasonflux_v1(SAMPLE)]
    return [
        T.TemplateSpec(
            name="Sum of terms",
            category="Sequences",
            section="Arithmetic",
            tags=["sum"],
            description="Pair the first and last terms." * 5,
            steps=["Step"] * 5,
            example_problem="Find S_10.",
            example_solution="S_10 = 100" * 20,
        )
    ]


def synthetic_records(n: int, variant: str = "", compact: bool = False) -> list[dict]:
    """N distinct templates; compact ones keep only short text (no worked example, no source extras)."""
    base = base_specs()
    records = []
    for i in range(n):
        spec = base[i % len(base)]
        d = spec.to_dict() | {"status": "active"}
        if compact:
            d |= {
                "description": d["description"][:200],
                "application_scope": d["application_scope"][:200],
                "steps": [str(x)[:80] for x in d["steps"][:3]],
                "example_problem": None,
                "example_solution": None,
                "example_answer": None,
                "extra": {},
            }
        d["category"] = f"{spec.category} {i // 1000}"
        d["name"] = f"{spec.name} #{i}"
        d.pop("key")
        if variant and i % 10 == 0:
            d["description"] = f"{d['description']} ({variant})"
        records.append(d)
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20000, help="templates in the bulk file")
    parser.add_argument("--baseline-n", type=int, default=1000, help="templates for the per-row baseline")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rf-bench-files-"))
    first = write_jsonl(work / "first.jsonl", synthetic_records(args.n))
    changed = write_jsonl(work / "changed.jsonl", synthetic_records(args.n, variant="revised"))
    compact = write_jsonl(work / "compact.jsonl", synthetic_records(args.n, compact=True))
    print(
        f"templates: {args.n} (file {first.stat().st_size / 1e6:.1f} MB; compact file "
        f"{compact.stat().st_size / 1e6:.1f} MB), per-row baseline: {args.baseline_n}"
    )
    with scratch_database("rf_bench") as db:
        r1, t1 = timed(lambda: import_file(db, first, "jsonl", embed=False))
        r2, t2 = timed(lambda: import_file(db, first, "jsonl", embed=False))
        r3, t3 = timed(lambda: import_file(db, changed, "jsonl", embed=False))
        assert r1.counts["created"] == args.n and r2.counts["unchanged"] == args.n
        assert r3.counts["updated"] == (args.n + 9) // 10
        with db.engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar()
        with session_scope(db) as s:
            exported = [template_record(t, v) for t, v in T.list_templates(s, limit=3)]
        assert exported, "nothing to export"
    with scratch_database("rf_bench") as db:
        r4, t4 = timed(lambda: import_file(db, compact, "jsonl", embed=False))
        assert r4.counts["created"] == args.n
    with scratch_database("rf_bench") as db:
        specs = [
            T.TemplateSpec.from_dict({k: v for k, v in r.items() if k != "status"})
            for r in synthetic_records(args.baseline_n)
        ]

        def per_row():
            with session_scope(db) as s:
                for spec in specs:
                    T.upsert_template(s, spec, source_kind="file")

        _, tb = timed(per_row)
    bulk_rate, base_rate = args.n / t1, args.baseline_n / tb
    print(f"{'':32}{'seconds':>10}{'templates/s':>14}")
    print(f"{'set-based import (new)':32}{t1:10.2f}{bulk_rate:14.0f}")
    print(f"{'re-import, nothing changed':32}{t2:10.2f}{args.n / t2:14.0f}")
    print(f"{'re-import, 10% changed':32}{t3:10.2f}{args.n / t3:14.0f}")
    print(f"{'compact templates (new)':32}{t4:10.2f}{args.n / t4:14.0f}")
    print(f"{'per-template upsert (baseline)':32}{tb:10.2f}{base_rate:14.0f}")
    print(
        f"speed-up over per-template upserts: {bulk_rate / base_rate:.1f}x; versions in db: {versions}; "
        f"target >= 5000/s: {'met' if bulk_rate >= 5000 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
