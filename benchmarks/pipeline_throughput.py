"""Throughput of the LLM stages (mine, sample, evaluate) at 1, 2 and 4 workers; our overhead per LLM call.

    python benchmarks/pipeline_throughput.py                 # scripted backend + tiny model
    python benchmarks/pipeline_throughput.py --skip-tiny --problems 96 --latency 0.2

Runs in a throwaway database (a temporary embedded server, or a database created and dropped on
DATABASE_URL's server). Figures:

- units/s per stage and worker count: units done / the time from the first claim of any worker to the
  last commit of any (process start-up and model loading excluded, reported separately as total wall), with the scripted backend at a simulated
  latency per batched call (so the work is not CPU-bound: this measures how well workers share the work)
  and with the tiny random model through the transformers backend (CPU-bound on this machine);
- the database's share of the workers' wall time (claims, result writes, call logging);
- our own overhead per LLM call, p50 and p90: with the scripted backend at zero latency, for each batch
  the time from the end of the previous batch's commit to the end of this one's (claim, prompt building,
  parsing, retrieval/grading, call logging, result writes) minus the backend's own time, per call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.scratch import scratch_database
from kb.db import Database
from pipelines import evaluate as ev
from pipelines import mine as mn
from pipelines import navigator
from pipelines import sample as sm
from pipelines.llm.base import SamplingParams
from pipelines.llm.config import RoleConfig
from pipelines.llm.scripted import ScriptedBackend
from pipelines.runner import run_stage


def template(i: int) -> str:
    """A distinct candidate per problem, so mining embeds and dedupes every one (as real mining does)."""
    return json.dumps(
        {
            "name": f"Linear equation method {i}",
            "type": "technique",
            "tags": ["algebra", f"variant {i}"],
            "description": f"Isolate the unknown of a linear equation (variant {i}) by inverse operations.",
            "scope": "A linear equation in one unknown.",
            "steps": ["Collect terms.", "Divide.", "Check."],
            "example": {"problem": "Solve 2x=1.", "solution": "x = 1/2", "answer": "1/2"},
        }
    )


PLAN = navigator.render_plan(
    "A quadratic equation.", [("Factor it", "Factor the quadratic"), ("Solve each factor", "Zero product")]
)
ANSWER = "Following the plan, the roots are $\\boxed{\\frac{1}{2}}$."


def rules(n: int) -> list[list[str]]:
    """Navigator and inference prompts first (the mining prompt has neither word), then one rule per problem."""
    return [["navigator", PLAN], ["Plan", ANSWER]] + [[f"Problem {i}:", template(i)] for i in range(1, n + 1)]


def load_problems(db: Database, n: int) -> list[int]:
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO problem (text, solution, answer, source, split, content_hash, extra) "
                "SELECT 'Problem ' || i || ': solve 2x = 1 for x.', 'x = 1/2', '\\frac12', 'bench', 'train', "
                "md5('bench' || i), '{}' FROM generate_series(1, :n) i"
            ),
            {"n": n},
        )
        return list(conn.execute(sa.text("SELECT id FROM problem ORDER BY id")).scalars())


def reset(db: Database, keep_trajectories: bool = False) -> None:
    tables = "work_unit, failure, llm_call, rollout, template, template_version, template_embedding"
    if not keep_trajectories:
        tables += ", trajectory, trajectory_step"
    with db.engine.begin() as conn:
        conn.execute(sa.text(f"TRUNCATE {tables} CASCADE"))


def seed_trajectories(db: Database, ids: list[int], per_problem: int = 1) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO trajectory (problem_id, navigator_model, sample_key, sampling, abstraction, raw_output) "
                "SELECT p, 'bench', 'k' || k, '{}', 'quadratic', '' FROM unnest(CAST(:ids AS int[])) p, "
                "generate_series(1, :k) k ON CONFLICT DO NOTHING"
            ),
            {"ids": ids, "k": per_problem},
        )
        conn.execute(
            sa.text(
                "INSERT INTO trajectory_step (trajectory_id, position, text) SELECT id, 0, 'Solve for x' FROM trajectory "
                "ON CONFLICT DO NOTHING"
            )
        )


def stage_call(stage: str, db: Database, role, *, workers: int, tag: int, max_tokens: int = 64) -> dict:
    sel = "all"
    short = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=tag)  # seed: a new scope each time
    if stage == "mine":
        return mn.mine(db, sel, role, workers=workers, sampling=short, progress=False)
    if stage == "sample":
        return sm.sample(
            db,
            sel,
            role,
            n=4,
            hint_k=0,
            workers=workers,
            progress=False,
            sampling=SamplingParams(temperature=0.7, max_tokens=max_tokens, seed=tag),
        )
    return ev.evaluate(db, sel, role, workers=workers, sampling=short, refresh=False, progress=False)


def throughput(
    db: Database,
    ids: list[int],
    role,
    label: str,
    workers_list: list[int],
    stages: list[str],
    max_tokens: int = 64,
) -> list[dict]:
    rows = []
    for stage in stages:
        for workers in workers_list:
            reset(db)
            if stage == "evaluate":
                seed_trajectories(db, ids)
            t0 = time.perf_counter()
            out = stage_call(stage, db, role, workers=workers, tag=workers, max_tokens=max_tokens)
            total = time.perf_counter() - t0
            units = out["units_done"] + out["units_failed"]
            rate = units / out["work_span_s"] if out.get("work_span_s") else 0.0
            db_share = (
                out.get("db_s", 0) / out["worker_wall_s_total"] if out.get("worker_wall_s_total") else 0.0
            )
            rows.append(
                {
                    "backend": label,
                    "stage": stage,
                    "workers": workers,
                    "units": units,
                    "units_per_s": rate,
                    "db_share": db_share,
                    "total_wall_s": total,
                }
            )
            print(
                f"  {label:9s} {stage:8s} workers={workers}  {units:4d} units  {rate:8.2f} units/s  "
                f"db share {db_share:5.1%}  (total wall incl. start-up {total:6.1f} s)",
                flush=True,
            )
    return rows


class TimedBackend:
    """The scripted backend, timing its own share of every call."""

    def __init__(self, inner: ScriptedBackend):
        self.inner, self.name, self.model = inner, inner.name, inner.model
        self.batches: list[tuple[float, int]] = []  # (backend seconds, calls)

    def generate(self, requests):
        t0 = time.perf_counter()
        out = self.inner.generate(requests)
        self.batches.append((time.perf_counter() - t0, len(requests)))
        return out


def overhead(db: Database, ids: list[int], batch_size: int) -> dict[str, dict[str, float]]:
    """Per stage: p50/p90 of (batch cycle - backend time) / calls, in ms, at zero backend latency."""
    results = {}
    for stage, module, kwargs in (
        ("mine", mn, {"sampling": SamplingParams(max_tokens=64)}),
        ("sample", sm, {"n": 4, "hint_k": 0}),
        ("evaluate", ev, {}),
    ):
        reset(db)
        if stage == "evaluate":
            seed_trajectories(db, ids)
        backend = TimedBackend(ScriptedBackend(rules=[tuple(r) for r in rules(len(ids))]))
        ends: list[float] = []
        batch_embed: list[float] = []
        embed_s: list[float] = []

        def factory(
            db_,
            run_id,
            _module=module,
            _kwargs=kwargs,
            _backend=backend,
            _ends=ends,
            _be=batch_embed,
            _es=embed_s,
        ):
            handler = _module.make_handler(db_, run_id, role=_backend, **_kwargs)
            orig = handler.process

            def process(batch):
                _ends.append(time.perf_counter())  # the claim just ended: the previous cycle is complete
                before = len(_es)
                out = orig(batch)
                _be.append(sum(_es[before:]))
                return out

            handler.process = process
            return handler

        units = [(f"problem:{i}", {"problem_id": i}) for i in ids] if stage != "evaluate" else None
        if stage == "evaluate":
            with db.engine.connect() as conn:
                tids = list(conn.execute(sa.text("SELECT id FROM trajectory ORDER BY id")).scalars())
            units = [(f"trajectory:{t}", {"trajectory_id": t}) for t in tids]
        if stage == "mine":  # the candidates are embedded (dedupe): time the embedding model on its own
            from kb.embeddings import get_embedder

            embedder = get_embedder()
            embedder.encode(["warm-up"])
            plain = embedder.encode
            embed_s.clear()

            def timed_encode(texts, *a, _plain=plain, _acc=embed_s, **kw):
                t = time.perf_counter()
                out = _plain(texts, *a, **kw)
                _acc.append(time.perf_counter() - t)
                return out

            embedder.encode = timed_encode
        run_stage(
            db,
            stage=stage,
            params={"bench": stage, "t": time.time()},
            units=units,
            factory=factory,
            batch_size=batch_size,
            progress=False,
        )
        # Batch k's cycle: from the end of its claim to the end of the next claim (process, commit, claim).
        # The first batch warms up, the last one's cycle includes the run's end: both left out.
        cycles = [b - a for a, b in itertools.pairwise(ends)][1:]
        if stage == "mine":
            embedder.encode = plain
        per_call = [
            (cyc - be - em) / n * 1000
            for cyc, (be, n), em in zip(cycles, backend.batches[1:], batch_embed[1:])
            if n
        ]
        results[stage] = {
            "p50_ms": statistics.median(per_call),
            "p90_ms": statistics.quantiles(per_call, n=10)[-1] if len(per_call) > 10 else max(per_call),
            "calls_per_batch": backend.batches[0][1],
        }
        note = ""
        if stage == "mine":
            note = (
                f"; not counted: the embedding model, p50 {statistics.median(batch_embed) * 1000:.0f} ms "
                "per batch of candidates"
            )
        print(
            f"  batch {batch_size}  {stage:8s} overhead per LLM call: p50 {results[stage]['p50_ms']:.2f} ms, "
            f"p90 {results[stage]['p90_ms']:.2f} ms ({results[stage]['calls_per_batch']} calls per batch{note})",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--problems", type=int, default=64, help="Problems (units) per scripted run.")
    parser.add_argument(
        "--latency", type=float, default=0.2, help="Simulated seconds per batched scripted call."
    )
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--tiny-problems", type=int, default=8)
    parser.add_argument("--skip-tiny", action="store_true")
    parser.add_argument("--skip-scripted", action="store_true", help="Only the tiny model's throughput.")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # One torch thread per process everywhere (worker processes get cores // workers = 1 here): on a shared,
    # loaded machine intra-op threads spin against each other and make small models 5-30x slower, which
    # would compare thread contention instead of workers.
    import torch

    torch.set_num_threads(1)
    with scratch_database("rf_bench") as db:
        ids = load_problems(db, args.problems)
        oh: dict = {}
        rows: list[dict] = []
        if not args.skip_scripted:
            print(
                f"Our overhead per LLM call (scripted backend, zero latency, {len(ids)} units; batch = units "
                "per claim, 4 is the stages' default):"
            )
            overhead(db, ids, 1)
            oh = overhead(db, ids, 4)
            print(
                f"\nThroughput, scripted backend at {args.latency:.2f} s per batched call, {len(ids)} units:"
            )
            scripted = RoleConfig("scripted", {"rules": rules(len(ids)), "latency_s": args.latency})
            rows = throughput(db, ids, scripted, "scripted", workers, ["mine", "sample", "evaluate"])
        if not args.skip_tiny:
            from demo.tiny_model import build_tiny_model

            with db.engine.begin() as conn:
                conn.execute(sa.text("DELETE FROM problem WHERE id > :n"), {"n": ids[args.tiny_problems - 1]})
            tiny_ids = ids[: args.tiny_problems]
            model = build_tiny_model(Path(tempfile.mkdtemp(prefix="rf-tiny-")) / "tiny")
            print(f"\nThroughput, tiny model (transformers, CPU), {len(tiny_ids)} units, 32 new tokens:")
            tiny = RoleConfig("transformers", {"model_path": str(model)})
            rows += throughput(
                db, tiny_ids, tiny, "tiny", workers, ["mine", "sample", "evaluate"], max_tokens=32
            )
    print("\nSummary: speed-up over one worker")
    for backend in ("scripted", "tiny"):
        for stage in ("mine", "sample", "evaluate"):
            base = next(
                (r for r in rows if r["backend"] == backend and r["stage"] == stage and r["workers"] == 1),
                None,
            )
            if base is None:
                continue
            ratios = "  ".join(
                f"{r['workers']}w {r['units_per_s'] / base['units_per_s']:.2f}x"
                for r in rows
                if r["backend"] == backend and r["stage"] == stage
            )
            print(f"  {backend:9s} {stage:8s} {ratios}")
    if not oh:
        return
    worst = max(v["p50_ms"] for v in oh.values())
    two = [r for r in rows if r["backend"] == "scripted" and r["workers"] == 2]
    ones = {r["stage"]: r for r in rows if r["backend"] == "scripted" and r["workers"] == 1}
    speedups = [r["units_per_s"] / ones[r["stage"]]["units_per_s"] for r in two]
    print(
        f"\nTarget: overhead per LLM call < 5 ms at p50 (batch 4): worst stage {worst:.2f} ms "
        f"({'met' if worst < 5 else 'MISSED'})"
    )
    if speedups:
        print(
            f"Target: two workers >= 1.7x one (scripted): {', '.join(f'{s:.2f}x' for s in speedups)} "
            f"({'met' if min(speedups) >= 1.7 else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
