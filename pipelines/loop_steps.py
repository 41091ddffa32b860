"""The steps of a loop iteration: resolve the navigator, sample, evaluate, rewards, pairs, export, train and
register, each recorded in the iteration's run as soon as it finishes, and skipped when an earlier run of the
iteration finished it (`pipelines.loop` explains the resumption)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb import config as kb_config
from kb.db import Database
from kb.errors import InputError, KbError
from kb.rewards import refresh_rewards
from kb.runs import pipeline_run, raise_for_outcome
from pipelines import evaluate as rollouts
from pipelines.evaluate import evaluate
from pipelines.export import export
from pipelines.llm.registry import clear_backend_cache
from pipelines.llm.roles import resolve_role
from pipelines.loop_config import ITERATION_STAGE, NAVIGATOR_BACKENDS, LoopConfig, trained_name
from pipelines.loop_record import plan_stats, reward_stats
from pipelines.pairs import build_pairs
from pipelines.sample import DEFAULT_SAMPLING, sample, sample_key
from pipelines.train.launch import plan, resolve_model_dir
from pipelines.train.navigators import navigator_path, register_navigator
from pipelines.train.run import execute
from pipelines.train.training_runs import get_run, resumable


class LoopSteps:
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
        return [sample_key(nav.sampling, self.cfg.base_seed + i) for i in range(n)]

    def _sample_into(self, nav, problem_ids: list[int], n: int) -> dict[str, Any]:
        cfg = self.cfg
        result = sample(
            self.db,
            f"ids={id_ranges(problem_ids)}",
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
        cfg = self.cfg
        role = resolve_role(self.db, "inference", cfg.inference, cfg.llm_config, rollouts.DEFAULT_SAMPLING)
        result = evaluate(
            self.db,
            f"navigator={nav.name};problem={id_ranges(self.problem_ids)}",
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
        refresh_rewards(self.db)
        return reward_stats(self.db, nav.name, self.problem_ids, self._keys(nav, self.cfg.n))

    def _pairs(self, nav, k: int) -> dict[str, Any]:
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
        if k > 0:
            return resolve_model_dir(self.db, trained_name(self.cfg, k - 1))
        candidate = self.cfg.base_model or self.cfg.navigator
        if not candidate:  # the navigator role comes from llm_config: train its local model, if it has one
            role = self._navigator(None).config
            candidate = role.options.get("model_path") if role.backend in NAVIGATOR_BACKENDS else None
        if candidate:
            head, sep, rest = candidate.partition(":")
            if sep and head in NAVIGATOR_BACKENDS:
                candidate = rest
            try:
                return resolve_model_dir(self.db, candidate)
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


def id_ranges(ids: list[int]) -> str:
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
