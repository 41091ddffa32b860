"""Training throughput and peak memory of both stages on a small generated model.

    python benchmarks/train_throughput.py                      # CPU: in process, and DeepSpeed ZeRO-3 on CPU
    python benchmarks/train_throughput.py --steps 20 --hidden 512 --layers 8   # a bigger generated model

On a machine with a GPU the same script runs SFT and DPO under DeepSpeed ZeRO-3 on one GPU in bf16
(`--num-gpus 1 --deepspeed zero3`, launched with `accelerate launch`), which is the issue's GPU check.
Runs in a throwaway embedded database. Figures per run: non-padding tokens per second over the run
(all processes), the trainer's samples/s, peak memory (GPU allocations on a GPU, resident set size on
CPU), the final loss and, for DPO, the reward accuracy. A random model learns nothing: these are speed
figures, not quality.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa

from demo.tiny_model import build_tiny_model
from kb.dataset_write import write_dataset
from kb.datasets import DataPart, ExportSpec
from kb.db import connect
from pipelines.train import execute, plan
from pipelines.train.memory import available_gpus, deepspeed_version


def rows(kind: str, n: int) -> list[dict]:
    filler = " then simplify the expression and check each boundary case" * 6
    if kind == "sft":
        return [
            {
                "messages": [
                    {"role": "user", "content": f"Template {i}: describe it and when it applies."},
                    {"role": "assistant", "content": f"Template {i} rewrites the sum{filler}."},
                ]
            }
            for i in range(n)
        ]
    return [
        {
            "prompt": [{"role": "user", "content": f"Plan problem {i}: x^2 - 5x + 6 = 0."}],
            "chosen": [{"role": "assistant", "content": f"Step 1: apply Vieta{filler}."}],
            "rejected": [{"role": "assistant", "content": "Step 1: guess."}],
        }
        for i in range(n)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--cutoff", type=int, default=256)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="rf-train-bench-"))
    (tmp / "home").mkdir()
    os.environ["REASONFLUX_HOME"] = str(tmp / "home")  # checkpoints go there too
    os.environ.pop("DATABASE_URL", None)
    db = connect(None)
    try:
        model = build_tiny_model(
            tmp / "model",
            hidden_size=args.hidden,
            layers=args.layers,
            heads=4,
            kv_heads=2,
            intermediate_size=args.hidden * 2,
        )
        n = args.steps * args.batch
        data = {
            k: write_dataset(
                db,
                ExportSpec(
                    kind=k, params={"bench": k}, parts=[DataPart("train", pa.Table.from_pylist(rows(k, n)))]
                ),
                tmp / k,
            )["id"]
            for k in ("sft", "dpo")
        }
        gpus = available_gpus()
        setups = (
            [("gpu, zero3, bf16", {"num_gpus": 1, "deepspeed": "zero3"}, True)]
            if gpus
            else [("cpu, in process", {"num_gpus": 0}, False)]
        )
        if not gpus and deepspeed_version():
            setups.append(("cpu, deepspeed zero3", {"num_gpus": 0, "deepspeed": "zero3"}, False))
        params = None
        print(
            f"model: {args.layers} layers x {args.hidden} hidden; {args.steps} steps of {args.batch} x "
            f"cutoff {args.cutoff} per stage; device: {'GPU' if gpus else 'CPU'}\n"
        )
        print(
            f"{'setup':24} {'stage':5} {'tokens/s':>10} {'samples/s':>10} {'peak GiB':>9} {'loss':>8} "
            f"{'reward acc':>10}"
        )
        for label, hw, bf16 in setups:
            overrides = {
                "bf16": bf16,
                "max_steps": args.steps,
                "max_length": args.cutoff,
                "per_device_train_batch_size": args.batch,
                "gradient_accumulation_steps": 1,
                "gradient_checkpointing": False,
                "save_steps": args.steps,
                "learning_rate": 1e-4,
            }
            base = str(model)
            for stage in ("sft", "dpo"):
                p = plan(db, stage, dataset=data[stage], base_model=base, overrides=overrides, **hw)
                params = p.model_params["total"]
                run = execute(db, p)
                m = run["metrics"]
                peak = m.get("peak_gpu_memory_gib", m.get("peak_rss_gib", float("nan")))
                print(
                    f"{label:24} {stage:5} {m.get('train_tokens_per_second', float('nan')):10.0f} "
                    f"{m.get('train_samples_per_second', float('nan')):10.2f} {peak:9.2f} {m['loss']:8.4f} "
                    f"{m.get('rewards/accuracies', float('nan')):10.2f}"
                )
                print(
                    f"  command: {shlex.join(p.command())}"
                    if p.launcher == "accelerate"
                    else "  command: in process (reasonflux train ... --num-gpus 0)"
                )
                base = run["navigator"]
        print(
            f"\nparameters: {params:,}; peak memory on CPU is the process's whole resident set "
            "(interpreter, libraries, both models for DPO), on GPU torch's peak allocation."
        )
    finally:
        db.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
