"""The run lifecycle, one home for both run records: `pipeline_run` (a stage) and `training_run`.

A run is owned by the process that started it. The owner records its host and pid and renews a lease
(`heartbeat_at`) from a background thread while the run is open, and closes the row itself: succeeded,
failed (with the reason), or interrupted (Ctrl-C or SIGTERM, which this module turns into the same
KeyboardInterrupt). An owner killed with SIGKILL, or a host that died, closes nothing; any command that
opens the KB then calls `mark_orphaned_runs`, which marks `interrupted` every run still `running` whose
lease ran out (any host: it compares with the database's clock) or whose owner on this host no longer
exists (at once, without waiting for the lease). Interrupted runs can be resumed: a pipeline stage by
running the same command again (its units are keyed by its parameters), training with `--resume`.

Every row a pipeline run writes carries its id. Every error and parameter stored here goes through
`kb.secrets.scrub` first.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any, Self

import sqlalchemy as sa

from kb import config
from kb.db import Database
from kb.errors import ConflictError, KbError
from kb.models import PipelineRun, TrainingRun
from kb.models._common import utcnow
from kb.secrets import scrub
from kb.signals import interruption_reason, sigterm_as_interrupt

HEARTBEAT_S = float(os.environ.get("REASONFLUX_RUN_HEARTBEAT_S", "15"))
# A run whose lease is this old has lost its owner. Several heartbeats long, so a busy owner is not
# mistaken for a dead one; the fast path (same host, pid gone) does not wait for it.
LEASE_S = float(os.environ.get("REASONFLUX_RUN_LEASE_S", "120"))

MODELS = {"pipeline": PipelineRun, "training": TrainingRun}
TABLES: dict[str, sa.Table] = {kind: model.__table__ for kind, model in MODELS.items()}


# Signals live in kb.signals (light: the CLI installs the handler before importing the database layer).


def error_text(e: BaseException) -> str:
    return scrub("".join(traceback.format_exception_only(type(e), e)).strip())


# -- owner and lease ---------------------------------------------------------------------------------


def owner_values() -> dict[str, Any]:
    """What a new run row records about its owner."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "heartbeat_at": utcnow()}


class Heartbeat:
    """Renews a running row's lease every HEARTBEAT_S seconds until stopped."""

    def __init__(self, db: Database, kind: str, run_id: int, interval_s: float = HEARTBEAT_S):
        self.db, self.table, self.run_id, self.interval_s = db, TABLES[kind], run_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{kind}-{run_id}", daemon=True)
        self._warned = False

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def beat(self) -> bool:
        t = self.table
        with self.db.engine.begin() as conn:
            return (
                conn.execute(
                    sa.update(t)
                    .where(t.c.id == self.run_id, t.c.status == "running")
                    .values(heartbeat_at=sa.func.now())
                ).rowcount
                == 1
            )

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                alive = self.beat()
            except Exception:  # noqa: BLE001, S112 - a missed beat is retried; the lease allows several
                continue
            if not alive and not self._warned:
                self._warned = True
                print(
                    f"warning: run {self.run_id} was marked interrupted by another command (no heartbeat "
                    f"for {LEASE_S:.0f} s); this process still finishes it",
                    file=sys.stderr,
                )


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process nobody has reaped yet is a zombie: dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _orphans(conn: sa.Connection, t: sa.Table, lease_s: float) -> tuple[Any, Any]:
    """(where, reason): the running rows of T whose owner is gone, and why, as SQL expressions.

    Gone: its lease is older than lease_s by the database's clock (any host), or it ran on this host and
    its pid no longer exists."""
    local = conn.execute(
        sa.select(t.c.id, t.c.pid).where(
            t.c.status == "running", t.c.host == socket.gethostname(), t.c.pid.is_not(None)
        )
    ).all()
    dead = [r.id for r in local if r.pid != os.getpid() and not pid_alive(r.pid)]
    stale = sa.func.coalesce(t.c.heartbeat_at, t.c.started_at) < sa.func.now() - sa.func.make_interval(
        0, 0, 0, 0, 0, 0, lease_s
    )
    reason = sa.case(
        (t.c.id.in_(dead), "its process on this host is gone (killed?)"),
        else_=f"its owner stopped renewing its lease (no heartbeat for {lease_s:.0f} s)",
    )
    return sa.and_(t.c.status == "running", sa.or_(t.c.id.in_(dead), stale)), reason


def orphaned_runs(conn: sa.Connection, *, lease_s: float = LEASE_S) -> dict[str, list[dict[str, Any]]]:
    """What mark_orphaned_runs would mark, without writing: {kind: [{id, stage, host, reason}]}."""
    out = {}
    for kind, t in TABLES.items():
        where, reason = _orphans(conn, t, lease_s)
        rows = (
            conn.execute(
                sa.select(t.c.id, t.c.stage, t.c.host, reason.label("reason")).where(where).order_by(t.c.id)
            )
            .mappings()
            .all()
        )
        if rows:
            out[kind] = [dict(r) for r in rows]
    return out


def mark_orphaned_runs(db: Database, *, lease_s: float = LEASE_S) -> dict[str, list[int]]:
    """Mark `interrupted` every running run whose owner is gone (see _orphans); returns the ids per kind.
    One UPDATE per table."""
    marked = {}
    with db.engine.begin() as conn:
        for kind, t in TABLES.items():
            where, reason = _orphans(conn, t, lease_s)
            ids = (
                conn.execute(
                    sa.update(t)
                    .where(where)
                    .values(
                        status="interrupted",
                        finished_at=sa.func.now(),
                        error=sa.func.concat("interrupted: ", reason),
                    )
                    .returning(t.c.id)
                )
                .scalars()
                .all()
            )
            if ids:
                marked[kind] = sorted(ids)
    return marked


@contextlib.contextmanager
def owned(
    db: Database,
    kind: str,
    run_id: int,
    finish: Callable[[str, str | None], None],
    verdict: Callable[[], tuple[str, str | None]] = lambda: ("succeeded", None),
) -> Iterator[None]:
    """The body of a run: heartbeats while it runs, then finish(status, error) once.

    verdict() gives the status of a body that returned (a stage whose every unit failed is `failed`).
    """
    try:
        with Heartbeat(db, kind, run_id), sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as e:
        finish("interrupted", interruption_reason(e))
        raise
    except BaseException as e:
        finish("failed", error_text(e))
        raise
    else:
        finish(*verdict())


# -- the rows: every run of either kind starts and finishes here ------------------------------------

_SCRUBBED = ("params", "config")  # what the caller gave, which may hold secrets (tokens in URLs, keys)


def open_run(db: Database, kind: str, **values: Any) -> int:
    """A new `running` row of KIND (pipeline | training) with VALUES, its owner and the code version;
    its id. An IntegrityError (a unique constraint of the kind) reaches the caller."""
    values = {k: scrub(v) if k in _SCRUBBED else v for k, v in values.items()}
    with db.session() as s:
        run = MODELS[kind](code_version=config.code_version(), **owner_values(), **values)
        s.add(run)
        s.commit()
        return run.id


def close_run(
    db: Database, kind: str, run_id: int, status: str, *, error: str | None = None, **values: Any
) -> None:
    """End a run of KIND: its status, the reason when it did not succeed, and VALUES (counts, metrics)."""
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(TABLES[kind])
            .where(TABLES[kind].c.id == run_id)
            .values(status=status, error=scrub(error), finished_at=utcnow(), **values)
        )


# -- pipeline runs -----------------------------------------------------------------------------------


class RunCounts(dict):
    """The counts a stage fills in; `status` and `error` may be set to override the run's verdict."""

    status: str | None = None
    error: str | None = None


def start_run(db: Database, stage: str, params: dict[str, Any] | None = None) -> int:
    return open_run(db, "pipeline", stage=stage, params=params or {})


def finish_run(
    db: Database, run_id: int, status: str, counts: dict[str, Any] | None = None, error: str | None = None
) -> None:
    close_run(db, "pipeline", run_id, status, error=error, counts=dict(counts or {}))


@contextlib.contextmanager
def pipeline_run(
    db: Database, stage: str, params: dict[str, Any] | None = None
) -> Iterator[tuple[int, RunCounts]]:
    """Yields (run_id, counts); the run ends succeeded, failed (with the reason) or interrupted."""
    run_id = start_run(db, stage, params)
    counts = RunCounts()
    with owned(
        db,
        "pipeline",
        run_id,
        lambda status, error: finish_run(db, run_id, status, counts, error),
        lambda: (counts.status or "succeeded", counts.error),
    ):
        yield run_id, counts


# -- one run at a time per name ---------------------------------------------------------------------


@contextlib.contextmanager
def exclusive(db: Database, stage: str, param: str, name: str) -> Iterator[None]:
    """Only one `stage` run whose params[param] is `name` at a time, across hosts: a PostgreSQL advisory
    lock held on its own connection while the block runs (a killed owner's connection closes, and the lock
    goes with it).

    A second one raises ConflictError (exit 3) naming the running holder.
    """
    conn = db.engine.connect()
    try:
        key = {"s": stage, "n": name}
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(hashtext(:s), hashtext(:n))"), key).scalar():
            raise ConflictError(
                f"{stage} {name!r} is already running ({_holder(conn, stage, param, name)}); "
                "wait for it to end, or stop it, then run this again"
            )
        conn.commit()  # no transaction left open for the lock's lifetime
        try:
            yield
        finally:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:s), hashtext(:n))"), key)
                conn.commit()
            except Exception:  # noqa: BLE001 - lost: the lock went with it; never pool a session that may hold it
                conn.invalidate()
    finally:
        conn.close()


def _holder(conn: sa.Connection, stage: str, param: str, name: str) -> str:
    row = conn.execute(
        sa.text(
            "SELECT id, host, pid, started_at FROM pipeline_run WHERE stage = :s AND status = 'running' "
            "AND params->>:p = :n ORDER BY id DESC LIMIT 1"
        ),
        {"s": stage, "p": param, "n": name},
    ).first()
    if row is None:
        return "another process holds its lock"
    return f"run {row.id}, pid {row.pid} on {row.host}, started {row.started_at:%Y-%m-%d %H:%M:%S}"


# -- outcomes and exit codes -------------------------------------------------------------------------


class RunFailed(KbError):
    """The command's work failed: every unit (or session) failed. The run is recorded `failed`."""

    exit_code = 5


class RunPartlyFailed(KbError):
    """Some units (or sessions) failed, the others succeeded."""

    exit_code = 6


def verdict(done: int, failed: int) -> str:
    """succeeded, partial (some failed) or failed (none done, some failed)."""
    if failed and not done:
        return "failed"
    return "partial" if failed else "succeeded"


def raise_for_outcome(result: dict[str, Any]) -> None:
    """After a command printed its result: exit 5 if its work failed, 6 if part of it did, with reasons."""
    outcome = result.get("outcome")
    if outcome not in ("failed", "partial"):
        return
    what = (
        f"{result.get('stage', 'run')} run {result['run_id']}"
        if result.get("run_id")
        else result.get("stage", "run")
    )
    reasons = "; ".join(result.get("first_reasons") or []) or "no reason recorded"
    detail = (
        f"{result.get('failed', 0)} of {result.get('total', 0)} {result.get('units', 'units')} failed; "
        f"first reasons: {reasons}"
    )
    hint = f" (see `reasonflux runs show {result['run_id']}`)" if result.get("run_id") else ""
    if outcome == "failed":
        raise RunFailed(f"{what} failed: {detail}{hint}")
    raise RunPartlyFailed(f"{what} partly failed: {detail}{hint}")
