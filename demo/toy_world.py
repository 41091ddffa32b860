"""A controlled world for the loop (`pipelines.loop`): small enough for a CPU, with a known right answer.

Arithmetic problems come in a few families (sum, product, difference). Each family has exactly one right
thought template in the KB (`Sum Rule` for sums, ...); the other families' templates are the wrong ones.
Problems are split into train and held-out test problems; every problem's similar set is other problems
of its family and split (a `similar_build` of method `toy-world-family`), and every problem records its
family's template as `extra.expected_template`, which `reasonflux loop show` uses to report the share
of plans that pick the right template.

The inference role is `toy-world` (a scripted backend registered like any other): it reads the problem and
the templates of the plan's steps from the rollout prompt (`pipelines.prompts` `inference`) and answers
correctly with probability 0.9 when every step uses the family's right template and 0.1 otherwise,
deterministically (a hash of problem and templates decides). So a trajectory's reward is high exactly
when its navigator chose the right template, and DPO pairs prefer right over wrong templates.

The starting navigator is the tiny chat model (`demo.tiny_model`) with a tokenizer fitted to this
world's texts, SFT-trained on plan examples that use the right and a wrong template equally often: it
speaks the navigator contract but has no preference for the right template. Everything it is trained
on is a navigator-contract conversation (`pipelines.navigator`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from demo.tiny_model import build_tiny_model
from kb.dataset_write import write_dataset
from kb.datasets import DataPart, ExportSpec, params_hash
from kb.db import Database, session_scope
from kb.runs import pipeline_run
from kb.templates import TemplateSpec, upsert_template
from pipelines import navigator
from pipelines.llm.base import Message
from pipelines.llm.registry import register_backend
from pipelines.llm.scripted import ScriptedBackend
from pipelines.problems import content_hash, insert_problems
from pipelines.train.launch import plan
from pipelines.train.navigators import list_navigators, navigator_path
from pipelines.train.run import execute

SOURCE = "toy-world"
CATEGORY = "Toy world"
SIMILAR_METHOD = "toy-world-family"
BACKEND = "toy-world"
MAX_STEPS = 2  # shown in the plan prompt; one-step plans are what the world needs
P_RIGHT, P_WRONG = 0.9, 0.1  # chance that a rollout is correct with the right / a wrong template
STEP_TEXT = "Combine the two numbers."


@dataclass(frozen=True)
class Family:
    name: str
    template: str  # the one right template
    question: str  # with {a} and {b}
    op: str

    def answer(self, a: int, b: int) -> int:
        return {"+": a + b, "*": a * b, "-": a - b}[self.op]

    def abstraction(self) -> str:
        return f"The {self.name} of two numbers."

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile(re.escape(self.question).replace(r"\{a\}", r"(\d+)").replace(r"\{b\}", r"(\d+)"))


# Word problems rather than "the sum of a and b": a family's whole text differs from the others', which a
# 2-layer model picks out of the ~180-token plan prompt quickly; a single differing word it did not (measured:
# chance-level abstractions after 250 SFT steps).
FAMILIES = (
    Family(
        "sum",
        "Sum Rule",
        "A baker puts {a} rolls on a tray that already holds {b} rolls. How many rolls are on the tray now?",
        "+",
    ),
    Family(
        "product",
        "Product Rule",
        "A farmer plants {a} rows of trees with {b} trees in every row. How many trees does the farmer plant?",
        "*",
    ),
    Family(
        "difference",
        "Difference Rule",
        "A shop had {a} lamps and sold {b} of them. How many lamps are left in the shop?",
        "-",
    ),
)
BY_NAME = {f.name: f for f in FAMILIES}


def family_of(problem: str) -> tuple[Family, int, int] | None:
    for family in FAMILIES:
        m = family.pattern.search(problem)
        if m:
            return family, int(m.group(1)), int(m.group(2))
    return None


# ---- the world in the KB -------------------------------------------------------------------------------


def problems(split: str, per_family: int, seed: int = 0) -> list[dict[str, Any]]:
    """PER_FAMILY problems of each family for SPLIT (distinct texts; a > b so differences are positive)."""
    rng = random.Random(f"{seed}:{split}")
    out = []
    for family in FAMILIES:
        seen: set[tuple[int, int]] = set()
        while len(seen) < per_family:
            a, b = rng.randint(11, 99), rng.randint(2, 10)
            if (a, b) in seen or _taken(a, b, split, seed):
                continue
            seen.add((a, b))
            out.append(
                {
                    "text": family.question.format(a=a, b=b),
                    "answer": str(family.answer(a, b)),
                    "split": split,
                    "subject": family.name,
                    "family": family.name,
                    "expected_template": family.template,
                }
            )
    return out


def _taken(a: int, b: int, split: str, seed: int) -> bool:
    """Test problems never repeat a train problem's numbers (held out means unseen)."""
    if split == "train":
        return False
    rng = random.Random(f"{seed}:train")
    return any((rng.randint(11, 99), rng.randint(2, 10)) == (a, b) for _ in range(400))


def template_specs() -> list[Any]:
    return [
        TemplateSpec(
            name=f.template,
            category=CATEGORY,
            template_type="technique",
            tags=["arithmetic", f.name],
            description=f"Combine the two numbers into their {f.name}.",
            application_scope=f"Problems that ask for the {f.name} of two numbers.",
            steps=[f"Combine the two numbers: compute a {f.op} b."],
        )
        for f in FAMILIES
    ]


def setup(
    db: Database, *, train_per_family: int = 12, test_per_family: int = 4, similar_k: int = 4, seed: int = 0
) -> dict[str, Any]:
    """Templates, train and test problems and similar sets of the world; idempotent (stored once)."""
    rows = [
        {
            "text": p["text"],
            "answer": p["answer"],
            "split": p["split"],
            "subject": p["subject"],
            "source": SOURCE,
            "content_hash": content_hash(p["text"]),
            "extra": {"family": p["family"], "expected_template": p["expected_template"]},
        }
        for split, n in (("train", train_per_family), ("test", test_per_family))
        for p in problems(split, n, seed)
    ]
    params = {
        "train_per_family": train_per_family,
        "test_per_family": test_per_family,
        "similar_k": similar_k,
        "seed": seed,
    }
    with pipeline_run(db, "toy-world", params) as (run_id, counts):
        with session_scope(db) as s:
            counts["templates"] = {
                spec.name: upsert_template(s, spec, source_kind="toy-world")[1] for spec in template_specs()
            }
            counts["problems_created"] = len(insert_problems(s, rows, run_id)["created"])
        counts["similar_sets"] = build_similar_sets(db, similar_k, run_id)
    return {"run_id": run_id, **counts}


def build_similar_sets(db: Database, k: int, run_id: int | None) -> int:
    """Each world problem's set: the K problems of its family and split nearest to it in id order (a known
    ground truth in place of embeddings). One statement; anchors that have a set keep it."""
    params = {"method": SIMILAR_METHOD, "k": k, "source": SOURCE}
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO similar_build (method, params, params_hash, run_id) VALUES (:m, CAST(:p AS jsonb), :h, :r) "
                "ON CONFLICT (params_hash) DO NOTHING"
            ),
            {
                "m": SIMILAR_METHOD,
                "p": json.dumps(params, sort_keys=True),
                "h": params_hash(params),
                "r": run_id,
            },
        )
        build = conn.execute(
            sa.text("SELECT id FROM similar_build WHERE params_hash = :h"), {"h": params_hash(params)}
        ).scalar_one()
        return conn.execute(
            sa.text("""
            WITH nn AS (
                SELECT a.id AS anchor, m.id AS member, row_number() OVER (
                    PARTITION BY a.id ORDER BY abs(m.id - a.id), m.id) AS rank
                FROM problem a JOIN problem m ON m.source = a.source AND m.subject = a.subject
                                             AND m.split = a.split AND m.id <> a.id
                WHERE a.source = :src AND NOT EXISTS (
                    SELECT 1 FROM similar_set s WHERE s.build_id = :b AND s.anchor_problem_id = a.id)
            ), sets AS (
                INSERT INTO similar_set (build_id, anchor_problem_id, anchor_split, size, run_id)
                SELECT :b, a.id, a.split, (SELECT count(*) FROM nn WHERE nn.anchor = a.id AND nn.rank <= :k), :r
                FROM problem a WHERE a.source = :src AND a.id IN (SELECT anchor FROM nn)
                ON CONFLICT (build_id, anchor_problem_id) DO NOTHING
                RETURNING id, anchor_problem_id
            ), members AS (
                INSERT INTO similar_set_member (set_id, problem_id, rank, similarity)
                SELECT sets.id, nn.member, nn.rank, 1.0 FROM sets JOIN nn ON nn.anchor = sets.anchor_problem_id
                WHERE nn.rank <= :k
                RETURNING 1
            ) SELECT count(*) FROM sets"""),
            {"src": SOURCE, "b": build, "k": k, "r": run_id},
        ).scalar_one()


# ---- the inference role --------------------------------------------------------------------------------

_PROBLEM = re.compile(r"Problem:\n(.*?)\n\n", re.DOTALL)
_TEMPLATE = re.compile(r"^\s*Template: (.+?)\s*$", re.MULTILINE)


def _chance(*parts: str) -> float:
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class ToyWorldSolver:
    """callable(messages) -> reply for rollouts of a world problem (the evaluate stage's inference role)."""

    def __call__(self, messages: list[Message]) -> str:
        user = "\n".join(m.get("content", "") for m in messages if m.get("role") == "user")
        problem = _PROBLEM.search(user + "\n\n")
        found = family_of(problem.group(1)) if problem else None
        if found is None:
            return "This is not a problem of the toy world; no answer."
        family, a, b = found
        templates = _TEMPLATE.findall(user.split("Plan", 1)[-1])
        right = bool(templates) and all(t == family.template for t in templates)
        correct = _chance(problem.group(1), *templates) < (P_RIGHT if right else P_WRONG)
        answer = family.answer(a, b) + (0 if correct else 1)
        return f"Following the plan ({', '.join(templates) or 'no template'}). The answer is \\boxed{{{answer}}}."


@register_backend(BACKEND)
def _factory(**options: Any):
    return ScriptedBackend(
        default=ToyWorldSolver(),
        model=options.get("model", "toy-world-solver"),
        latency_s=float(options.get("latency_s", 0.0)),
    )


# ---- the starting navigator ----------------------------------------------------------------------------


def plan_reply(family: Family, template: str) -> str:
    """The contract reply for a one-step plan of FAMILY's problem that uses TEMPLATE."""
    return navigator.render_plan(family.abstraction(), [(STEP_TEXT, template)])


def corpus(seed: int = 0) -> list[str]:
    """Texts the tiny model's tokenizer is fitted to: the contract's fixed texts, the problems, the replies."""
    fixed = [navigator.SYSTEM, navigator.PLAN_FORMAT.replace("{max_steps}", str(MAX_STEPS))]
    texts = [p["text"] for split in ("train", "test") for p in problems(split, 20, seed)]
    replies = [plan_reply(f, g.template) for f in FAMILIES for g in FAMILIES]
    return fixed + texts + replies


def sft_rows(train_problems: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two plan examples per train problem, one with the right template and one with a wrong one (the
    wrong ones alternate), so the SFT navigator learns the format but no preference."""
    rows = []
    for i, p in enumerate(train_problems):
        family = BY_NAME[p["family"]]
        wrong = [f.template for f in FAMILIES if f is not family][i % (len(FAMILIES) - 1)]
        prompt = navigator.plan_messages(p["text"], max_steps=MAX_STEPS)
        rows += [
            {"messages": [*prompt, {"role": "assistant", "content": plan_reply(family, t)}]}
            for t in (family.template, wrong)
        ]
    return rows


# Small CPU settings: full precision, no checkpointing (the contract's plan prompt is ~170 tokens with the
# world's tokenizer, so 256 positions hold prompt and reply).
CPU_TRAINING = {
    "bf16": False,
    "gradient_checkpointing": False,
    "lr_scheduler_type": "constant",
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "max_length": 256,
    "logging_steps": 5,
}
SFT_TRAINING = {**CPU_TRAINING, "learning_rate": 3e-3, "max_steps": 150, "save_steps": 150}
# One loop iteration's DPO (`LoopConfig.train`).
DPO_TRAINING = {
    **CPU_TRAINING,
    "learning_rate": 2e-4,
    "beta": 0.1,
    "sft_weight": 3.0,
    "max_steps": 40,
    "save_steps": 40,
    "precompute_ref_log_probs": True,
}

# A pre-trained model as the start navigator (SmolLM2-135M-Instruct on a 2-core CPU): a full fine-tune at
# the learning rates usual for a model that already speaks, with few steps, since each costs seconds, not
# milliseconds. The plan prompt is ~180 of its tokens and a reply ~35, so 256 positions still hold both.
REAL_SFT_TRAINING = {
    **CPU_TRAINING,
    "per_device_train_batch_size": 4,
    "learning_rate": 1e-4,
    "max_steps": 20,
    "save_steps": 20,
}
REAL_DPO_TRAINING = {
    **CPU_TRAINING,
    "learning_rate": 5e-5,
    "beta": 0.1,
    "sft_weight": 1.0,
    "max_steps": 12,
    "save_steps": 12,
    "precompute_ref_log_probs": True,
}


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int = 96
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2
    vocab_size: int = 768


DEFAULT_SIZE = ModelSize()  # measured to learn the world in the test's time (docs/loop.md)


def build_start_navigator(
    db: Database,
    workdir: str | Path,
    *,
    name: str = "toy-sft",
    seed: int = 0,
    train_per_family: int = 12,
    size: ModelSize = DEFAULT_SIZE,
    training: dict[str, Any] | None = None,
    base_model: str | None = None,
) -> dict[str, Any]:
    """A model SFT-trained on plan examples with right and wrong templates equally (through the real export
    check, trainer, run record and registry); returns the SFT run. The model is BASE_MODEL (a pre-trained
    model directory, with its own tokenizer and chat template) or, without one, the tiny random model with
    the world's tokenizer."""
    if navigator_path(db, name):
        return next(n for n in list_navigators(db) if n["name"] == name)
    work = Path(workdir)
    base = base_model or build_tiny_model(
        work / "base",
        seed=seed,
        vocab_size=size.vocab_size,
        hidden_size=size.hidden_size,
        layers=size.layers,
        heads=size.heads,
        kv_heads=size.kv_heads,
        intermediate_size=2 * size.hidden_size,
        corpus=corpus(seed),
    )
    rows = sft_rows(problems("train", train_per_family, seed))
    spec = ExportSpec(
        kind="sft",
        params={
            "toy_world": {"train_per_family": train_per_family, "seed": seed},
            "mix": "one right-template and one wrong-template plan per problem",
        },
        parts=[
            DataPart(
                "train",
                pa.Table.from_pylist(rows),
                description=(
                    "Plan examples of the toy world in the navigator contract: per train problem one plan "
                    "with the family's right template and one with a wrong template."
                ),
            )
        ],
    )
    manifest = write_dataset(db, spec, work / "sft-data")
    overrides = {**SFT_TRAINING, **(training or {}), "output_dir": str(work / "sft")}
    return execute(
        db,
        plan(
            db,
            "sft",
            dataset=manifest["id"],
            base_model=str(base),
            num_gpus=0,
            name=name,
            overrides=overrides,
        ),
    )


def loop_settings(name: str = "toy", *, iterations: int = 2, n: int = 4, eval_n: int = 6) -> dict[str, Any]:
    """The loop config (`pipelines.loop.LoopConfig` keys) that runs this world from the navigator `toy-sft`."""
    return {
        "name": name,
        "iterations": iterations,
        "problems": f"source={SOURCE};split=train",
        "eval_problems": f"source={SOURCE};split=test",
        "navigator": "toy-sft",
        "inference": BACKEND,
        "n": n,
        "eval_n": eval_n,
        "hint_k": 0,
        "retrieval_mode": "text",
        "max_steps": MAX_STEPS,
        "temperature": 1.0,
        "top_p": 1.0,
        "max_tokens": 64,
        "min_rollouts": 4,
        "num_gpus": 0,
        "train": dict(DPO_TRAINING),
    }
