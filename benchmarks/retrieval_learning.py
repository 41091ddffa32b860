"""Retriever fine-tuning benchmark (not a test): leave-one-chapter-out on the ReasonFlux-v1 sample.

    python benchmarks/retrieval_learning.py                    # defaults of `reasonflux retriever train`
    python benchmarks/retrieval_learning.py --epochs 5 --learning-rate 3e-5 --chapter Sequences

For each chapter of the sample: fine-tune the base model (all-MiniLM-L6-v2 unless --model) on the
other chapters' pairs, then query with the chapter's worked examples (excluded from the indexed
text, as in benchmarks/retrieval.py). Prints per-fold and mean recall@1, recall@5 and MRR@10,
zero-shot and fine-tuned side by side, for hybrid and vector search and for both query forms
(the problem; the navigator's phrase + abstraction), with the training time of each fold.

Runs in a throwaway embedded PostgreSQL in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.retrieval import SAMPLE, load_sample, print_table, throwaway_database
from kb import config
from pipelines.retriever.fit_config import HyperParams


def main(argv: list[str] | None = None) -> None:
    defaults = HyperParams()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sample", type=Path, default=SAMPLE)
    ap.add_argument(
        "--model", default=None, help="base model (default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2)"
    )
    ap.add_argument("--chapter", action="append", default=None, help="evaluate only these folds (repeatable)")
    ap.add_argument("--epochs", type=int, default=defaults.epochs)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--learning-rate", type=float, default=defaults.learning_rate)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--hard-negatives", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seq-length", type=int, default=defaults.max_seq_length)
    ap.add_argument(
        "--with-starter",
        action="store_true",
        help="also import the packaged starter library: its 51 worked examples train every fold, "
        "while ranking and queries stay on the sample's chapters",
    )
    args = ap.parse_args(argv)
    if not args.sample.exists():
        sys.exit(f"sample library not found: {args.sample}")
    model = config.embed_model_name(args.model)
    hp = HyperParams(
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_steps=args.max_steps,
        seed=args.seed,
        max_seq_length=args.max_seq_length,
    )
    from pipelines.embed import embed_templates
    from pipelines.retriever.evaluate import leave_one_chapter_out

    with throwaway_database() as db:
        loader = load_sample(db, args.sample)
        with db.engine.connect() as conn:
            sample_chapters = sorted(
                conn.execute(sa.text("SELECT DISTINCT category FROM template")).scalars()
            )
        if args.with_starter:
            from kb.starter import starter_library_path
            from pipelines.import_templates import import_file

            import_file(db, starter_library_path(), "jsonl", embed=False)
            loader += " + the starter library (training pairs only)"
        n = embed_templates(db, model)
        print(f"sample: {args.sample.name} via {loader}; {n} templates embedded with {model}")
        print(f"hyper-parameters: {hp.to_dict()}, hard negatives: {args.hard_negatives}")
        print(f"machine load before training: {Path('/proc/loadavg').read_text().strip()}")
        t0 = time.perf_counter()
        result = leave_one_chapter_out(
            db,
            base_model=model,
            hp=hp,
            chapters=args.chapter or sample_chapters,
            index_categories=sample_chapters,
            hard_negatives=args.hard_negatives,
            log=lambda m: print(m, file=sys.stderr, flush=True),
        )
        print(f"total wall time (pairs, training, scoring; all folds): {time.perf_counter() - t0:.0f} s")
        print(f"machine load after: {Path('/proc/loadavg').read_text().strip()}")
    print_table(result["folds"], "folds (training on the other chapters' pairs)")
    print_table(result["rows"], "per held-out chapter")
    print_table(result["mean"], "mean over held-out chapters (each chapter counts once)")


if __name__ == "__main__":
    main()
