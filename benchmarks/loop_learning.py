"""Does the loop learn? The controlled world (demo/toy_world.py) on CPU, before and after.

    python benchmarks/loop_learning.py                              # the test's sizes, more iterations
    python benchmarks/loop_learning.py --iterations 4 --train-per-family 20 --eval-n 10
    python benchmarks/loop_learning.py --base smollm2-135m-instruct # a real pre-trained model as the start

With --base (a catalogue model name, fetched once into $REASONFLUX_HOME/models, or a local model
directory) the start navigator is that pre-trained model with its own tokenizer and chat template,
SFT-trained on the same balanced plan examples with the
real-model settings (toy_world.REAL_SFT_TRAINING / REAL_DPO_TRAINING); the base model's own held-out parse
rate (no SFT) is printed first, and the wall time of every stage after the table.

The tiny model (world tokenizer) is SFT-trained on plan examples that use the right and a wrong template
equally, then `pipelines.loop.run_loop` runs sample -> evaluate -> rewards -> pairs -> export -> DPO ->
register for the given iterations. Per iteration it prints the figures `reasonflux loop show` records:
train plans sampled and their parse rate and right-template share, mean/spread of rewards, DPO pairs,
DPO reward accuracy and margin (last logged step), and the held-out plans (test split, never trained on):
how many were sampled, the parse rate and the share that use the family's right template. The last row
is the navigator the last iteration trained. Runs in a throwaway embedded database.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from demo import toy_world
from kb.db import connect
from pipelines import loop


def _f(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _failures(db, navigator: str, limit: int) -> None:
    """A few replies of NAVIGATOR that did not parse, with the parser's reason."""
    import sqlalchemy as sa

    if limit < 1:
        return
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT f.reason, f.raw_output FROM failure f JOIN pipeline_run r ON r.id = f.run_id "
                "WHERE r.stage = 'sample' AND r.params->>'navigator' = :n ORDER BY f.id LIMIT :k"
            ),
            {"n": navigator, "k": limit},
        ).all()
    for reason, raw in rows:
        print(f"  unparseable ({navigator}): {reason[:150]}\n    {raw[:200]!r}")


def _base_model(name_or_path: str) -> str:
    """A local model directory, or a catalogue model (`reasonflux models catalogue`) fetched once into the
    user's own $REASONFLUX_HOME/models (the benchmark's throwaway home would fetch it on every run)."""
    from pipelines.models import catalogue, fetch

    if Path(name_or_path).is_dir():
        return name_or_path
    folder = fetch.models_dir() / name_or_path
    fetch.ensure_folder(catalogue.entry(name_or_path), folder, log=print)
    return str(folder)


def _base_parse_rate(path: str, per_family: int, batch_size: int) -> None:
    """The pre-trained model's own held-out plans (no SFT, no constraint): one per held-out problem."""
    from pipelines import navigator
    from pipelines.llm.base import ChatRequest, SamplingParams
    from pipelines.llm.transformers_backend import TransformersBackend
    from pipelines.parsing import ParseError

    problems = toy_world.problems("test", per_family)
    backend = TransformersBackend(path, batch_size=batch_size)
    t0 = time.perf_counter()
    out = backend.generate(
        [
            ChatRequest(
                navigator.plan_messages(p["text"], max_steps=toy_world.MAX_STEPS),
                SamplingParams(max_tokens=64),
            )
            for p in problems
        ]
    )
    parsed = 0
    for c in out:
        try:
            navigator.parse_plan(c.text, max_steps=toy_world.MAX_STEPS)
            parsed += 1
        except ParseError:
            pass
    print(
        f"base model, no SFT: {parsed}/{len(out)} held-out plans parse ({time.perf_counter() - t0:.0f} s); "
        f"e.g. {out[0].text[:120]!r}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--train-per-family", type=int, default=12)
    ap.add_argument("--test-per-family", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="plans per train problem and iteration")
    ap.add_argument("--eval-n", type=int, default=8, help="plans per held-out problem")
    ap.add_argument("--dpo-steps", type=int, default=toy_world.DPO_TRAINING["max_steps"])
    ap.add_argument("--dpo-lr", type=float, default=toy_world.DPO_TRAINING["learning_rate"])
    ap.add_argument(
        "--sft-weight",
        type=float,
        default=toy_world.DPO_TRAINING["sft_weight"],
        help="NLL term on the chosen reply in the DPO loss (0: plain DPO)",
    )
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 suits a busy machine)")
    ap.add_argument(
        "--show-failures", type=int, default=3, help="unparseable plans of the last navigator to print"
    )
    ap.add_argument(
        "--base",
        help="a pre-trained start model: a catalogue model name or a local directory "
        "(default: the tiny random model with the world's tokenizer)",
    )
    ap.add_argument("--sft-steps", type=int, help="start navigator SFT steps (default: the mode's setting)")
    ap.add_argument("--finetuning-type", choices=("full", "lora"), default="full")
    ap.add_argument("--batch-size", type=int, default=16, help="navigator generation batch (--base runs)")
    args = ap.parse_args()
    real = args.base is not None
    sft_training = dict(toy_world.REAL_SFT_TRAINING if real else toy_world.SFT_TRAINING)
    dpo_defaults = toy_world.REAL_DPO_TRAINING if real else toy_world.DPO_TRAINING
    for flag, key in (("dpo_steps", "max_steps"), ("dpo_lr", "learning_rate"), ("sft_weight", "sft_weight")):
        if getattr(args, flag) == ap.get_default(flag):  # the mode's default unless given
            setattr(args, flag, dpo_defaults[key])
    if args.sft_steps:
        sft_training.update(max_steps=args.sft_steps, save_steps=args.sft_steps)
    if args.finetuning_type == "lora":
        sft_training.update(finetuning_type="lora", learning_rate=1e-3)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    base = _base_model(args.base) if real else None
    tmp = Path(tempfile.mkdtemp(prefix="rf-loop-bench-"))
    (tmp / "home").mkdir()
    os.environ["REASONFLUX_HOME"] = str(tmp / "home")
    os.environ.pop("DATABASE_URL", None)
    db = connect(None)
    try:
        t0 = time.perf_counter()
        toy_world.setup(
            db, train_per_family=args.train_per_family, test_per_family=args.test_per_family, similar_k=4
        )
        if base:
            _base_parse_rate(base, args.test_per_family, args.batch_size)
        t0 = time.perf_counter()
        sft = toy_world.build_start_navigator(
            db, tmp / "start", train_per_family=args.train_per_family, base_model=base, training=sft_training
        )
        t_sft = time.perf_counter() - t0
        settings = toy_world.loop_settings("bench", iterations=args.iterations, n=args.n, eval_n=args.eval_n)
        if real:  # the navigators are real models: batched generation, the world's settings otherwise
            llm = tmp / "llm.toml"
            llm.write_text(f'[roles.navigator]\nbackend = "transformers"\nbatch_size = {args.batch_size}\n')
            settings["llm_config"] = str(llm)
        cfg = loop.LoopConfig.load(
            None,
            {
                **settings,
                "out_dir": str(tmp / "loop"),
                "train": {
                    **dpo_defaults,
                    "max_steps": args.dpo_steps,
                    "save_steps": args.dpo_steps,
                    "learning_rate": args.dpo_lr,
                    "sft_weight": args.sft_weight,
                },
            },
        )
        t1 = time.perf_counter()
        result = loop.run_loop(db, cfg, progress=False)
        t_loop = time.perf_counter() - t1
        print(
            f"world: 3 families, {args.train_per_family} train + {args.test_per_family} held-out problems each; "
            f"start navigator SFT loss {sft['metrics'].get('loss', float('nan')):.4f} "
            f"({t_sft:.0f} s); loop {t_loop:.0f} s\n"
        )
        head = (
            f"{'it':>2} {'navigator':10} {'train plans':>11} {'parse':>6} {'right':>6} {'reward':>11} "
            f"{'pairs':>5} {'dpo acc':>7} {'margin':>7} | {'held-out plans':>14} {'parse':>6} {'right':>6}"
        )
        print(head)
        print("-" * len(head))
        for r in result["iterations"]:
            reward = "-" if r["reward_mean"] is None else f"{r['reward_mean']:.2f}±{r['reward_std']:.2f}"
            print(
                f"{r['iteration']:>2} {r['navigator']:10} {r['plans'] or '-':>11} {_f(r['parse_rate']):>6} "
                f"{_f(r['right_template']):>6} {reward:>11} {r['pairs'] if r['pairs'] is not None else '-':>5} "
                f"{_f(r['dpo_accuracy']):>7} {_f(r['dpo_margin'], '.3f'):>7} | {r['heldout_plans'] or '-':>14} "
                f"{_f(r['heldout_parse_rate']):>6} {_f(r['heldout_right_template']):>6}"
            )
        first, last = result["iterations"][0], result["iterations"][-1]
        print(
            f"\nheld-out right-template share: {_f(first['heldout_right_template'])} "
            f"({first['heldout_right_template'] and round(first['heldout_right_template'] * first['heldout_judged'])}"
            f"/{first['heldout_judged']} parsed plans) -> {_f(last['heldout_right_template'])} "
            f"({last['heldout_right_template'] and round(last['heldout_right_template'] * last['heldout_judged'])}"
            f"/{last['heldout_judged']}); parse rate {_f(first['heldout_parse_rate'])} -> "
            f"{_f(last['heldout_parse_rate'])}; chance is 1/3."
        )
        print("\nwall time per stage (s):")
        stages = ("heldout", "sample", "evaluate", "rewards", "pairs", "export", "train")
        print(f"{'it':>2} " + " ".join(f"{x:>8}" for x in stages))
        for r in result["iterations"]:
            print(f"{r['iteration']:>2} " + " ".join(f"{_f(r['seconds'].get(x), '.0f'):>8}" for x in stages))
        if last["status"].startswith("converged"):
            print(
                f"iteration {last['iteration']}: {last['status']} (every train problem's plans earned equal rewards)"
            )
        _failures(db, last["navigator"], args.show_failures)
    finally:
        db.dispose()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
