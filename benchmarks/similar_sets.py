"""Similar-set benchmark (not a test): the HNSW index path against the exact block path, side by side.

    python benchmarks/similar_sets.py                     # 10^5 problems, k = 8
    python benchmarks/similar_sets.py --sizes 10000,100000
    python benchmarks/similar_sets.py --sizes 1000000 --paths exact --anchors 2000   # a sample of anchors

Problems get real-shaped vectors: MATH-500 problems embedded with the model, plus Gaussian noise with
the covariance of those embeddings, normalised (benchmarks/retrieval.py's `synthetic_chunk`); 95%
train, 5% test, so sets stay within a split as in production. Both paths run through
`pipelines.similar.build_similar_sets` into the same build (the path is not a parameter), the sets
being deleted in between; the index path's recall@8 is measured against the exact path's members.
The HNSW index build is timed on its own (a KB that embeds as it imports has it already).

With --anchors N, only N anchors (the first N ids) get sets: per-anchor cost at a pool size where
all anchors would not fit the time; the printed extrapolation to every anchor is labelled as such.

Runs in a throwaway embedded PostgreSQL in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.retrieval import (
    COPY_SIGNATURE,
    COPY_TRAILER,
    MATH500,
    print_table,
    synthetic_chunk,
    throwaway_database,
)
from kb import config
from kb.db import Database
from kb.embeddings import index_name

SUBJECTS = (
    "Algebra",
    "Counting & Probability",
    "Geometry",
    "Intermediate Algebra",
    "Number Theory",
    "Prealgebra",
    "Precalculus",
)


def load(
    db: Database, n: int, centers: np.ndarray, model: str, noise: float, seed: int, chunk: int = 100_000
) -> float:
    """COPY N problems and their vectors (no index yet); returns seconds."""
    dim = centers.shape[1]
    name = model.encode()
    row = np.dtype(
        [
            ("nf", ">i2"),
            ("l1", ">i4"),
            ("pid", ">i4"),
            ("l2", ">i4"),
            ("model", f"S{len(name)}"),
            ("l3", ">i4"),
            ("dim", ">i4"),
            ("l4", ">i4"),
            ("vdim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
        ]
    )
    t0 = time.perf_counter()
    raw = db.engine.raw_connection()
    try:
        pg = raw.driver_connection
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            ids = np.arange(start + 1, start + size + 1)
            with (
                pg.cursor() as cur,
                cur.copy("COPY problem (id, text, split, subject, content_hash, extra) FROM STDIN") as copy,
            ):
                copy.write(
                    "".join(
                        f"{i}\tsynthetic problem {i}\t{'test' if i % 20 == 0 else 'train'}\t"
                        f"{SUBJECTS[i % len(SUBJECTS)]}\tsyn{i}\t{{}}\n"
                        for i in ids
                    )
                )
            out = np.zeros(size, dtype=row)
            out["nf"], out["l1"], out["pid"], out["l2"], out["model"] = 4, 4, ids, len(name), name
            out["l3"], out["dim"], out["l4"], out["vdim"] = 4, dim, 4 + 4 * dim, dim
            out["vec"] = synthetic_chunk(centers, size, noise, seed + start)
            with (
                pg.cursor() as cur,
                cur.copy(
                    "COPY problem_embedding (problem_id, model, dim, embedding) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.write(COPY_SIGNATURE + out.tobytes() + COPY_TRAILER)
            pg.commit()
            print(f"  loaded {start + size:,} / {n:,}", file=sys.stderr, end="\r")
        with pg.cursor() as cur:
            cur.execute("SELECT setval('problem_id_seq', (SELECT max(id) FROM problem))")
            cur.execute("ANALYZE problem; ANALYZE problem_embedding")
        pg.commit()
    finally:
        raw.close()
    return time.perf_counter() - t0


def members(db: Database, build_id: int) -> dict[int, set[int]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.anchor_problem_id, array_remove(array_agg(m.problem_id), NULL) FROM similar_set s "
                "LEFT JOIN similar_set_member m ON m.set_id = s.id WHERE s.build_id = :b GROUP BY 1"
            ),
            {"b": build_id},
        ).all()
    return {a: set(ms) for a, ms in rows}


def run_size(db: Database, n: int, model: str, centers: np.ndarray, args) -> list[dict]:
    from pipelines.similar import build_similar_sets

    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "TRUNCATE problem, problem_embedding, similar_build, similar_set, similar_set_member "
                "RESTART IDENTITY CASCADE"
            )
        )
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {index_name('problem_embedding', model)}"))
        for ix in (
            conn.execute(
                sa.text(
                    "SELECT indexname FROM pg_indexes WHERE tablename = 'problem_embedding' "
                    "AND indexdef ILIKE '%hnsw%'"
                )
            )
            .scalars()
            .all()
        ):
            conn.execute(sa.text(f"DROP INDEX {ix}"))
    seconds = load(db, n, centers, model, args.noise, args.seed)
    print(f"\n{n:,} problems loaded in {seconds:.1f} s; load {Path('/proc/loadavg').read_text().strip()}")
    anchors = f"ids=1-{args.anchors}" if args.anchors else None
    options = {
        "k": args.k,
        "min_similarity": args.min_similarity,
        "anchors": anchors,
        "model": model,
        "embed_missing": False,
    }
    rows, found = [], {}
    for path in args.paths:
        extra = {}
        if path == "index":
            from kb.embeddings import ensure_hnsw_index

            with db.engine.connect() as conn:
                conn.execute(sa.text(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'"))
                t0 = time.perf_counter()
                ensure_hnsw_index(conn, "problem_embedding", model, centers.shape[1])
                conn.commit()
                extra["index_build_s"] = time.perf_counter() - t0
            print(f"HNSW index built in {extra['index_build_s']:.1f} s", file=sys.stderr)
        t0 = time.perf_counter()
        out = build_similar_sets(db, path=path, **options)
        wall = time.perf_counter() - t0
        found[path] = members(db, out["build_id"])
        rows.append(
            {
                "problems": n,
                "path": out["path"],
                "anchors": out["sets"],
                "members": out["members"],
                "wall_s": wall,
                "anchors_per_s": out["sets"] / wall,
                "index_build_s": extra.get("index_build_s", 0.0),
            }
        )
        print(
            f"{path}: {out['sets']:,} sets, {out['members']:,} members in {wall:.1f} s; "
            f"load {Path('/proc/loadavg').read_text().strip()}",
            file=sys.stderr,
        )
        with db.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM similar_set WHERE build_id = :b"), {"b": out["build_id"]})
    if "exact" in found:
        truth = found["exact"]
        for r in rows:
            got = found[r["path"]]
            hit = sum(len(got.get(a, set()) & ms) for a, ms in truth.items())
            total = sum(len(ms) for ms in truth.values())
            r["recall@k_vs_exact"] = hit / max(total, 1)
    if args.anchors:
        for r in rows:
            r["all_anchors_s_extrapolated"] = r["wall_s"] / max(r["anchors"], 1) * n
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[100_000])
    ap.add_argument("--paths", type=lambda s: s.split(","), default=["exact", "index"])
    ap.add_argument("--anchors", type=int, default=None, help="only the first N problems are anchors")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--min-similarity", type=float, default=0.0)
    ap.add_argument("--noise", type=float, default=0.75)
    ap.add_argument("--model", default=None)
    ap.add_argument("--maintenance-work-mem", default="2GB")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    model = config.embed_model_name(args.model)
    from kb.embeddings import get_embedder

    texts = [json.loads(line)["problem"] for line in MATH500.read_text().splitlines()]
    centers = get_embedder(model).encode(texts)
    print(
        f"centers: {len(centers)} MATH-500 problems embedded with {model}; k = {args.k}, "
        f"min similarity {args.min_similarity}; paths {args.paths}"
    )
    rows = []
    with throwaway_database() as db:
        for n in args.sizes:
            rows += run_size(db, n, model, centers, args)
            print_table(
                rows, "similar sets, side by side (recall of each path's members against the exact path's)"
            )


if __name__ == "__main__":
    main()
