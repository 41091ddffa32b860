"""Executing a plan: the training_run row, the training (in process or via `accelerate launch`), the
navigator registration. `reasonflux train sft|dpo` and the demo both come through `execute`.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kb.db import Database
from kb.errors import KbError
from pipelines.train import registry
from pipelines.train.launch import LaunchPlan, worker_env, write_spec


class TrainingProcessFailed(KbError):
    pass


def execute(db: Database, p: LaunchPlan, *, extra_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Run the plan to the end; returns the finished run (with its navigator). Failures are recorded first."""
    run_id = registry.start_run(db, stage=p.stage, base_model=p.base_model, dataset_version_id=p.dataset.id,
                                config=p.run_config(), resumed_from=p.resume_run)
    output_dir = p.output_dir(run_id, datetime.now(UTC).strftime("%Y%m%dT%H%M%S"))
    registry.set_output_path(db, run_id, output_dir, p.run_config(output_dir))
    with registry.recorded_run(db, run_id) as final:
        spec_path = write_spec(p, run_id, output_dir)
        if p.launcher == "inprocess":
            from pipelines.train.worker import run_spec

            # The trainer prints its logs; they go to stderr so stdout stays the command's result (--json).
            with contextlib.redirect_stdout(sys.stderr):
                final.update(run_spec(db, p.spec(run_id, output_dir), extra_callbacks))
        else:
            _launch(p, spec_path, db)
    name = p.name or registry.navigator_name_for(p.stage, run_id)
    registry.register_navigator(db, name=name, path=output_dir, base_model=p.base_model, training_run_id=run_id)
    return registry.get_run(db, run_id, with_steps=False)


def _launch(p: LaunchPlan, spec_path: Path, db: Database) -> None:
    """`accelerate launch` in a child process; Ctrl-C / SIGTERM here stop it before the run is recorded."""
    command = p.command(str(spec_path))
    log_path = spec_path.parent / "train.log"
    with log_path.open("a") as log:
        proc = subprocess.Popen(command, env=worker_env(db, p), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        try:
            for line in proc.stdout:  # tee: the user watches progress, the log keeps it
                log.write(line)
                sys.stderr.write(line)
            code = proc.wait()
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        raise TrainingProcessFailed(f"training process exited with code {code}; log: {log_path}\n"
                                    + "\n".join(tail))
