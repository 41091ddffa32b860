"""The work-unit queue in `work_unit`, in set-based SQL: enqueue a stage's units under a scope (the hash of its
parameters), claim batches with `FOR UPDATE SKIP LOCKED`, take back the claims of dead local workers, count.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from kb.models import WorkUnit
from kb.runs import pid_alive

DEFAULT_LEASE_S = 900.0
DEFAULT_MAX_ATTEMPTS = 3


@dataclass
class Unit:
    id: int
    key: str
    payload: dict[str, Any]
    attempts: int


def unit_scope(stage: str, params: dict[str, Any]) -> str:
    canonical = json.dumps(params, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(f"{stage}\0{canonical}".encode()).hexdigest()[:16]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


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
