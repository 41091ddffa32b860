"""The training process: `accelerate launch ... --module pipelines.train.worker SPEC.json`, or called in
process for CPU runs. It loads the verified export, trains the stage and writes per-step metrics (rank 0);
the process that launched it owns the training_run row.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kb.db import Database, connect
from pipelines.train import training_runs
from pipelines.train.data import VerifiedDataset, check_files, load_rows
from pipelines.train.fit import fit, trainer_class
from pipelines.train.launch import CONFIGS


def run_spec(db: Database, spec: dict[str, Any], extra_callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    stage = spec["stage"]
    config = CONFIGS[stage].from_dict(spec["config"], source="launch spec")
    ds = spec["dataset"]
    dataset = VerifiedDataset(
        id=ds["id"],
        kind=ds["kind"],
        path=Path(ds["path"]),
        files=ds["files"],
        row_counts=ds.get("row_counts", {}),
    )
    check_files(dataset)  # unchanged since the launcher verified it
    rows = load_rows(dataset, stage, completion_only_loss=getattr(config, "completion_only_loss", True))
    summary = fit(
        trainer_class(stage),
        config,
        base_model=spec["base_model"],
        train_dataset=rows,
        output_dir=spec["output_dir"],
        callbacks=[training_runs.metrics_callback(db, spec["run_id"]), *extra_callbacks],
        resume_from_checkpoint=spec.get("resume_from_checkpoint"),
        deepspeed=spec.get("deepspeed"),
        use_cpu=spec["use_cpu"],
    )
    if _is_rank_zero():
        # Throughput and peak memory join the last step's metrics, so launched runs report them too.
        training_runs.record_metrics(
            db,
            spec["run_id"],
            summary["global_step"],
            {k: summary[k] for k in training_runs.RUN_SUMMARY_KEYS if k in summary},
        )
    return summary


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m pipelines.train.worker SPEC.json", file=sys.stderr)
        return 2
    spec = json.loads(Path(args[0]).read_text())
    db = connect(os.environ.get("DATABASE_URL"))
    try:
        run_spec(db, spec)
    finally:
        db.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
