"""Wall time of short `reasonflux` commands, side by side with `python -c pass`.

    python benchmarks/cli_latency.py [--runs 10]

Each row is the median of RUNS runs on a throwaway REASONFLUX_HOME (its embedded server is set up by
one unmeasured command first, and stopped at the end):

  python -c pass              the interpreter alone: the floor
  reasonflux --help           importing the CLI and listing every command
  templates list (first)      the embedded server stopped beforehand (`db stop`): it starts
  templates list (second)     run right after the first, within the linger window
                              (REASONFLUX_DB_LINGER): the server is still up

Targets (issue 17): --help under 0.5 s; a second `templates list` under 1 s. The machine's load moves
every row; the ratio column (to `python -c pass`) moves less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "kb.cli"]


def _run(cmd: list[str], env: dict[str, str], check: bool = True) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    elapsed = time.perf_counter() - start
    if check and proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="rf-cli-latency-"))
    env = {**os.environ, "REASONFLUX_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("DATABASE_URL", None)
    env.setdefault("REASONFLUX_DB_LINGER", "300")
    # `db stop` is new with the linger: without it (an older checkout) every command stops the server anyway.
    stop = [*CLI, "db", "stop"]
    times: dict[str, list[float]] = {
        k: []
        for k in ("python -c pass", "reasonflux --help", "templates list (first)", "templates list (second)")
    }
    try:
        _run([*CLI, "templates", "list"], env)  # initdb and migrations: not what this measures
        for _ in range(args.runs):
            times["python -c pass"].append(_run([sys.executable, "-c", "pass"], env))
            times["reasonflux --help"].append(_run([*CLI, "--help"], env))
            _run(stop, env, check=False)
            times["templates list (first)"].append(_run([*CLI, "templates", "list"], env))
            times["templates list (second)"].append(_run([*CLI, "templates", "list"], env))
    finally:
        _run(stop, env, check=False)
        shutil.rmtree(home, ignore_errors=True)

    floor = statistics.median(times["python -c pass"])
    print(f"median of {args.runs} runs (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs)")
    print(f"{'command':<28}{'median s':>10}{'x pass':>9}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<28}{med:>10.3f}{med / floor:>9.1f}")


if __name__ == "__main__":
    main()
