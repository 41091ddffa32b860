"""One worker of a stage: claim a batch, let the stage's handler process it, store each unit's results, failure
rows and `done` mark in one transaction guarded by the claim (`pipelines.runner` says why).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import sqlalchemy as sa

from kb.db import Database
from kb.models import Failure
from kb.secrets import scrub
from pipelines.work_queue import (
    DEFAULT_LEASE_S,
    DEFAULT_MAX_ATTEMPTS,
    Unit,
    claim,
    release_dead_local_claims,
    worker_id,
)


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


def add_counts(into: dict[str, Any], counts: dict[str, Any]) -> None:
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


def _store_batch(
    conn: sa.Connection,
    handler: StageHandler,
    cfg: RunnerConfig,
    me: str,
    units: list[Unit],
    outcomes: list[Outcome],
) -> list[dict[str, Any]]:
    """Store a batch of units: the handler's writes per unit, then one INSERT of all failure rows and
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
        add_counts(counts, w)
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
            [written] = _store_batch(conn, handler, cfg, me, [unit], [outcome])
    except _LeaseLost:
        counts["units_lost"] += 1  # someone took the unit over after our lease expired; their result counts
        return
    except Exception as e:  # noqa: BLE001 - this unit's results could not be stored: retry it, bounded
        _record_errors(
            conn, cfg, me, [unit], f"storing results failed: {type(e).__name__}: {e}"[:2000], counts
        )
        return
    add_counts(counts, written)
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
