"""Launching training processes: a killed JIT build's lock does not hang later runs, a silent launch is
stopped at its progress deadline, and the per-test deadline in conftest fails a hung test."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from pipelines.train.extensions import clear_stale_builds, prepare
from pipelines.train.run import TrainingProcessFailed, stream


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tells live builders apart through /proc")
def test_a_lock_no_live_builder_holds_is_cleared_with_its_half_build(tmp_path):
    stale = tmp_path / "deepspeed_shm_comm"  # TORCH_EXTENSIONS_DIR/<ext>/lock
    stale.mkdir()
    (stale / "lock").touch()
    (stale / "shm.o").write_bytes(b"half")
    building = tmp_path / "py311_cpu" / "fused_adam"  # the default layout: <root>/<py_acc>/<ext>/lock
    building.mkdir(parents=True)
    fd = os.open(building / "lock", os.O_CREAT | os.O_EXCL)  # what torch's FileBaton holds while building
    try:
        assert clear_stale_builds(tmp_path) == [stale]
        assert not stale.exists()  # rebuilt from scratch: no lock, and no half-written objects
        assert (building / "lock").exists()
    finally:
        os.close(fd)


def test_prepare_names_the_directory_it_cleared(tmp_path, capsys):
    (tmp_path / "deepspeed_shm_comm").mkdir()
    (tmp_path / "deepspeed_shm_comm" / "lock").touch()
    prepare({"TORCH_EXTENSIONS_DIR": str(tmp_path)})
    err = capsys.readouterr().err
    assert str(tmp_path / "deepspeed_shm_comm") in err and "stale" in err


@pytest.mark.timeout(120)
def test_a_silent_launch_is_stopped_at_its_progress_deadline_with_its_workers(tmp_path):
    pid_file = tmp_path / "worker.pid"
    script = (
        "import subprocess, sys, time; "
        "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
        f"open({str(pid_file)!r}, 'w').write(str(w.pid)); print('loading', flush=True); time.sleep(600)"
    )
    log = tmp_path / "train.log"
    with pytest.raises(TrainingProcessFailed, match=r"printed nothing for 1 s") as e:
        stream([sys.executable, "-c", script], dict(os.environ), log, 1.0)
    assert str(log) in str(e.value) and "\n" not in str(e.value)
    assert log.read_text() == "loading\n"
    worker = int(pid_file.read_text())
    deadline = time.monotonic() + 30
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker), "the launched process group outlived the launch"


def test_a_launch_that_prints_finishes_with_its_code(tmp_path):
    code = stream(
        [sys.executable, "-c", "print('a'); print('b'); raise SystemExit(3)"],
        dict(os.environ),
        tmp_path / "train.log",
        30,
    )
    assert code == 3 and (tmp_path / "train.log").read_text() == "a\nb\n"
