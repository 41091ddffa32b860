"""Lock waits of the owner's commands, bounded: the advisory locks they take (one migrator, one role creator,
one database creator) and the table locks a migration needs. A session that holds one forever (a
reader's open transaction, say) makes the next command fail naming who holds it, instead of hanging."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa

from kb.errors import TimedOut

WAIT_S = 60.0  # how long a command waits for a lock another session holds


def advisory_lock(
    conn: sa.Connection, key: int, what: str, *, xact: bool = False, wait_s: float | None = None
) -> None:
    """Take pg_advisory_lock(key) (pg_advisory_xact_lock with xact) within WAIT_S; TimedOut names the holder.

    lock_timeout bounds the wait in the server, and is put back as it was once the lock is held (it
    would bound the caller's own statements too). On a timeout the connection's transaction is rolled back."""
    wait_ms = max(1, int((WAIT_S if wait_s is None else wait_s) * 1000))
    previous = conn.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar()
    conn.execute(sa.text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": str(wait_ms)})
    try:
        conn.execute(
            sa.text(f"SELECT {'pg_advisory_xact_lock' if xact else 'pg_advisory_lock'}(:k)"), {"k": key}
        )
    except sa.exc.OperationalError as e:
        if getattr(e.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        conn.rollback()
        conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": previous})  # autocommit
        raise TimedOut(
            f"waited {wait_ms / 1000:g} s for the lock on {what}, held by {holder(conn, key)}; "
            "nothing was changed. Try again when it is done, or end that session "
            "(SELECT pg_terminate_backend(pid))"
        ) from None
    conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": previous})


def holder(conn: sa.Connection, key: int) -> str:
    """'pid 123 (role r, application "x", connected 2026-01-01 12:00:01)' for the session holding advisory lock KEY."""
    row = conn.execute(
        sa.text(
            "SELECT a.pid, a.usename, a.application_name, to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS') "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k LIMIT 1"
        ),
        {"k": key},
    ).first()
    return "another session (no longer listed)" if row is None else _describe(row)


@contextlib.contextmanager
def bounded_lock_waits(conn: sa.Connection, what: str, *, wait_s: float | None = None) -> Iterator[None]:
    """Statements on CONN (a migration's DDL) wait at most WAIT_S for each table lock; a wait that runs out
    rolls back and raises TimedOut naming the sessions holding locks (a reader's open transaction, say).
    Call it between transactions: it commits the setting."""
    wait_ms = max(1, int((WAIT_S if wait_s is None else wait_s) * 1000))
    previous = conn.execute(sa.text("SELECT current_setting('lock_timeout')")).scalar()
    conn.execute(sa.text("SELECT set_config('lock_timeout', :ms, false)"), {"ms": str(wait_ms)})
    conn.commit()  # the setting lasts for the session; what runs inside starts its own transaction
    try:
        yield
    except sa.exc.OperationalError as e:
        if getattr(e.orig, "sqlstate", None) != "55P03":  # lock_not_available
            raise
        conn.rollback()
        raise TimedOut(
            f"{what} waited {wait_ms / 1000:g} s for a table lock, held by "
            f"{table_lock_holders(conn)}; nothing was changed. Try again when they are done, or end "
            "them (SELECT pg_terminate_backend(pid))"
        ) from None
    finally:
        if (
            conn.in_transaction()
        ):  # a failed statement leaves the transaction aborted; the caller rolls it back anyway
            conn.rollback()
        conn.execute(sa.text("SELECT set_config('lock_timeout', :v, false)"), {"v": previous})


def table_lock_holders(conn: sa.Connection) -> str:
    """The other sessions holding locks on relations of this database, as holder() names them."""
    rows = conn.execute(
        sa.text(
            "SELECT DISTINCT a.pid, a.usename, a.application_name, "
            "       to_char(a.backend_start, 'YYYY-MM-DD HH24:MI:SS') "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_backend_pid() AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY a.pid LIMIT 5"
        )
    ).all()
    return "; ".join(_describe(row) for row in rows) or "another session (no longer listed)"


def _describe(row) -> str:
    app = f', application "{row[2]}"' if row[2] else ""
    return f"pid {row[0]} (role {row[1]}{app}, connected {row[3]})"
