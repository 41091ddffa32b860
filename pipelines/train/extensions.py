"""torch's JIT-built extensions (DeepSpeed builds `deepspeed_shm_comm` and others on first use) and the lock
a killed build leaves behind.

torch guards each build directory with a bare `lock` file (created O_EXCL, its descriptor held open by the
builder until the build ends). A builder killed mid-build leaves the file; every later process then waits for
it forever, and deleting the file alone is not enough (the waiter then loads a .so that was never written).
Before a launch, a lock that no live process holds open is stale: its build directory is removed whole so the
next worker rebuilds it cleanly.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from kb.errors import KbError

LOCK_NAME = "lock"
# A builder closes the lock's descriptor a moment before it removes the file; a lock seen unheld twice, this
# far apart, is not in that window.
RECHECK_S = 0.5


def build_root(env: Mapping[str, str]) -> Path:
    """The root the workers will build under: TORCH_EXTENSIONS_DIR, else torch's per-user default."""
    given = env.get("TORCH_EXTENSIONS_DIR")
    if given:
        return Path(given).expanduser()
    from torch.utils.cpp_extension import get_default_build_root

    return Path(get_default_build_root())


def _locks(root: Path) -> list[Path]:
    # <root>/<ext>/lock when TORCH_EXTENSIONS_DIR is set; <root>/<py311_cpu>/<ext>/lock by default.
    return sorted({*root.glob(f"*/{LOCK_NAME}"), *root.glob(f"*/*/{LOCK_NAME}")})


def _open_files() -> set[tuple[int, int]] | None:
    """(device, inode) of every file some process we can see holds open; None where /proc cannot tell."""
    proc = Path("/proc")
    if not sys.platform.startswith("linux") or not proc.is_dir():
        return None
    held: set[tuple[int, int]] = set()
    for fd_dir in proc.glob("[0-9]*/fd"):
        try:
            fds = list(fd_dir.iterdir())
        except OSError:  # the process ended, or is not ours
            continue
        for fd in fds:
            try:
                st = fd.stat()
            except OSError:
                continue
            held.add((st.st_dev, st.st_ino))
    return held


def _unheld(locks: list[Path]) -> list[Path]:
    held = _open_files()
    if held is None:
        return []
    out = []
    for lock in locks:
        try:
            st = lock.stat()
        except FileNotFoundError:
            continue
        if (st.st_dev, st.st_ino) not in held:
            out.append(lock)
    return out


def clear_stale_builds(root: Path) -> list[Path]:
    """Remove every build directory under `root` whose lock no live builder holds; returns those removed.

    Raises OSError (naming the directory) when a stale one cannot be removed.
    """
    suspects = _unheld(_locks(root))
    if not suspects:
        return []
    time.sleep(RECHECK_S)
    removed = []
    for lock in _unheld(suspects):
        shutil.rmtree(lock.parent)
        removed.append(lock.parent)
    return removed


def prepare(env: Mapping[str, str]) -> None:
    """Before launching workers that may JIT-build: clear stale builds, or fail in one line naming the place."""

    root = build_root(env)
    try:
        for directory in clear_stale_builds(root):
            print(
                f"removed the stale torch extension build {directory} (its lock had no live builder); "
                "it will be rebuilt",
                file=sys.stderr,
            )
    except OSError as e:
        raise KbError(
            f"cannot clear a stale torch extension build under {root}: {e.strerror or e}; remove "
            f"that directory (or set TORCH_EXTENSIONS_DIR to another) and retry"
        ) from None
