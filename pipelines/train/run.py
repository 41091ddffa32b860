"""Executing a plan: the training_run row, the training (in process or via `accelerate launch`), the
navigator registration. `reasonflux train sft|dpo` and the demo both come through `execute`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kb.db import Database
from kb.errors import KbError
from pipelines.train import extensions, navigators, training_runs
from pipelines.train.launch import LaunchPlan, worker_env, write_spec
from pipelines.train.worker import run_spec


class TrainingProcessFailed(KbError):
    pass


def execute(db: Database, p: LaunchPlan, *, extra_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run the plan to the end; returns the finished run (with its navigator). Failures are recorded first."""
    run_id = training_runs.start_run(
        db,
        stage=p.stage,
        base_model=p.base_model,
        dataset_version_id=p.dataset.id,
        config=p.run_config(),
        resumed_from=p.resume_run,
    )
    output_dir = p.output_dir(run_id, datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
    training_runs.set_output_path(db, run_id, output_dir, p.run_config(output_dir))
    with training_runs.recorded_run(db, run_id) as final:
        spec_path = write_spec(p, run_id, output_dir)
        if p.launcher == "inprocess":
            # The trainer prints its logs; they go to stderr so stdout stays the command's result (--json).
            with contextlib.redirect_stdout(sys.stderr):
                final.update(run_spec(db, p.spec(run_id, output_dir), extra_callbacks))
        else:
            _launch(p, spec_path, db)
    name = p.name or navigators.navigator_name_for(p.stage, run_id)
    navigators.register_navigator(
        db, name=name, path=output_dir, base_model=p.base_model, training_run_id=run_id
    )
    return training_runs.get_run(db, run_id, with_steps=False)


def _launch(p: LaunchPlan, spec_path: Path, db: Database) -> None:
    """`accelerate launch` in a child process; Ctrl-C / SIGTERM here stop it before the run is recorded."""
    env = worker_env(db, p)
    if p.deepspeed_path is not None:
        extensions.prepare(env)  # DeepSpeed JIT-builds ops: a killed build's lock would hang the worker
    log_path = spec_path.parent / "train.log"
    code = stream(p.command(str(spec_path)), env, log_path, p.progress_timeout_s)
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise TrainingProcessFailed(
            f"training process exited with code {code}; log: {log_path}\n" + "\n".join(tail)
        )


def stream(command: list[str], env: dict[str, str], log_path: Path, progress_timeout_s: float | None) -> int:
    """Run `command`, teeing its output to the log and stderr; its exit code.

    A child silent for `progress_timeout_s` is stopped and the launch fails: a worker waiting on something
    that never comes (a lock, a peer) says nothing, and would otherwise hang the run forever.
    """
    lines: queue.Queue[str | None] = queue.Queue()
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )  # its own group: stopped whole, workers too
        threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True).start()
        try:
            while True:
                try:
                    line = lines.get(timeout=progress_timeout_s)
                except queue.Empty:
                    raise TrainingProcessFailed(
                        f"training process printed nothing for {progress_timeout_s:g} s and was stopped "
                        f"(raise --progress-timeout if that is normal here); log: {log_path}"
                    ) from None
                if line is None:
                    break
                log.write(line)  # tee: the user watches progress, the log keeps it
                log.flush()
                sys.stderr.write(line)
            return proc.wait()
        finally:
            if proc.poll() is None:
                _stop(proc)


def _pump(pipe, lines: queue.Queue) -> None:
    for line in pipe:
        lines.put(line)
    lines.put(None)


def _stop(proc: subprocess.Popen) -> None:
    for sig, wait_s in ((signal.SIGTERM, 120), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue
