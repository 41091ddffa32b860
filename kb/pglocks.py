"""Advisory locks the owner's commands take (one migrator, one role creator, one database creator), with a
bounded wait: a session that holds one forever makes the next command fail with who holds it, instead
of hanging."""

from __future__ import annotations

import sqlalchemy as sa

from kb.errors import TimedOut

WAIT_S = 60.0  # how long a command waits for a lock another session holds


def advisory_lock(conn: sa.Connection, key: int, what: str, *, xact: bool = False,
                  wait_s: float | None = None) -> None:
    """Take pg_advisory_lock(key) (pg_advisory_xact_lock with xact) within WAIT_S; TimedOut names the holder.

    lock_timeout bounds the wait in the server, and is put back as it was once the lock is held (it
    would bound the caller's own statements too). On a timeout the connection's transaction is rolled back."""
    wait_ms = max(1, int((WAIT_S if wait_s is None else wait_s) * 1000))
    previous = conn.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar()
    conn.execute(sa.text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": str(wait_ms)})
    try:
        conn.execute(sa.text(f"SELECT {'pg_advisory_xact_lock' if xact else 'pg_advisory_lock'}(:k)"), {"k": key})
    except sa.exc.OperationalError as e:
        if getattr(e.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        conn.rollback()
        conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": previous})  # autocommit
        raise TimedOut(f"waited {wait_ms / 1000:g} s for the lock on {what}, held by {holder(conn, key)}; "
                       "nothing was changed. Try again when it is done, or end that session "
                       "(SELECT pg_terminate_backend(pid))") from None
    conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": previous})


def holder(conn: sa.Connection, key: int) -> str:
    """'pid 123 (role r, application "x", connected 2026-01-01 12:00:01)' for the session holding advisory lock KEY."""
    row = conn.execute(sa.text(
        "SELECT a.pid, a.usename, a.application_name, to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS') "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k LIMIT 1"), {"k": key}).first()
    if row is None:
        return "another session (no longer listed)"
    app = f', application "{row[2]}"' if row[2] else ""
    return f"pid {row[0]} (role {row[1]}{app}, connected {row[3]})"
