"""Solver overhead per round and throughput under concurrency, with a scripted backend at fixed latency.

    python benchmarks/serve.py [--latency-ms 200] [--overhead-sessions 40] [--levels 1,8,32] [--mode hybrid]

A throwaway database (on a temporary embedded server, or in a database created and dropped on
DATABASE_URL's server) gets the ReasonFlux-v1 template sample from ../shared/data (62 templates,
embedded), or a few built-in templates when it is absent. The backend is the scripted play-along
model (the scripted play-along, pipelines.llm.scripted): each session is a plan plus two steps, five LLM calls.

Overhead: sessions run one at a time against a zero-latency backend; a round's solver overhead is
its wall time minus the time spent waiting for the LLM, split into KB retrieval (query embedding +
SQL), trace writes (one transaction per round), and the rest (prompt building, parsing, batching
hand-off). Targets: p50 under 10 ms per round.

Throughput: sessions per second at 1, 8 and 32 concurrent sessions against LATENCY ms per generate
call (one batch costs one latency, like a batched server). Target (issue 18.7): 32 sessions >= 28x one
session. On two cores it is missed (about 22-23x): the sessions of one batch get their replies at the same
instant and then all do their few milliseconds of Python and SQL at once, one after another under the GIL,
so a round's wall time grows with the number of sessions behind it (a convoy), not with the LLM.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from demo.play_along import play_along_backend
from demo.scratch import scratch_database
from kb.db import Database
from serve.solver import Solver, SolverConfig
from serve.traces import store as traces

TARGET_SPEEDUP = 28  # issue 18.7: 32 sessions against one
SAMPLE = ROOT.parent / "shared" / "data" / "reasonflux_v1_templates_sample.json"
PROBLEMS = [
    "Find the sum of the first {n} terms of the arithmetic sequence 3, 7, 11, ...",
    "How many ways can {n} people be seated around a round table?",
    "Compute |z|^2 for z = {n} + 2i.",
    "Find the {n}th term of the geometric sequence 2, 6, 18, ...",
]


def load_templates(db: Database) -> str:
    if SAMPLE.exists():
        from pipelines.import_templates import import_file

        import_file(db, SAMPLE, "reasonflux-v1")
        return f"{SAMPLE.name} (ReasonFlux-v1 sample)"
    from demo.solve_templates import add_templates

    add_templates(db)
    return "4 built-in templates (../shared/data absent)"


class Timers:
    """Wall time spent inside retrieval and trace writes, per thread-independent total."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.retrieval: list[float] = []
        self.writes: list[float] = []

    def wrap(self, module, name: str, bucket: list[float]) -> None:
        original = getattr(module, name)

        def timed(*a, **kw):
            t0 = time.perf_counter()
            try:
                return original(*a, **kw)
            finally:
                with self.lock:
                    bucket.append((time.perf_counter() - t0) * 1000)

        setattr(module, name, timed)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def library_steps(db: Database) -> list[tuple[str, str]]:
    """A plan that names two library templates, as a trained navigator does."""
    with db.engine.connect() as conn:
        names = (
            conn.execute(
                sa.text(
                    "SELECT v.name FROM template t JOIN template_version v "
                    "ON v.id = t.current_version_id ORDER BY t.id LIMIT 2"
                )
            )
            .scalars()
            .all()
        )
    return [
        ("Identify what the problem asks and which quantities are known", names[0]),
        ("Apply the template's method to compute the requested quantity", names[-1]),
    ]


def overhead(db: Database, sessions: int, mode: str, *, steps: list[tuple[str, str]] | None) -> dict:
    """Sessions one at a time against a zero-latency backend; what the solver itself spends.

    per step round: the round's own work (retrieval, prompts, parsing; from solve_round.latency_ms
    less its LLM wait) plus the transaction that writes it. All-in: a session's whole wall time less
    its LLM wait (session row, plan, final round and finish included), spread over its step rounds.
    STEPS None: the last step's template phrase is the problem itself, so every such query is new.
    """
    import kb.retrieval
    from pipelines import step_retrieval

    timers = Timers()
    # Step retrieval calls search_templates by the name it imported: both names are timed.
    original = (kb.retrieval.search_templates, step_retrieval.search_templates, traces.write_round)
    timers.wrap(kb.retrieval, "search_templates", timers.retrieval)
    timers.wrap(step_retrieval, "search_templates", timers.retrieval)
    timers.wrap(traces, "write_round", timers.writes)
    backend = play_along_backend(steps=steps, template_from_problem=steps is None)
    all_in = []
    try:
        with Solver(db, backend, backend, SolverConfig(retrieval_mode=mode)) as solver:
            solver.warm_up()
            solver.solve("Warm-up: find the sum 1 + 2 + ... + 10.")
            timers.retrieval.clear()
            timers.writes.clear()
            ids = []
            for i in range(sessions):
                t0 = time.perf_counter()
                r = solver.solve(PROBLEMS[i % len(PROBLEMS)].format(n=i + 5 + 1000 * (steps is None)))
                wall = (time.perf_counter() - t0) * 1000
                wait = sum(t.get("latency_ms", 0) for t in r.tokens.values())
                all_in.append((wall - wait) / r.rounds)
                ids.append(r.session_id)
    finally:
        kb.retrieval.search_templates, step_retrieval.search_templates, traces.write_round = original
    with db.engine.connect() as conn:
        rounds = conn.execute(
            sa.text(
                "SELECT latency_ms, tokens FROM solve_round WHERE session_id = ANY(:ids) AND kind = 'step' "
                "ORDER BY session_id, round_no"
            ),
            {"ids": ids},
        ).all()
    # Sessions ran one after another, each writing plan, step, step, final: the step writes are 2nd and 3rd.
    step_writes = [w for i, w in enumerate(timers.writes) if i % 4 in (1, 2)]
    llm_wait = [sum(t.get("latency_ms", 0) for t in tok.values()) for _, tok in rounds]
    per_round = [lat - wait + w for (lat, _), wait, w in zip(rounds, llm_wait, step_writes)]
    return {
        "rounds": len(per_round),
        "p50": pct(per_round, 0.5),
        "p90": pct(per_round, 0.9),
        "all_in_p50": pct(all_in, 0.5),
        "retrieval_p50": pct(timers.retrieval, 0.5),
        "write_p50": pct(step_writes, 0.5),
        "llm_wait_p50": pct(llm_wait, 0.5),
    }


def throughput(
    db: Database, concurrency: int, sessions: int, latency_s: float, mode: str, steps: list[tuple[str, str]]
) -> dict:
    backend = play_along_backend(latency_s=latency_s, steps=steps, template_from_problem=False)
    with (
        Solver(db, backend, backend, SolverConfig(retrieval_mode=mode)) as solver,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        solver.warm_up()
        t0 = time.perf_counter()
        results = list(
            pool.map(lambda i: solver.solve(PROBLEMS[i % len(PROBLEMS)].format(n=1000 + i)), range(sessions))
        )
        wall = time.perf_counter() - t0
        stats = solver.batchers["navigator"].stats()
    assert all(r.status == "solved" for r in results), [r.reason for r in results if r.status != "solved"]
    return {
        "concurrency": concurrency,
        "sessions": sessions,
        "wall_s": wall,
        "per_s": sessions / wall,
        "mean_batch": stats["mean_batch"],
        "session_p50_s": statistics.median(r.latency_ms for r in results) / 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--overhead-sessions", type=int, default=40)
    ap.add_argument("--levels", default="1,8,32")
    ap.add_argument("--waves", type=int, default=3, help="sessions per level = concurrency x waves")
    ap.add_argument("--mode", default="hybrid", help="retrieval mode (hybrid, vector, text, hierarchical)")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",")]

    with scratch_database("rf_bench", pool_size=40, max_overflow=10) as db:
        print(
            f"templates: {load_templates(db)}; retrieval mode: {args.mode}; cpus: {os.cpu_count()}; "
            f"load average {os.getloadavg()[0]:.1f}"
        )
        steps = library_steps(db)
        print(f"plan: two steps naming library templates {[t for _, t in steps]}")
        for label, plan_steps in (
            ("navigator names library templates (query vectors cached)", steps),
            ("every template phrase new (query embedded each round)", None),
        ):
            o = overhead(db, args.overhead_sessions, args.mode, steps=plan_steps)
            print(f"\nsolver overhead per step round, {label}; zero-latency backend, {o['rounds']} rounds:")
            print(
                f"  p50 {o['p50']:.2f} ms   p90 {o['p90']:.2f} ms   (target p50 < 10 ms: "
                f"{'met' if o['p50'] < 10 else 'MISSED'}); all-in per round, session overhead spread: "
                f"p50 {o['all_in_p50']:.2f} ms"
            )
            print(
                f"  of which: KB retrieval p50 {o['retrieval_p50']:.2f} ms, "
                f"trace write p50 {o['write_p50']:.2f} ms; LLM wait p50 {o['llm_wait_p50']:.2f} ms "
                "(scripted replies + batch hand-off, not counted)"
            )

        print(f"\nthroughput against {args.latency_ms:.0f} ms per generate call:")
        print(
            f"  {'sessions at once':>16} {'sessions':>9} {'wall s':>8} {'sessions/s':>11} {'vs 1':>7} "
            f"{'mean batch':>11} {'session p50 s':>14}"
        )
        base = None
        rows = []
        for c in levels:
            r = throughput(db, c, max(c * args.waves, 3), args.latency_ms / 1000, args.mode, steps)
            base = base or r["per_s"]
            rows.append(r)
            print(
                f"  {c:>16} {r['sessions']:>9} {r['wall_s']:>8.2f} {r['per_s']:>11.2f} "
                f"{r['per_s'] / base:>6.1f}x "
                f"{r['mean_batch']:>11.1f} {r['session_p50_s']:>14.2f}"
            )
        top = rows[-1]
        print(
            f"\n{top['concurrency']} concurrent sessions: {top['per_s'] / base:.1f}x the throughput of one "
            f"(target >= {TARGET_SPEEDUP}x: {'met' if top['per_s'] / base >= TARGET_SPEEDUP else 'MISSED'})"
        )


if __name__ == "__main__":
    main()
