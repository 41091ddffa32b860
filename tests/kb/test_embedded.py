"""The embedded server: auto-upgraded on first use, shared by concurrent commands, stopped by the last one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home_root() -> Iterator[Path]:
    """A folder outside pytest's basetemp: the server runs as another user when we are root, and a
    concurrent pytest session resets its basetemp root to mode 0700, which would lock that user out."""
    root = Path(tempfile.mkdtemp(prefix="rf-home-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(REASONFLUX_HOME=str(home), PYTHONPATH=str(ROOT))
    return env


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kb.cli", *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server only")
def test_concurrent_commands_share_one_server_and_the_last_stops_it(home_root):
    home = home_root / "home"
    first = _cli(home, "db", "info", "--json")
    assert first.returncode == 0, first.stderr
    info = json.loads(first.stdout)
    assert info["embedded"] and info["revision"] == info["head"] and info["pgvector_version"]

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import time; from kb.db import connect; d = connect(); print('up', flush=True); "
                "c = d.engine.connect(); time.sleep(4); c.close()"
            ),
        ],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "up"
    second = _cli(home, "db", "current", "--json")  # runs while the holder keeps the server busy
    assert second.returncode == 0, second.stderr
    assert holder.wait(timeout=60) == 0, holder.stderr.read()

    pid_file = home / "pgdata" / "postmaster.pid"
    for _ in range(50):
        if not pid_file.exists():
            break
        time.sleep(0.1)
    assert not pid_file.exists(), "the embedded server was left running after the last command exited"
    # And it starts again on the same data directory, data intact.
    again = _cli(home, "db", "info", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["revision"] == info["head"]


def _wait_stopped(home: Path) -> bool:
    pid_file = home / "pgdata" / "postmaster.pid"
    for _ in range(100):
        if not pid_file.exists():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server only")
def test_a_killed_holder_does_not_keep_the_server_running(home_root):
    """kill -9 leaves the holder's pid in pgserver's attach list; the next command prunes it and stops the server."""
    home = home_root / "home"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from kb.db import connect; d = connect(); print('up', flush=True); time.sleep(120)",
        ],
        env=_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "up"
        holders = json.loads((home / "pgdata" / ".handle_pids.json").read_text())
        assert holder.pid in holders
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert (home / "pgdata" / "postmaster.pid").exists()  # the killed holder could not stop it
    after = _cli(home, "db", "current", "--json")
    assert after.returncode == 0, after.stderr
    assert _wait_stopped(home), "a dead pid in the attach list kept the embedded server running"
    assert json.loads((home / "pgdata" / ".handle_pids.json").read_text()) == []


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server only")
def test_two_first_commands_at_once_on_a_fresh_home_both_succeed(home_root):
    home = home_root / "fresh"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "kb.cli", "db", "info", "--json"],
            env=_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [(p.wait(timeout=180), *p.communicate()) for p in procs]
    for rc, out, err in results:
        assert rc == 0, err
        info = json.loads(out)
        assert info["revision"] == info["head"]
    assert _wait_stopped(home)


@pytest.mark.slow
@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server only")
def test_an_explicit_downgrade_is_not_undone_by_the_next_command(home_root):
    home = home_root / "home"
    head = json.loads(_cli(home, "db", "current", "--json").stdout)["head"]
    down = _cli(home, "db", "downgrade", "base")
    assert down.returncode == 0 and "at revision base" in down.stdout, down.stderr
    refused = _cli(home, "templates", "list")
    assert refused.returncode == 4, refused.stderr
    assert "downgraded on purpose" in refused.stderr and "reasonflux db upgrade" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert (
        json.loads(_cli(home, "db", "current", "--json").stdout)["current"] is None
    )  # still where it was left
    assert _cli(home, "db", "upgrade").returncode == 0
    listed = _cli(home, "templates", "list", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert json.loads(_cli(home, "db", "current", "--json").stdout)["current"] == head


@pytest.mark.skipif(bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server only")
def test_an_embedded_server_that_cannot_start_is_one_line(home_root):
    pgdata = home_root / "home" / "pgdata"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("16\n")  # a data directory of another major version
    result = _cli(home_root / "home", "templates", "list")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "could not start the embedded PostgreSQL" in result.stderr and "version 16" in result.stderr
