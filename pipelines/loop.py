"""The ReasonFlux loop as one command: sample -> evaluate -> rewards -> pairs -> export dpo -> train dpo ->
register, iterated, each iteration sampling with the navigator the previous one trained.

A loop is identified by its name (`LoopConfig.name`). Every invocation is a `loop` pipeline run and every
iteration a `loop-iteration` run whose params name the loop and the iteration; the iteration's counts hold
one entry per finished step (its run ids and figures), written as soon as the step finishes. Running the
same loop again (after a kill at any point, or with more iterations) continues where it stopped:

- a step recorded as finished for that iteration is not run again;
- a step that was cut off is run again and finds its own work: sampling and evaluation are unit-claiming
  runs keyed by their parameters (`pipelines.runner`: what is done stays done), rewards are a refresh,
  pairs are keyed by their parameters' hash (never topped up), an export of the same pairs is the same
  dataset version (content-derived id), and the navigator an iteration trains has a fixed name
  (`<loop>-it<k>`): once registered it is reused; a training run that finished but was not registered yet
  is registered, and one that was interrupted with a checkpoint is resumed.

The navigator of iteration 0 is the configured one; iteration k > 0 samples with `<loop>-it<k-1>`. All
roles go through the one resolver (`pipelines.llm.roles`), so `scripted`, `transformers:`, `vllm:`,
`openai:` specs and registered navigator names work as in every other command. DPO trains on the
iteration's pairs, starting from (and with the reference model) the navigator that sampled them.

Optionally (`eval_problems`), each iteration's navigator, and the final one, plan for held-out problems:
the share of plans that parse and, where a problem records `extra.expected_template` (the controlled
world, `demo.toy_world`), the share whose every step uses that template.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb import config as kb_config
from kb.db import Database
from kb.errors import ConflictError, InputError, KbError, NotFound
from kb.runs import exclusive, pipeline_run
from pipelines import navigator as contract

STAGE = "loop"
ITERATION_STAGE = "loop-iteration"
NAVIGATOR_BACKENDS = ("transformers", "vllm")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class LoopConfig:
    """What a loop does; a YAML file (`--config`) gives any of these keys, flags beat the file."""

    name: str = field(
        default="loop",
        metadata=_help(
            "The loop's id: its runs are found by it, and the navigator iteration k trains is registered as "
            "<name>-it<k>. Running a loop of this name again continues it."
        ),
    )
    iterations: int = field(
        default=2,
        metadata=_help(
            "How many sample -> train rounds to run (a later run may raise it to continue the loop)."
        ),
    )
    problems: str = field(
        default="split=train",
        metadata=_help(
            "The problems sampled every iteration (the selection language of `reasonflux sample --problems`). "
            "DPO pairs only ever come from train-split problems."
        ),
    )
    navigator: str | None = field(
        default=None,
        metadata=_help(
            "The navigator of iteration 0: a role spec (transformers:PATH, vllm:PATH, openai:MODEL@URL, scripted) "
            "or a registered navigator or model name; default roles.navigator of llm_config."
        ),
    )
    base_model: str | None = field(
        default=None,
        metadata=_help(
            "The model iteration 0 trains (a local directory or a registered navigator or model); default the navigator "
            "of iteration 0 when it is a local model or a registered name. Needed when it is served elsewhere "
            "(openai:)."
        ),
    )
    navigator_backend: str = field(
        default="transformers",
        metadata=_help("The backend that runs the navigators the loop trains (transformers or vllm)."),
    )
    inference: str | None = field(
        default=None,
        metadata=_help(
            "The inference role that follows trajectories in evaluation (a role spec or name); default "
            "roles.inference of llm_config."
        ),
    )
    llm_config: str | None = field(
        default=None,
        metadata=_help(
            "TOML or YAML file with roles and sampling (`--llm-config` of the stages); relative to this file."
        ),
    )
    n: int = field(default=8, metadata=_help("Trajectories sampled per problem and iteration."))
    base_seed: int = field(default=0, metadata=_help("Sample i uses seed base_seed + i."))
    hint_k: int = field(default=3, metadata=_help("Retrieved templates shown in the plan prompt (0: none)."))
    retrieval_mode: str = field(
        default="hybrid",
        metadata=_help(
            "How plan steps are linked to template versions (hybrid, vector, text, hierarchical)."
        ),
    )
    max_steps: int = field(default=contract.MAX_STEPS, metadata=_help("Most steps a plan may have."))
    temperature: float | None = field(
        default=None,
        metadata=_help("Navigator sampling temperature (default: the config file's, else sample's 0.7)."),
    )
    top_p: float | None = field(default=None, metadata=_help("Navigator nucleus sampling."))
    max_tokens: int | None = field(default=None, metadata=_help("Completion token limit of one plan."))
    samples: int = field(default=1, metadata=_help("Rollouts per similar problem in evaluation."))
    min_margin: float = field(default=0.2, metadata=_help("Smallest reward difference of a DPO pair."))
    min_rollouts: int = field(default=4, metadata=_help("Rollouts a trajectory needs to be paired."))
    max_pairs_per_problem: int = field(default=4, metadata=_help("DPO pairs kept per problem."))
    train_config: str | None = field(
        default=None,
        metadata=_help("DPO training config YAML (`reasonflux train dpo --config`); relative to this file."),
    )
    train: dict[str, Any] = field(
        default_factory=dict,
        metadata=_help(
            "DPO training config fields (e.g. learning_rate, beta, max_steps); they beat train_config."
        ),
    )
    num_gpus: int | None = field(
        default=None, metadata=_help("GPUs for training (default: all visible; 0 trains on the CPU).")
    )
    out_dir: str | None = field(
        default=None,
        metadata=_help(
            "Where the iterations' exports go (default $REASONFLUX_HOME/loops/<name>); relative to this file."
        ),
    )
    license: str | None = field(
        default=None,
        metadata=_help(
            "Licence of the iterations' DPO exports (default: the one their sources agree on, `export --license`)."
        ),
    )
    eval_problems: str | None = field(
        default=None,
        metadata=_help(
            "Held-out problems every iteration's navigator (and the final one) plans for; disjoint from problems."
        ),
    )
    eval_n: int = field(default=8, metadata=_help("Plans sampled per held-out problem."))
    workers: int = field(default=1, metadata=_help("Worker processes of the sampling and evaluation stages."))
    batch_size: int = field(
        default=4, metadata=_help("Units per claim in the sampling and evaluation stages.")
    )

    # Fields that change how the loop is run or measured, not what it trains: a continued loop may change them.
    RUNTIME: typing.ClassVar[tuple[str, ...]] = (
        "iterations",
        "eval_problems",
        "eval_n",
        "workers",
        "batch_size",
        "license",
    )
    PATHS: typing.ClassVar[tuple[str, ...]] = ("llm_config", "train_config", "out_dir")

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> LoopConfig:
        """Defaults, then the YAML file, then OVERRIDES (None means not given); checked like the file."""
        values: dict[str, Any] = {}
        if path is not None:
            values.update(cls._read(Path(path)))
        for key, value in (overrides or {}).items():
            if value is not None and value != {}:
                value = cls._coerce(key, value, source=None)
                # training fields from flags join the file's rather than replace them
                values[key] = {**values.get("train", {}), **value} if key == "train" else value
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def _read(cls, path: Path) -> dict[str, Any]:
        import yaml

        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise InputError(f"cannot read the loop config: {e.strerror}", file=str(path)) from None
        except yaml.YAMLError as e:
            raise InputError(f"not valid YAML: {e}", file=str(path)) from None
        if not isinstance(data, dict):
            raise InputError("expected a mapping of loop config keys at the top level", file=str(path))
        known = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in known:
                raise InputError(
                    f"unknown loop config key; known: {', '.join(known)}", file=str(path), field=str(key)
                )
        values = {k: cls._coerce(k, v, source=str(path)) for k, v in data.items()}
        for key in cls.PATHS:  # paths in the file are relative to the file
            if isinstance(values.get(key), str) and not Path(values[key]).expanduser().is_absolute():
                values[key] = str((path.parent / values[key]).resolve())
        return values

    @classmethod
    def _coerce(cls, key: str, value: Any, *, source: str | None) -> Any:
        hints = typing.get_type_hints(cls)
        if key not in {f.name for f in dataclasses.fields(cls)}:
            raise InputError("unknown loop config key", file=source, field=key)
        kind = hints[key]
        args = typing.get_args(kind)
        optional = isinstance(kind, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), kind) if optional else kind
        base = typing.get_origin(base) or base
        if value is None:
            if optional:
                return None
            raise InputError("must not be null", file=source, field=key)
        ok = {
            bool: lambda v: isinstance(v, bool),
            int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            str: lambda v: isinstance(v, str),
            dict: lambda v: isinstance(v, dict),
        }[base](value)
        if not ok:
            raise InputError(f"expected {base.__name__}, got {value!r}", file=source, field=key)
        return float(value) if base is float else value

    def validate(self) -> None:
        def bad(key: str, message: str) -> None:
            raise InputError(message, record="loop config", field=key)

        if not self.name or any(c in self.name for c in ";=/ ") or len(self.name) > 80:
            bad("name", "must be a non-empty name of at most 80 characters without ';', '=', '/' or spaces")
        for key in (
            "iterations",
            "n",
            "samples",
            "min_rollouts",
            "max_pairs_per_problem",
            "eval_n",
            "workers",
            "batch_size",
            "max_steps",
        ):
            if getattr(self, key) < 1:
                bad(key, "must be at least 1")
        if self.hint_k < 0:
            bad("hint_k", "must be >= 0")
        if not 0 < self.min_margin <= 1:
            bad("min_margin", "must be in (0, 1]")
        if self.navigator_backend not in NAVIGATOR_BACKENDS:
            bad("navigator_backend", f"must be one of {', '.join(NAVIGATOR_BACKENDS)}")
        if self.retrieval_mode not in ("hybrid", "vector", "text", "hierarchical"):
            bad("retrieval_mode", "must be hybrid, vector, text or hierarchical")
        if self.license is not None:
            from kb.datasets import check_license

            check_license(self.license, field="license")
        from pipelines.train.dpo_config import DPOTrainConfig

        for key, value in self.train.items():
            DPOTrainConfig._coerce(key, value, source="loop config train")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identity(self) -> str:
        """The hash of what the loop trains: a loop continued with other values for these is refused."""
        kept = {k: v for k, v in self.to_dict().items() if k not in self.RUNTIME}
        return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def help_text(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


def trained_name(cfg: LoopConfig, k: int) -> str:
    """The navigator iteration K trains (and iteration K + 1 samples with)."""
    return f"{cfg.name}-it{k}"


# ---- running -------------------------------------------------------------------------------------------


def run_loop(db: Database, cfg: LoopConfig, *, progress: bool | None = None) -> dict[str, Any]:
    """Run (or continue) the loop to cfg.iterations; returns `show(db, cfg.name)`.

    One run per loop name at a time: a second refuses at start (ConflictError, exit 3) naming the first,
    instead of training the same iteration twice.
    """
    with exclusive(db, STAGE, "loop", cfg.name):
        return _run_loop(db, cfg, progress)


def _run_loop(db: Database, cfg: LoopConfig, progress: bool | None) -> dict[str, Any]:
    _check_continuation(db, cfg)
    with db.engine.connect() as conn:
        from pipelines.selection import select_problem_ids

        problem_ids = select_problem_ids(conn, cfg.problems)
        eval_ids = select_problem_ids(conn, cfg.eval_problems) if cfg.eval_problems else []
    if not problem_ids:
        raise InputError(f"selects no problem: {cfg.problems!r}", record="loop config", field="problems")
    if cfg.eval_problems and not eval_ids:
        raise InputError(
            f"selects no problem: {cfg.eval_problems!r}", record="loop config", field="eval_problems"
        )
    if set(problem_ids) & set(eval_ids):
        raise InputError(
            f"{len(set(problem_ids) & set(eval_ids))} held-out problems are also sampled for "
            "training; held-out problems must not be",
            record="loop config",
            field="eval_problems",
        )
    params = {"loop": cfg.name, "identity": cfg.identity(), "config": cfg.to_dict()}
    with pipeline_run(db, STAGE, params) as (run_id, counts):
        ctx = _Context(db, cfg, run_id, problem_ids, eval_ids, progress)
        for k in range(cfg.iterations):
            pairs = ctx.iteration(k)["steps"]["pairs"]
            counts["iterations_done"] = k + 1
            if pairs.get("converged"):
                counts["converged"] = f"iteration {k}: {pairs['converged']}"
                counts["navigator"] = ctx.navigator_name(k)
                break
        else:
            if eval_ids:
                ctx.final(cfg.iterations)
            counts["navigator"] = trained_name(cfg, cfg.iterations - 1)
    return show(db, cfg.name)


def _check_continuation(db: Database, cfg: LoopConfig) -> None:
    with db.engine.connect() as conn:
        first = conn.execute(
            sa.text(
                "SELECT id, params FROM pipeline_run WHERE stage = :s AND params->>'loop' = :n ORDER BY id LIMIT 1"
            ),
            {"s": STAGE, "n": cfg.name},
        ).first()
    if first is None or first.params.get("identity") == cfg.identity():
        return
    before = first.params.get("config") or {}
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in cfg.RUNTIME and before.get(k) != v)
    raise ConflictError(
        f"loop {cfg.name!r} was started (run {first.id}) with other settings "
        f"({', '.join(f'{k}: {before.get(k)!r} -> {getattr(cfg, k)!r}' for k in changed)}); "
        "continue it with the same settings or start a loop with another name"
    )


class _Context:
    """One invocation: resolves roles, runs the steps of each iteration, records progress."""

    def __init__(
        self,
        db: Database,
        cfg: LoopConfig,
        parent: int,
        problem_ids: list[int],
        eval_ids: list[int],
        progress: bool | None,
    ):
        self.db, self.cfg, self.parent, self.progress = db, cfg, parent, progress
        self.problem_ids, self.eval_ids = problem_ids, eval_ids

    # -- the record ---------------------------------------------------------------------------------------

    def _done(self, k: int) -> dict[str, Any]:
        """The steps earlier runs of iteration K finished (a later record of a step wins)."""
        with self.db.engine.connect() as conn:
            rows = (
                conn.execute(
                    sa.text(
                        "SELECT counts FROM pipeline_run WHERE stage = :s AND params->>'loop' = :n "
                        "AND (params->>'iteration')::int = :k ORDER BY id"
                    ),
                    {"s": ITERATION_STAGE, "n": self.cfg.name, "k": k},
                )
                .scalars()
                .all()
            )
        done: dict[str, Any] = {}
        for counts in rows:
            done.update((counts or {}).get("steps") or {})
        return done

    def _save(self, run_id: int, counts: dict[str, Any]) -> None:
        with self.db.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE pipeline_run SET counts = CAST(:c AS jsonb) WHERE id = :i"),
                {"c": json.dumps(counts, default=str), "i": run_id},
            )

    def _run(self, k: int, navigator_flag: str | None, steps: list[tuple[str, Any]]) -> dict[str, Any]:
        done = self._done(k)
        if all(name in done for name, _ in steps):  # finished by an earlier run: no new record
            return {"steps": done}
        params = {"loop": self.cfg.name, "iteration": k, "loop_run": self.parent, "navigator": navigator_flag}
        with pipeline_run(self.db, ITERATION_STAGE, params) as (run_id, counts):
            record = counts.setdefault("steps", done)
            for name, fn in steps:
                if name in record:
                    continue
                t0 = time.perf_counter()
                result = fn()
                # wall time of each step, so `loop show` and the benchmarks say where an iteration's time goes
                record[name] = (
                    {**result, "seconds": round(time.perf_counter() - t0, 1)}
                    if isinstance(result, dict)
                    else result
                )
                self._save(run_id, counts)
        return counts

    # -- roles --------------------------------------------------------------------------------------------

    def _navigator_flag(self, k: int) -> str | None:
        if k == 0:
            return self.cfg.navigator
        name = trained_name(self.cfg, k - 1)
        return (
            name if self.cfg.navigator_backend == "transformers" else f"{self.cfg.navigator_backend}:{name}"
        )

    def navigator_name(self, k: int) -> str:
        return self._navigator(self._navigator_flag(k)).name

    def _navigator(self, flag: str | None):
        from pipelines.llm.roles import resolve_role
        from pipelines.sample import DEFAULT_SAMPLING

        role = resolve_role(
            self.db,
            "navigator",
            flag,
            self.cfg.llm_config,
            DEFAULT_SAMPLING,
            temperature=self.cfg.temperature,
            top_p=self.cfg.top_p,
            max_tokens=self.cfg.max_tokens,
        )
        if ";" in role.name:
            raise InputError(
                f"navigator name {role.name!r} contains ';'", record="loop config", field="navigator"
            )
        return role

    # -- iterations ---------------------------------------------------------------------------------------

    def iteration(self, k: int) -> dict[str, Any]:
        flag = self._navigator_flag(k)
        nav = self._navigator(flag)
        steps = [("navigator", lambda: {"name": nav.name, "flag": flag})]
        if self.eval_ids:
            steps.append(("heldout", lambda: self._heldout(nav)))
        steps += [
            ("sample", lambda: self._sample(nav)),
            ("evaluate", lambda: self._evaluate(nav)),
            ("rewards", lambda: self._rewards(nav)),
            ("pairs", lambda: self._pairs(nav, k)),
            ("export", lambda: self._export(k)),
            ("train", lambda: self._train(k)),
        ]
        return self._run(k, flag, steps)

    def final(self, k: int) -> dict[str, Any]:
        """After the last iteration: the held-out plans of the navigator it trained."""
        flag = self._navigator_flag(k)
        nav = self._navigator(flag)
        return self._run(
            k,
            flag,
            [
                ("navigator", lambda: {"name": nav.name, "flag": flag, "final": True}),
                ("heldout", lambda: self._heldout(nav)),
            ],
        )

    def _keys(self, nav, n: int) -> list[str]:
        from pipelines.sample import sample_key

        return [sample_key(nav.sampling, self.cfg.base_seed + i) for i in range(n)]

    def _sample_into(self, nav, problem_ids: list[int], n: int) -> dict[str, Any]:
        from pipelines.sample import sample

        cfg = self.cfg
        result = sample(
            self.db,
            f"ids={_ranges(problem_ids)}",
            nav.config,
            n=n,
            navigator_name=nav.name,
            sampling=nav.sampling,
            base_seed=cfg.base_seed,
            hint_k=cfg.hint_k,
            retrieval_mode=cfg.retrieval_mode,
            max_steps=cfg.max_steps,
            workers=cfg.workers,
            batch_size=cfg.batch_size,
            progress=self.progress,
        )
        _stop_if_failed(result)
        stats = plan_stats(self.db, nav.name, problem_ids, self._keys(nav, n))
        return {
            "run_id": result["run_id"],
            "plans_requested": n * len(problem_ids),
            "units_failed": result.get("failed", 0),
            **stats,
        }

    def _heldout(self, nav) -> dict[str, Any]:
        return self._sample_into(nav, self.eval_ids, self.cfg.eval_n)

    def _sample(self, nav) -> dict[str, Any]:
        return self._sample_into(nav, self.problem_ids, self.cfg.n)

    def _evaluate(self, nav) -> dict[str, Any]:
        from pipelines.evaluate import DEFAULT_SAMPLING, evaluate
        from pipelines.llm.roles import resolve_role

        cfg = self.cfg
        role = resolve_role(self.db, "inference", cfg.inference, cfg.llm_config, DEFAULT_SAMPLING)
        result = evaluate(
            self.db,
            f"navigator={nav.name};problem={_ranges(self.problem_ids)}",
            role.config,
            samples=cfg.samples,
            sampling=role.sampling,
            prompts_dir=role.prompts_dir,
            workers=cfg.workers,
            batch_size=cfg.batch_size,
            refresh=False,
            progress=self.progress,
        )
        _stop_if_failed(result)
        return {
            "run_id": result["run_id"],
            "inference": role.name,
            "units_failed": result.get("failed", 0),
            **{k: result.get(k, 0) for k in ("rollouts_written", "rollouts_correct")},
        }

    def _rewards(self, nav) -> dict[str, Any]:
        from kb.rewards import refresh_rewards

        refresh_rewards(self.db)
        return reward_stats(self.db, nav.name, self.problem_ids, self._keys(nav, self.cfg.n))

    def _pairs(self, nav, k: int) -> dict[str, Any]:
        from pipelines.pairs import build_pairs

        cfg = self.cfg
        result = build_pairs(
            self.db,
            refresh=False,
            min_margin=cfg.min_margin,
            min_rollouts=cfg.min_rollouts,
            max_pairs_per_problem=cfg.max_pairs_per_problem,
            navigator_model=nav.name,
        )
        out = {"run_id": result["run_id"], "params_hash": result["params_hash"], "pairs": result["total"]}
        if result["total"]:
            return out
        eligible = _eligible(self.db, nav.name, self.problem_ids, self._keys(nav, cfg.n), cfg.min_rollouts)
        if not eligible:
            raise KbError(
                f"loop {cfg.name!r} iteration {k}: no DPO pairs: no trajectory of {nav.name!r} on a "
                f"train-split problem has {cfg.min_rollouts} rollouts (similar sets too small, or "
                "problems without answers?); lower min_rollouts or roll out more (samples)"
            )
        # Rewards no longer tell this navigator's plans apart: nothing left to learn from, the loop ends here.
        return {
            **out,
            "converged": f"the rewards of the {eligible} rolled-out trajectories of a problem never "
            f"differ by {cfg.min_margin}",
        }

    def _export(self, k: int) -> dict[str, Any]:
        from pipelines.export import export

        pairs = self._done_step(k, "pairs")
        if pairs.get("converged"):
            return {"skipped": "no pairs"}
        out = Path(self.cfg.out_dir) if self.cfg.out_dir else kb_config.home_dir() / "loops" / self.cfg.name
        try:
            manifest = export(
                self.db, "dpo", out / f"it{k}-dpo", pairs=pairs["params_hash"], license=self.cfg.license
            )
        except InputError as e:
            if e.field != "--license":
                raise
            raise InputError(
                f"{e.reason}; in a loop, the config key `license`", record="loop config", field="license"
            ) from None
        return {"dataset": manifest["id"], "rows": sum((manifest.get("row_counts") or {}).values())}

    def _done_step(self, k: int, step: str) -> dict[str, Any]:
        found = self._done(k).get(step)
        if found is None:  # the record is written before the next step starts, so this is a bug
            raise KbError(f"loop {self.cfg.name!r} iteration {k}: step {step!r} has no record")
        return found

    def _train(self, k: int) -> dict[str, Any]:
        from pipelines.llm.registry import clear_backend_cache
        from pipelines.train.launch import plan
        from pipelines.train.registry import get_run, navigator_path, register_navigator
        from pipelines.train.run import execute

        cfg, name = self.cfg, trained_name(self.cfg, k)
        if self._done_step(k, "pairs").get("converged"):
            return {"skipped": "no pairs"}
        dataset = self._done_step(k, "export")["dataset"]
        if navigator_path(self.db, name) is None:
            clear_backend_cache()  # the navigators loaded for sampling leave their memory to training
            base = self._base_model(k)
            previous = _previous_training(self.db, dataset, base)
            if previous and previous["status"] == "succeeded":  # trained, killed before it was registered
                register_navigator(
                    self.db,
                    name=name,
                    path=previous["output_path"],
                    base_model=base,
                    training_run_id=previous["id"],
                )
            else:
                resume = _resumable(self.db, previous)
                p = plan(
                    self.db,
                    "dpo",
                    dataset=None if resume else dataset,
                    base_model=None if resume else base,
                    config_file=cfg.train_config,
                    overrides=cfg.train,
                    num_gpus=cfg.num_gpus,
                    name=name,
                    resume=resume,
                )
                execute(self.db, p)
        run_id = _navigator_run(self.db, name)
        metrics = (get_run(self.db, run_id, with_steps=False)["metrics"] or {}) if run_id else {}
        return {
            "navigator": name,
            "training_run": run_id,
            "dataset": dataset,
            **{
                key: metrics.get(key)
                for key in ("rewards/accuracies", "rewards/margins", "loss", "global_step")
            },
        }

    def _base_model(self, k: int) -> str:
        """The model iteration K trains, as a resolved local directory (how training runs record it)."""
        from pipelines.train.launch import _model_dir

        if k > 0:
            return _model_dir(self.db, trained_name(self.cfg, k - 1))
        candidate = self.cfg.base_model or self.cfg.navigator
        if not candidate:  # the navigator role comes from llm_config: train its local model, if it has one
            role = self._navigator(None).config
            candidate = role.options.get("model_path") if role.backend in NAVIGATOR_BACKENDS else None
        if candidate:
            head, sep, rest = candidate.partition(":")
            if sep and head in NAVIGATOR_BACKENDS:
                candidate = rest
            try:
                return _model_dir(self.db, candidate)
            except InputError:
                if self.cfg.base_model:
                    raise
        raise InputError(
            "the navigator of iteration 0 is not a local model or a registered navigator; give the "
            "model to train as base_model",
            record="loop config",
            field="base_model",
        )


def _previous_training(db: Database, dataset: str, base: str) -> dict[str, Any] | None:
    """The latest DPO run on DATASET from BASE that no navigator came out of (an earlier, cut-off attempt)."""
    with db.engine.connect() as conn:
        row = (
            conn.execute(
                sa.text(
                    "SELECT r.id, r.status, r.output_path FROM training_run r WHERE r.stage = 'dpo' "
                    "AND r.dataset_version_id = :d AND r.base_model = :b "
                    "AND NOT EXISTS (SELECT 1 FROM navigator_model n WHERE n.training_run_id = r.id) "
                    "ORDER BY r.id DESC LIMIT 1"
                ),
                {"d": dataset, "b": base},
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


def _stop_if_failed(result: dict[str, Any]) -> None:
    """A stage whose every unit failed (e.g. no plan of any problem parsed) stops the loop with its reasons
    (the stage's own exit code); some failed units are normal in sampling and are only counted."""
    if result.get("outcome") == "failed":
        from kb.runs import raise_for_outcome

        raise_for_outcome(result)


def _eligible(
    db: Database, navigator_name: str, problem_ids: list[int], keys: list[str], min_rollouts: int
) -> int:
    """Trajectories of those plans on train-split problems with enough rollouts to be paired."""
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM trajectory_reward r JOIN trajectory t ON t.id = r.trajectory_id "
                "WHERE r.split = 'train' AND r.n_rollouts >= :m AND t.navigator_model = :nav "
                "AND t.problem_id = ANY(:ids) AND t.sample_key = ANY(:keys)"
            ),
            {"m": min_rollouts, "nav": navigator_name, "ids": problem_ids, "keys": keys},
        ).scalar_one()


def _resumable(db: Database, previous: dict[str, Any] | None) -> int | None:
    """PREVIOUS's id when it left a checkpoint to resume from; a run still marked running may belong to a
    live trainer, so it is not touched (a fresh run starts in its own directory)."""
    if previous is None or previous["status"] not in ("interrupted", "failed"):
        return None
    from pipelines.train.registry import resumable

    try:
        resumable(db, previous["id"], "dpo")
    except KbError:
        return None
    return previous["id"]


def _navigator_run(db: Database, name: str) -> int | None:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT training_run_id FROM navigator_model WHERE name = :n"), {"n": name}
        ).scalar()


def _ranges(ids: list[int]) -> str:
    """[1, 2, 3, 7] -> '1-3,7' (the selection language's id ranges)."""
    out, ids = [], sorted(set(ids))
    start = prev = ids[0]
    for i in ids[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        out.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(out)


# ---- figures -------------------------------------------------------------------------------------------

_PLANS_SQL = sa.text("""
    SELECT t.id, r.reward,
           p.extra->>'expected_template' AS expected,
           (SELECT bool_and(coalesce(v.name, s.template_phrase) = p.extra->>'expected_template')
            FROM trajectory_step s LEFT JOIN template_version v ON v.id = s.template_version_id
            WHERE s.trajectory_id = t.id) AS right_template
    FROM trajectory t JOIN problem p ON p.id = t.problem_id
    LEFT JOIN trajectory_reward r ON r.trajectory_id = t.id AND r.n_rollouts > 0
    WHERE t.navigator_model = :nav AND t.problem_id = ANY(:ids) AND t.sample_key = ANY(:keys)
""")


def plan_stats(db: Database, navigator_name: str, problem_ids: list[int], keys: list[str]) -> dict[str, Any]:
    """The plans NAVIGATOR_NAME produced for PROBLEM_IDS under sample KEYS: how many parsed (a plan that did
    not parse is not stored) and, over problems that record an expected template, how many use it in
    every step."""
    with db.engine.connect() as conn:
        rows = (
            conn.execute(_PLANS_SQL, {"nav": navigator_name, "ids": problem_ids, "keys": keys})
            .mappings()
            .all()
        )
    requested = len(problem_ids) * len(keys)
    judged = [r for r in rows if r["expected"] is not None]
    right = sum(1 for r in judged if r["right_template"])
    return {
        "plans_parsed": len(rows),
        "parse_rate": round(len(rows) / requested, 4) if requested else None,
        "plans_with_expected_template": len(judged),
        "right_template": right,
        "right_template_share": round(right / len(judged), 4) if judged else None,
    }


def reward_stats(
    db: Database, navigator_name: str, problem_ids: list[int], keys: list[str]
) -> dict[str, Any]:
    """Mean and spread (population standard deviation) of the rewards of those plans."""
    with db.engine.connect() as conn:
        rewards = [
            float(r["reward"])
            for r in conn.execute(
                _PLANS_SQL, {"nav": navigator_name, "ids": problem_ids, "keys": keys}
            ).mappings()
            if r["reward"] is not None
        ]
    if not rewards:
        return {"rewarded": 0, "reward_mean": None, "reward_std": None}
    mean = sum(rewards) / len(rewards)
    std = (sum((x - mean) ** 2 for x in rewards) / len(rewards)) ** 0.5
    return {"rewarded": len(rewards), "reward_mean": round(mean, 4), "reward_std": round(std, 4)}


# ---- reading -------------------------------------------------------------------------------------------


def latest_loop(db: Database) -> str:
    with db.engine.connect() as conn:
        name = conn.execute(
            sa.text("SELECT params->>'loop' FROM pipeline_run WHERE stage = :s ORDER BY id DESC LIMIT 1"),
            {"s": STAGE},
        ).scalar()
    if name is None:
        raise NotFound("no loop has run yet; start one with `reasonflux loop --config loop.yaml`")
    return name


def show(db: Database, loop: str | None = None) -> dict[str, Any]:
    """Per iteration: plans sampled, parse rate, rewards, pairs, DPO reward accuracy and margin, held-out
    figures; from the iterations' records (the steps not finished yet are empty)."""
    name = loop or latest_loop(db)
    with db.engine.connect() as conn:
        runs = (
            conn.execute(
                sa.text(
                    "SELECT id, status, params, counts FROM pipeline_run WHERE stage = :s AND params->>'loop' = :n "
                    "ORDER BY id"
                ),
                {"s": ITERATION_STAGE, "n": name},
            )
            .mappings()
            .all()
        )
        invocations = (
            conn.execute(
                sa.text(
                    "SELECT id, status, started_at, finished_at, error FROM pipeline_run WHERE stage = :s "
                    "AND params->>'loop' = :n ORDER BY id"
                ),
                {"s": STAGE, "n": name},
            )
            .mappings()
            .all()
        )
    if not invocations:
        raise NotFound(f"no loop named {name!r}; list loops with `reasonflux runs list --stage loop`")
    merged: dict[int, dict[str, Any]] = {}
    for r in runs:
        k = int(r["params"]["iteration"])
        entry = merged.setdefault(k, {"steps": {}, "runs": []})
        entry["steps"].update((r["counts"] or {}).get("steps") or {})
        entry["runs"].append(r["id"])
        entry["status"] = r["status"]
    rows = [_row(k, e) for k, e in sorted(merged.items())]
    return {"loop": name, "runs": [dict(i) for i in invocations], "iterations": rows}


def _row(k: int, entry: dict[str, Any]) -> dict[str, Any]:
    s = entry["steps"]
    sample, rewards, pairs = s.get("sample", {}), s.get("rewards", {}), s.get("pairs", {})
    train, held = s.get("train", {}), s.get("heldout", {})
    nav = s.get("navigator", {})
    final = bool(nav.get("final")) and "sample" not in s
    return {
        "iteration": k,
        "navigator": nav.get("name"),
        "final": final,
        "plans": _ratio(sample.get("plans_parsed"), sample.get("plans_requested")),
        "plans_requested": sample.get("plans_requested"),
        "plans_parsed": sample.get("plans_parsed"),
        "parse_rate": sample.get("parse_rate"),
        "right_template": sample.get("right_template_share"),
        "reward_mean": rewards.get("reward_mean"),
        "reward_std": rewards.get("reward_std"),
        "pairs": pairs.get("pairs"),
        "dpo_accuracy": train.get("rewards/accuracies"),
        "dpo_margin": train.get("rewards/margins"),
        "trained": train.get("navigator"),
        "training_run": train.get("training_run"),
        "dataset": s.get("export", {}).get("dataset"),
        "heldout_plans": _ratio(held.get("plans_parsed"), held.get("plans_requested")),
        "heldout_requested": held.get("plans_requested"),
        "heldout_parsed": held.get("plans_parsed"),
        "heldout_parse_rate": held.get("parse_rate"),
        "heldout_right_template": held.get("right_template_share"),
        "heldout_judged": held.get("plans_with_expected_template"),
        # A loop continued past its old end turns the old final row into an ordinary iteration.
        "seconds": {
            name: step["seconds"] for name, step in s.items() if isinstance(step, dict) and "seconds" in step
        },
        "status": "converged (no pairs): the loop ended"
        if pairs.get("converged")
        else "done"
        if "train" in s
        else "final"
        if final and "heldout" in s
        else f"{entry.get('status')} (steps done: {', '.join(s) or 'none'})",
        "runs": entry["runs"],
    }


def _ratio(a: Any, b: Any) -> str | None:
    return f"{a}/{b}" if a is not None and b is not None else None
