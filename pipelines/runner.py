"""The unit-claiming runner every LLM stage runs on: parallel, idempotent, resumable.

A stage's work is a set of units (one per problem or trajectory) in `work_unit`, keyed by
(stage, scope, unit_key), where scope hashes the stage's parameters: rerunning the same command finds the
same units and does only what is not done. Workers claim batches with `FOR UPDATE SKIP LOCKED`, so any
number of processes on any number of machines share the units of one PostgreSQL without overlap.

Crash safety: a unit's results, its failure rows and its `done` mark are written in ONE transaction,
guarded by the claim (`claimed_by` still ours), so a kill -9 at any moment leaves either everything or
nothing of a unit. A claim whose worker died is taken back when its lease expires, or at once when the
dead worker ran on this host (its pid is gone). Claims are counted: a unit that keeps killing its worker
or raising is marked failed after `max_attempts`, with the reasons in `failure`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from kb.db import Database, create_engine
from kb.errors import KbError
from kb.models import Failure, WorkUnit
from kb.progress import progress_bar
from kb.runs import pid_alive, pipeline_run, verdict
from kb.secrets import scrub

DEFAULT_LEASE_S = 900.0
DEFAULT_MAX_ATTEMPTS = 3


@dataclass
class Unit:
    id: int
    key: str
    payload: dict[str, Any]
    attempts: int


@dataclass
class Outcome:
    """What processing one unit produced; the handler writes `data` in the unit's transaction.

    status 'done': finished (possibly with recorded failures, e.g. one unparseable sample of eight);
    'failed': finished without a usable result after the handler's own bounded retries: not retried.
    """

    data: Any = None
    status: str = "done"
    failures: list[dict[str, Any]] = field(default_factory=list)  # {reason, raw_output, attempt}


class StageHandler(Protocol):
    stage: str

    def process(self, units: list[Unit]) -> list[Outcome]:
        """Do the work (LLM calls, parsing) of a batch; no database writes. One outcome per unit."""
        ...

    def write(self, conn: sa.Connection, unit: Unit, outcome: Outcome, run_id: int) -> dict[str, int]:
        """Store one unit's results (inside the runner's transaction); returns counts to add to the run."""
        ...


HandlerFactory = Callable[[Database, int], StageHandler]  # (db, run_id) -> handler; picklable for --workers


def unit_scope(stage: str, params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{stage}\0{canonical}".encode()).hexdigest()[:16]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


# ---------------------------------------------------------------- queue operations (set-based SQL)


def enqueue(
    conn: sa.Connection,
    stage: str,
    scope: str,
    units: Iterable[tuple[str, dict[str, Any]]],
    run_id: int | None,
) -> int:
    rows = [{"stage": stage, "scope": scope, "unit_key": k, "payload": p, "run_id": run_id} for k, p in units]
    if not rows:
        return 0
    stmt = (
        insert(WorkUnit.__table__)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["stage", "scope", "unit_key"])
        .returning(WorkUnit.__table__.c.id)
    )
    return len(conn.execute(stmt).all())


def reset_failed(conn: sa.Connection, stage: str, scope: str) -> int:
    return conn.execute(
        sa.text(
            "UPDATE work_unit SET status = 'pending', attempts = 0, error = NULL, claimed_by = NULL "
            "WHERE stage = :s AND scope = :sc AND status = 'failed'"
        ),
        {"s": stage, "sc": scope},
    ).rowcount


# One statement: units whose claims ran out max_attempts times are marked failed (with a failure row),
# then up to :n claimable units are claimed. The two UPDATEs touch disjoint rows (attempts >= / < max).
_CLAIM_SQL = sa.text("""
WITH abandoned AS (
    UPDATE work_unit SET status = 'failed', finished_at = now(), claimed_by = NULL,
           error = 'abandoned: its worker died or timed out on every one of ' || attempts || ' attempts'
    WHERE id IN (
        SELECT id FROM work_unit
        WHERE stage = :stage AND scope = :scope AND status = 'claimed' AND attempts >= :max_attempts
          AND claimed_at < now() - make_interval(secs => :lease)
        FOR UPDATE SKIP LOCKED)
    RETURNING unit_key, attempts
), logged AS (
    INSERT INTO failure (run_id, stage, unit_key, attempt, reason)
    SELECT :run_id, :stage, unit_key, attempts,
           'abandoned after ' || attempts || ' attempts (worker killed or lease expired each time)'
    FROM abandoned
), claimed AS (
    UPDATE work_unit u SET status = 'claimed', claimed_by = :worker, claimed_at = now(), attempts = u.attempts + 1
    WHERE u.id IN (
        SELECT id FROM work_unit
        WHERE stage = :stage AND scope = :scope
          AND (status = 'pending'
               OR (status = 'claimed' AND attempts < :max_attempts
                   AND claimed_at < now() - make_interval(secs => :lease)))
        ORDER BY id
        LIMIT :n
        FOR UPDATE SKIP LOCKED)
    RETURNING u.id, u.unit_key, u.payload, u.attempts
)
SELECT id, unit_key, payload, attempts FROM claimed ORDER BY id
""")


def claim(
    conn: sa.Connection,
    stage: str,
    scope: str,
    worker: str,
    n: int,
    *,
    lease_s: float,
    max_attempts: int,
    run_id: int | None = None,
) -> list[Unit]:
    rows = conn.execute(
        _CLAIM_SQL,
        {
            "stage": stage,
            "scope": scope,
            "lease": lease_s,
            "max_attempts": max_attempts,
            "worker": worker,
            "n": n,
            "run_id": run_id,
        },
    ).all()
    return [Unit(id=r.id, key=r.unit_key, payload=r.payload, attempts=r.attempts) for r in rows]


def release_dead_local_claims(conn: sa.Connection, stage: str, scope: str) -> int:
    """Claims held by processes of this host that no longer exist go back to pending at once."""
    host = socket.gethostname()
    claimers = (
        conn.execute(
            sa.text(
                "SELECT DISTINCT claimed_by FROM work_unit WHERE stage = :s AND scope = :sc AND status = 'claimed' "
                "AND claimed_by LIKE :h"
            ),
            {"s": stage, "sc": scope, "h": f"{host}:%"},
        )
        .scalars()
        .all()
    )
    dead = [c for c in claimers if not pid_alive(int(c.split(":")[1]))]
    if not dead:
        return 0
    return conn.execute(
        sa.text(
            "UPDATE work_unit SET status = 'pending', claimed_by = NULL WHERE stage = :s AND scope = :sc "
            "AND status = 'claimed' AND claimed_by = ANY(:dead)"
        ),
        {"s": stage, "sc": scope, "dead": dead},
    ).rowcount


def unit_counts(conn: sa.Connection, stage: str, scope: str) -> dict[str, int]:
    rows = conn.execute(
        sa.text("SELECT status, count(*) FROM work_unit WHERE stage = :s AND scope = :sc GROUP BY status"),
        {"s": stage, "sc": scope},
    ).all()
    return {status: n for status, n in rows}


# ---------------------------------------------------------------- one worker

MAX_IDLE_POLLS = 100  # x 0.1 s: how long a worker waits for rows another transaction still locks


def _claimable_but_locked(db: Database, cfg: RunnerConfig) -> bool:
    """Units we could not claim only because a transaction holds them: a claim in flight, or a worker
    killed mid-transaction whose locks the server has not dropped yet. Worth a short wait."""
    with db.engine.begin() as conn:
        release_dead_local_claims(conn, cfg.stage, cfg.scope)
        return bool(
            conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM work_unit WHERE stage = :s AND scope = :sc AND (status = 'pending' "
                    "OR (status = 'claimed' AND attempts < :max AND claimed_at < now() - make_interval(secs => :lease))))"
                ),
                {"s": cfg.stage, "sc": cfg.scope, "max": cfg.max_attempts, "lease": cfg.lease_s},
            ).scalar()
        )


class _LeaseLost(Exception):
    pass


@dataclass
class RunnerConfig:
    stage: str
    scope: str
    run_id: int
    batch_size: int = 4
    lease_s: float = DEFAULT_LEASE_S
    max_attempts: int = DEFAULT_MAX_ATTEMPTS


def _add(into: dict[str, Any], counts: dict[str, Any]) -> None:
    for k, v in counts.items():
        into[k] = into.get(k, 0) + v


def work(
    db: Database,
    handler: StageHandler,
    cfg: RunnerConfig,
    advance: Callable[[int], None] = lambda n: None,
    *,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Claim, process and commit batches until nothing is claimable; returns this worker's counts."""
    me = worker_id()
    counts: dict[str, Any] = {
        "units_done": 0,
        "units_failed": 0,
        "units_retried": 0,
        "units_lost": 0,
        "db_s": 0.0,
        "process_s": 0.0,
    }
    started = time.perf_counter()
    # One connection for the worker's claims and commits: no pool checkout (and ping) per transaction.
    with db.engine.connect() as conn:
        _work_loop(db, conn, handler, cfg, me, counts, advance, stop_after)
    counts["wall_s"] = time.perf_counter() - started
    counts["span"] = (time.time() - counts["wall_s"], time.time())  # comparable across processes
    return counts


def _work_loop(
    db: Database,
    conn: sa.Connection,
    handler: StageHandler,
    cfg: RunnerConfig,
    me: str,
    counts: dict[str, Any],
    advance: Callable[[int], None],
    stop_after: int | None,
) -> None:
    idle_polls = 0
    while stop_after is None or counts["units_done"] + counts["units_failed"] < stop_after:
        t0 = time.perf_counter()
        with conn.begin():
            units = claim(
                conn,
                cfg.stage,
                cfg.scope,
                me,
                cfg.batch_size,
                lease_s=cfg.lease_s,
                max_attempts=cfg.max_attempts,
                run_id=cfg.run_id,
            )
        counts["db_s"] += time.perf_counter() - t0
        if not units:
            if idle_polls < MAX_IDLE_POLLS and _claimable_but_locked(db, cfg):
                idle_polls += 1
                time.sleep(0.1)
                continue
            break
        idle_polls = 0
        t1 = time.perf_counter()
        try:
            outcomes = handler.process(units)
            if len(outcomes) != len(units):
                raise RuntimeError(f"handler returned {len(outcomes)} outcomes for {len(units)} units")
            error = None
        except Exception as e:  # noqa: BLE001 - recorded against each unit; bounded by max_attempts
            outcomes, error = [], "".join(traceback.format_exception_only(type(e), e)).strip()
        counts["process_s"] += time.perf_counter() - t1
        t2 = time.perf_counter()
        with conn.begin():
            if error is not None:
                _record_errors(conn, cfg, me, units, error, counts)
            else:
                _commit_batch(conn, handler, cfg, me, units, outcomes, counts)
        counts["db_s"] += time.perf_counter() - t2
        advance(len(units))


def _unit_error(outcome: Outcome) -> str | None:
    if outcome.status != "failed":
        return None
    return scrub("; ".join(f["reason"] for f in outcome.failures))[:2000]


def _store(
    conn: sa.Connection, handler: StageHandler, cfg: RunnerConfig, me: str, unit: Unit, outcome: Outcome
) -> dict[str, Any]:
    """Write one unit's results and failures and mark it finished; raises _LeaseLost if it is not ours."""
    written = handler.write(conn, unit, outcome, cfg.run_id) if outcome.status == "done" else {}
    if outcome.failures:
        conn.execute(
            sa.insert(Failure.__table__),
            [
                {
                    "run_id": cfg.run_id,
                    "stage": cfg.stage,
                    "unit_key": unit.key,
                    "attempt": f.get("attempt", unit.attempts),
                    "reason": scrub(f["reason"]),
                    "raw_output": scrub(f.get("raw_output")),
                }
                for f in outcome.failures
            ],
        )
    error = _unit_error(outcome)
    marked = conn.execute(
        sa.text(
            "UPDATE work_unit SET status = :st, finished_at = now(), run_id = :run, error = :err "
            "WHERE id = :id AND claimed_by = :me AND status = 'claimed'"
        ),
        {"st": outcome.status, "run": cfg.run_id, "err": error, "id": unit.id, "me": me},
    ).rowcount
    if marked != 1:
        raise _LeaseLost
    return written


def _store_batch(
    conn: sa.Connection,
    handler: StageHandler,
    cfg: RunnerConfig,
    me: str,
    units: list[Unit],
    outcomes: list[Outcome],
) -> list[dict[str, Any]]:
    """_store for a whole batch: the handler's writes per unit, then one INSERT of all failure rows and
    one UPDATE marking every unit; raises _LeaseLost if any unit is no longer ours."""
    written = [
        handler.write(conn, u, o, cfg.run_id) if o.status == "done" else {} for u, o in zip(units, outcomes)
    ]
    failures = [
        {
            "run_id": cfg.run_id,
            "stage": cfg.stage,
            "unit_key": u.key,
            "attempt": f.get("attempt", u.attempts),
            "reason": scrub(f["reason"]),
            "raw_output": scrub(f.get("raw_output")),
        }
        for u, o in zip(units, outcomes)
        for f in o.failures
    ]
    if failures:
        conn.execute(sa.insert(Failure.__table__), failures)
    errors = [_unit_error(o) for o in outcomes]
    marked = conn.execute(
        sa.text(
            "UPDATE work_unit w SET status = m.status, finished_at = now(), run_id = :run, error = m.error "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:st AS text[]), CAST(:err AS text[])) AS m(id, status, error) "
            "WHERE w.id = m.id AND w.claimed_by = :me AND w.status = 'claimed' RETURNING w.id"
        ),
        {
            "ids": [u.id for u in units],
            "st": [o.status for o in outcomes],
            "err": errors,
            "run": cfg.run_id,
            "me": me,
        },
    ).all()
    if len(marked) != len(units):
        raise _LeaseLost
    return written


def _commit_batch(
    conn: sa.Connection,
    handler: StageHandler,
    cfg: RunnerConfig,
    me: str,
    units: list[Unit],
    outcomes: list[Outcome],
    counts: dict[str, Any],
) -> None:
    """All units under one savepoint; if any of them cannot be stored, again one savepoint per unit so
    that one bad unit does not sink the others."""
    try:
        with conn.begin_nested():
            written = _store_batch(conn, handler, cfg, me, units, outcomes)
    except Exception:  # noqa: BLE001 - sorted out unit by unit below
        for unit, outcome in zip(units, outcomes):
            _commit_unit(conn, handler, cfg, me, unit, outcome, counts)
        return
    for outcome, w in zip(outcomes, written):
        _add(counts, w)
        counts["units_done" if outcome.status == "done" else "units_failed"] += 1


def _commit_unit(
    conn: sa.Connection,
    handler: StageHandler,
    cfg: RunnerConfig,
    me: str,
    unit: Unit,
    outcome: Outcome,
    counts: dict[str, Any],
) -> None:
    try:
        with conn.begin_nested():
            written = _store(conn, handler, cfg, me, unit, outcome)
    except _LeaseLost:
        counts["units_lost"] += 1  # someone took the unit over after our lease expired; their result counts
        return
    except Exception as e:  # noqa: BLE001 - this unit's results could not be stored: retry it, bounded
        _record_errors(
            conn, cfg, me, [unit], f"storing results failed: {type(e).__name__}: {e}"[:2000], counts
        )
        return
    _add(counts, written)
    counts["units_done" if outcome.status == "done" else "units_failed"] += 1


def _record_errors(
    conn: sa.Connection, cfg: RunnerConfig, me: str, units: list[Unit], error: str, counts: dict[str, Any]
) -> None:
    ids, error = [u.id for u in units], scrub(error)
    conn.execute(
        sa.insert(Failure.__table__),
        [
            {
                "run_id": cfg.run_id,
                "stage": cfg.stage,
                "unit_key": u.key,
                "attempt": u.attempts,
                "reason": f"error: {error}",
            }
            for u in units
        ],
    )
    res = (
        conn.execute(
            sa.text(
                "UPDATE work_unit SET status = CASE WHEN attempts >= :max THEN 'failed' ELSE 'pending' END, "
                "claimed_by = NULL, error = :err, finished_at = CASE WHEN attempts >= :max THEN now() END, run_id = :run "
                "WHERE id = ANY(:ids) AND claimed_by = :me AND status = 'claimed' RETURNING status"
            ),
            {"max": cfg.max_attempts, "err": error[:2000], "ids": ids, "me": me, "run": cfg.run_id},
        )
        .scalars()
        .all()
    )
    counts["units_failed"] += sum(1 for s in res if s == "failed")
    counts["units_retried"] += sum(1 for s in res if s == "pending")


# ---------------------------------------------------------------- processes


def _share_cores(workers: int) -> None:
    """N processes each running torch on every core oversubscribe the machine: give each its share."""
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def _worker_main(url: str, factory: HandlerFactory, cfg: RunnerConfig, results: Any, workers: int) -> None:
    _share_cores(workers)
    db = Database(url=url, embedded=False, engine=create_engine(url))
    try:
        results.put(work(db, factory(db, cfg.run_id), cfg))
    except Exception as e:  # noqa: BLE001 - reported by the parent, which fails the run with it
        results.put({"error": "".join(traceback.format_exception_only(type(e), e)).strip()})
    finally:
        db.dispose()


def _run_processes(
    db: Database,
    factory: HandlerFactory,
    cfg: RunnerConfig,
    workers: int,
    advance: Callable[[int], None],
    total: int,
) -> list[dict[str, Any]]:
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_worker_main, args=(db.url, factory, cfg, results, workers), daemon=False)
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    collected: list[dict[str, Any]] = []
    finished_before = None
    while any(p.is_alive() for p in procs) or not results.empty():
        while not results.empty():
            collected.append(results.get())
        with db.engine.connect() as conn:
            c = unit_counts(conn, cfg.stage, cfg.scope)
        finished = c.get("done", 0) + c.get("failed", 0)
        if finished_before is not None and finished > finished_before:
            advance(finished - finished_before)
        finished_before = finished
        time.sleep(0.2)
    for p in procs:
        p.join()
    errors = [c["error"] for c in collected if "error" in c]
    if errors:
        raise KbError(f"{len(errors)} of {workers} worker processes failed: {errors[0]}")
    return collected


def run_stage(
    db: Database,
    *,
    stage: str,
    params: dict[str, Any],
    units: list[tuple[str, dict[str, Any]]],
    factory: HandlerFactory,
    workers: int = 1,
    batch_size: int = 4,
    lease_s: float = DEFAULT_LEASE_S,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_failed: bool = False,
    progress: bool | None = None,
    run_params: dict[str, Any] | None = None,
    counters: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Run a stage over UNITS (key, payload) as one pipeline run; returns the run's counts (with run_id).

    params: what defines the work (its hash is the units' scope: the same params resume the same units).
    factory(db, run_id) builds the handler in each worker; with workers > 1 it must be picklable
    (a module-level function or a functools.partial of one). counters: the handler's count keys, reported
    as 0 when nothing was done.
    """
    scope = unit_scope(stage, params)
    with pipeline_run(db, stage, {**params, **(run_params or {}), "workers": workers, "scope": scope}) as (
        run_id,
        counts,
    ):
        with db.engine.begin() as conn:
            counts["units_enqueued"] = enqueue(conn, stage, scope, units, run_id)
            if retry_failed:
                counts["units_reset"] = reset_failed(conn, stage, scope)
            counts["units_released"] = release_dead_local_claims(conn, stage, scope)
            before = unit_counts(conn, stage, scope)
        todo = before.get("pending", 0) + before.get("claimed", 0)
        cfg = RunnerConfig(
            stage=stage,
            scope=scope,
            run_id=run_id,
            batch_size=batch_size,
            lease_s=lease_s,
            max_attempts=max_attempts,
        )
        per_worker: list[dict[str, Any]] = []
        counts.update(
            units_done=0, units_failed=0, units_retried=0, units_lost=0, **dict.fromkeys(counters, 0)
        )
        with progress_bar(
            todo, f"{stage} ({workers} worker{'s' if workers > 1 else ''})", enabled=progress
        ) as advance:
            if todo and workers <= 1:
                per_worker.append(work(db, factory(db, run_id), cfg, advance))
            elif todo:
                per_worker = _run_processes(db, factory, cfg, workers, advance, todo)
        spans = [c.pop("span") for c in per_worker if "span" in c]
        if spans:  # first claim of any worker to last commit of any: the stage's working time
            counts["work_span_s"] = max(e for _, e in spans) - min(b for b, _ in spans)
        for c in per_worker:
            wall = c.pop("wall_s", 0.0)
            counts["work_wall_s"] = max(counts.get("work_wall_s", 0.0), wall)  # the slowest worker
            counts["worker_wall_s_total"] = counts.get("worker_wall_s_total", 0.0) + wall
            _add(counts, c)
        with db.engine.connect() as conn:
            after = unit_counts(conn, stage, scope)
            counts["failures_recorded"] = conn.execute(
                sa.text("SELECT count(*) FROM failure WHERE run_id = :r"), {"r": run_id}
            ).scalar_one()
        counts["units_total"] = sum(after.values())
        counts["units_status"] = after
        for k in ("db_s", "process_s", "work_wall_s", "worker_wall_s_total", "work_span_s"):
            if k in counts:
                counts[k] = round(counts[k], 4)
        outcome = _outcome(db, stage, scope, after)
        if outcome["outcome"] == "failed":  # nothing of the selection done, and units failed
            counts.status = "failed"
            counts.error = f"all {outcome['failed']} units failed; first reasons: " + "; ".join(
                outcome["first_reasons"]
            )
    return {"run_id": run_id, "stage": stage, **outcome, **counts}


def _outcome(db: Database, stage: str, scope: str, units_status: dict[str, int]) -> dict[str, Any]:
    """The selection's state after the run: succeeded, partial or failed, with the first failure reasons.

    Judged on every unit of the scope, not only this run's: rerunning a command whose units all failed
    before still says so (and --retry-failed tries them again)."""
    done, failed = units_status.get("done", 0), units_status.get("failed", 0)
    reasons: list[str] = []
    if failed:
        with db.engine.connect() as conn:
            reasons = (
                conn.execute(
                    sa.text(
                        "SELECT error FROM (SELECT error, min(id) AS first FROM work_unit WHERE stage = :s AND scope = :sc "
                        "AND status = 'failed' AND error IS NOT NULL GROUP BY error) e ORDER BY first LIMIT 3"
                    ),
                    {"s": stage, "sc": scope},
                )
                .scalars()
                .all()
            )
    return {
        "outcome": verdict(done, failed),
        "failed": failed,
        "total": sum(units_status.values()),
        "first_reasons": [r[:300] for r in reasons],
    }
