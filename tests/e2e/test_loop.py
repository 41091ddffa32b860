"""The loop as one command: config checking, the controlled world, resuming after a kill, and the proof that
the loop learns (the right-template share of held-out plans rises)."""

from __future__ import annotations

import json
import os

import pytest
import sqlalchemy as sa

from demo import toy_world
from kb.errors import InputError
from pipelines import loop, loop_config, loop_steps
from pipelines.llm.base import ChatRequest
from pipelines.prompts import Prompts


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "home"))


def test_config_file_unknown_key_is_refused_naming_file_and_key(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: a\niterations: 2\nsample_count: 3\n")
    with pytest.raises(InputError) as e:
        loop.LoopConfig.load(path)
    assert e.value.file == str(path) and e.value.field == "sample_count"

    path.write_text("name: a\niterations: two\n")
    with pytest.raises(InputError) as e:
        loop.LoopConfig.load(path)
    assert e.value.field == "iterations"

    path.write_text("name: a\ntrain: {learning_rat: 1.0}\n")
    with pytest.raises(InputError) as e:
        loop.LoopConfig.load(path)
    assert e.value.field == "learning_rat"


def test_config_flags_beat_the_file_and_paths_are_relative_to_it(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: a\nn: 3\ntrain_config: dpo.yaml\ntrain: {beta: 0.2}\n")
    cfg = loop.LoopConfig.load(path, {"n": 5, "iterations": None})
    assert cfg.n == 5 and cfg.iterations == 2 and cfg.train == {"beta": 0.2}
    assert cfg.train_config == str(tmp_path / "dpo.yaml")
    assert cfg.identity() == loop.LoopConfig.load(path, {"n": 5, "iterations": 7}).identity()
    assert cfg.identity() != loop.LoopConfig.load(path, {"n": 4}).identity()


def test_the_exports_licence_is_checked_and_may_change_when_a_loop_continues(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: a\nlicense: Use it nicely!\n")
    with pytest.raises(InputError) as e:
        loop.LoopConfig.load(path)
    assert e.value.field == "license"
    path.write_text("name: a\nlicense: apache-2.0\n")
    cfg = loop.LoopConfig.load(path)
    (tmp_path / "before.yaml").write_text("name: a\n")
    assert (
        cfg.license == "apache-2.0"
        and cfg.identity() == loop.LoopConfig.load(tmp_path / "before.yaml").identity()
    )


def test_cli_refuses_an_unknown_config_key_naming_file_and_key(cli, db, tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("name: a\nnavigatr: toy-sft\n")
    result = cli("loop", "--config", str(path), expect=2)
    assert str(path) in result.output and "navigatr" in result.output


def test_set_flags_join_the_files_training_fields(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text("train: {beta: 0.2, max_steps: 5}\n")
    cfg = loop.LoopConfig.load(path, {"train": {"max_steps": "7"}})
    assert cfg.train == {"beta": 0.2, "max_steps": "7"}


def test_continuing_a_loop_with_other_settings_is_refused(db):
    from kb.errors import ConflictError
    from kb.runs import pipeline_run

    first = loop.LoopConfig.load(None, {"name": "x", "n": 4})
    with pipeline_run(db, loop.STAGE, {"loop": "x", "identity": first.identity(), "config": first.to_dict()}):
        pass
    with pytest.raises(ConflictError) as e:
        loop.run_loop(db, loop.LoopConfig.load(None, {"name": "x", "n": 5}))
    assert "n: 4 -> 5" in str(e.value)


def test_a_second_run_of_a_running_loop_is_refused_at_start_naming_the_first(cli, db):
    """Two runs of one loop at once would train the same iteration twice; the second exits 3 before any work."""
    from kb.runs import exclusive, pipeline_run

    first = loop.LoopConfig.load(None, {"name": "busy"})
    with (
        exclusive(db, loop.STAGE, "loop", "busy"),
        pipeline_run(
            db, loop.STAGE, {"loop": "busy", "identity": first.identity(), "config": first.to_dict()}
        ) as (run_id, _),
    ):
        result = cli("loop", "--name", "busy", "--navigator", "scripted", expect=3)
        assert f"loop 'busy' is already running (run {run_id}, pid {os.getpid()}" in result.output
        assert len(result.output.strip().splitlines()) == 1
        with db.engine.connect() as conn:  # nothing started: no second loop run
            assert conn.execute(sa.text("SELECT count(*) FROM pipeline_run")).scalar() == 1
        # Another loop name is not held up by it.
        with exclusive(db, loop.STAGE, "loop", "other"):
            pass
    with exclusive(db, loop.STAGE, "loop", "busy"):  # released when the first ends
        pass


def test_held_out_problems_must_not_be_sampled_for_training(db):
    toy_world.setup(db, train_per_family=2, test_per_family=1, similar_k=1)
    cfg = loop.LoopConfig.load(
        None,
        {
            "name": "x",
            "problems": "source=toy-world",
            "eval_problems": "source=toy-world;split=test",
            "navigator": "scripted",
        },
    )
    with pytest.raises(InputError) as e:
        loop.run_loop(db, cfg)
    assert e.value.field == "eval_problems"
    with db.engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM pipeline_run WHERE stage LIKE 'loop%'")).scalar() == 0
        )


def test_a_loop_whose_rewards_no_longer_differ_ends_converged(cli, db):
    """The scripted play-along navigator plans the same for every seed: every plan of a problem earns the
    same reward, so there is no pair and nothing to train: the loop ends there, not with an error."""
    toy_world.setup(db, train_per_family=3, test_per_family=1, similar_k=2)
    cfg = loop.LoopConfig.load(
        None,
        {
            "name": "flat",
            "problems": "source=toy-world;split=train",
            "n": 2,
            "navigator": "scripted",
            "inference": "toy-world",
            "hint_k": 0,
            "retrieval_mode": "text",
            "min_rollouts": 2,
            "iterations": 3,
        },
    )
    result = loop.run_loop(db, cfg, progress=False)
    (row,) = result["iterations"]
    assert row["plans"] == "18/18" and row["pairs"] == 0 and row["trained"] is None
    assert row["status"].startswith("converged")
    with db.engine.connect() as conn:
        counts = conn.execute(sa.text("SELECT status, counts FROM pipeline_run WHERE stage = 'loop'")).one()
        assert conn.execute(sa.text("SELECT count(*) FROM training_run")).scalar() == 0
    assert counts.status == "succeeded" and counts.counts["converged"].startswith("iteration 0")
    table = cli("loop", "show", "flat").stdout
    assert "converged" in table and "18/18" in table


def test_a_finished_but_unregistered_training_is_registered_not_redone(db, tmp_path):
    """Killed between the end of DPO and the registration: the rerun registers that run's model."""
    from kb.runs import pipeline_run
    from pipelines.train import navigators, training_runs
    from tests.support.train_support import config_only_model, dpo_rows, write_export

    base = config_only_model(tmp_path / "base", {"model_type": "qwen2"})
    dataset = write_export(db, tmp_path / "dpo", "dpo", dpo_rows(2))
    cfg = loop.LoopConfig.load(None, {"name": "k", "base_model": str(base), "navigator": "scripted"})
    with pipeline_run(db, loop_config.ITERATION_STAGE, {"loop": "k", "iteration": 0}) as (_, counts):
        counts["steps"] = {"pairs": {"pairs": 2}, "export": {"dataset": dataset}}
    run_id = training_runs.start_run(
        db,
        stage="dpo",
        base_model=str(base.resolve()),
        dataset_version_id=dataset,
        config={},
        output_path=str(tmp_path / "out"),
    )
    training_runs.finish_run(db, run_id, "succeeded")

    ctx = loop_steps.LoopSteps(db, cfg, parent=0, problem_ids=[], eval_ids=[], progress=False)
    assert ctx._train(0)["training_run"] == run_id
    assert navigators.navigator_path(db, "k-it0") == str(tmp_path / "out")
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM training_run")).scalar() == 1


def test_iteration_0_trains_the_model_the_navigator_role_runs(db, tmp_path):
    from tests.support.train_support import config_only_model

    model = config_only_model(tmp_path / "nav", {"model_type": "qwen2"})
    llm = tmp_path / "llm.toml"
    llm.write_text(f'[roles.navigator]\nbackend = "transformers"\nmodel_path = "{model}"\n')
    ctx = loop_steps.LoopSteps(db, loop.LoopConfig.load(None, {"llm_config": str(llm)}), 0, [], [], False)
    assert ctx._base_model(0) == str(model.resolve())
    remote = loop.LoopConfig.load(None, {"navigator": "openai:m@http://127.0.0.1:9/v1"})
    with pytest.raises(InputError) as e:
        loop_steps.LoopSteps(db, remote, 0, [], [], False)._base_model(0)
    assert e.value.field == "base_model"


def test_a_navigator_whose_plans_never_parse_stops_the_loop(db, tmp_path):
    from kb.runs import RunFailed

    toy_world.setup(db, train_per_family=2, test_per_family=1, similar_k=1)
    llm = tmp_path / "llm.toml"
    llm.write_text('[roles.navigator]\nbackend = "scripted"\ndefault = "I would rather not plan."\n')
    cfg = loop.LoopConfig.load(
        None,
        {
            "name": "mute",
            "problems": "source=toy-world;split=train",
            "n": 2,
            "llm_config": str(llm),
            "inference": "toy-world",
            "hint_k": 0,
        },
    )
    with pytest.raises(RunFailed) as e:
        loop.run_loop(db, cfg, progress=False)
    assert "sample run" in str(e.value) and "unparseable plan" in str(e.value)
    with db.engine.connect() as conn:
        statuses = dict(
            conn.execute(sa.text("SELECT stage, status FROM pipeline_run WHERE stage LIKE 'loop%'")).all()
        )
    assert statuses == {"loop": "failed", "loop-iteration": "failed"}


def test_ranges():
    assert loop_steps.id_ranges([7, 1, 2, 3, 9, 10]) == "1-3,7,9-10"


def _rollout(problem: str, templates: list[str]) -> str:
    steps = "\n".join(f"{i}. Combine the two numbers.\n   Template: {t}" for i, t in enumerate(templates, 1))
    messages = Prompts().messages("inference", problem=problem, steps=steps, abstraction="x")
    return toy_world.ToyWorldSolver()(messages)


def test_toy_world_solver_succeeds_mostly_with_the_right_template():
    problems = toy_world.problems("train", 40)

    def correct(p, template):
        from pipelines.grader import extract_answer, grade

        return grade(extract_answer(_rollout(p["text"], [template])), p["answer"])

    right = sum(correct(p, p["expected_template"]) for p in problems) / len(problems)
    wrong_template = {
        f.name: next(g.template for g in toy_world.FAMILIES if g is not f) for f in toy_world.FAMILIES
    }
    wrong = sum(correct(p, wrong_template[p["family"]]) for p in problems) / len(problems)
    assert right >= 0.75 and wrong <= 0.25
    # deterministic, and a plan without a linked template is not a right plan
    assert _rollout(problems[0]["text"], ["Sum Rule"]) == _rollout(problems[0]["text"], ["Sum Rule"])
    assert "no template" in _rollout(problems[0]["text"], [])


def test_toy_world_setup_is_idempotent_and_sets_stay_in_family_and_split(db):
    first = toy_world.setup(db, train_per_family=4, test_per_family=2, similar_k=3)
    again = toy_world.setup(db, train_per_family=4, test_per_family=2, similar_k=3)
    assert first["problems_created"] == 18 and again["problems_created"] == 0 and again["similar_sets"] == 0
    with db.engine.connect() as conn:
        bad = conn.execute(
            sa.text(
                "SELECT count(*) FROM similar_set s JOIN similar_set_member m ON m.set_id = s.id "
                "JOIN problem a ON a.id = s.anchor_problem_id JOIN problem p ON p.id = m.problem_id "
                "WHERE a.subject <> p.subject OR a.split <> p.split OR a.id = p.id"
            )
        ).scalar()
        sizes = conn.execute(sa.text("SELECT DISTINCT size FROM similar_set")).scalars().all()
    assert bad == 0 and sorted(sizes) == [1, 3]  # test families have 2 problems: one neighbour each


def test_toy_world_backend_goes_through_the_one_resolver(db):
    from pipelines.llm.roles import resolve_role

    role = resolve_role(db, "inference", "toy-world", None)
    backend = role.create()
    p = toy_world.problems("test", 1)[0]
    steps = f"1. Combine.\n   Template: {p['expected_template']}"
    out = backend.generate(
        [ChatRequest(Prompts().messages("inference", problem=p["text"], steps=steps, abstraction="x"))]
    )
    assert out[0].error is None and "\\boxed{" in out[0].text


def test_loop_show_without_loops_is_a_clear_error(cli, db):
    result = cli("loop", "show", expect=1)
    assert "no loop has run yet" in result.output


# ---- the proof ---------------------------------------------------------------------------------------------

# Small sizes that still show the direction with a margin on a loaded 2-core machine (< 3 minutes).
WORLD = {"train_per_family": 12, "test_per_family": 4}
LOOP = toy_world.loop_settings("toy", iterations=2, n=4, eval_n=6)


# Iteration 0's rows (the navigator toy-sft's) and how many runs sampled with it.
FIGURES = """
    SELECT (SELECT count(*) FROM trajectory WHERE navigator_model = 'toy-sft') AS trajectories,
           (SELECT count(*) FROM rollout r JOIN trajectory t ON t.id = r.trajectory_id
            WHERE t.navigator_model = 'toy-sft') AS rollouts,
           (SELECT count(*) FROM dpo_pair WHERE params->>'navigator_model' = 'toy-sft') AS pairs,
           (SELECT count(*) FROM dataset_version) AS datasets,
           (SELECT count(*) FROM pipeline_run WHERE stage = 'sample' AND params->>'navigator' = 'toy-sft')
               AS sample_runs
"""


class _Killed(KeyboardInterrupt):
    pass


@pytest.fixture
def one_thread():
    """The tiny model trains and samples in this process; on a busy 2-core machine two intra-op threads
    contend with everything else (measured: several times slower than one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_loop_resumes_after_a_kill_and_learns_the_right_template(cli, db, tmp_path, monkeypatch, one_thread):
    # The world, the SFT start navigator and the loop's config file, by the command a user runs.
    made = json.loads(
        cli(
            "loop",
            "toy-world",
            "--dir",
            str(tmp_path / "toy"),
            "--train-per-family",
            str(WORLD["train_per_family"]),
            "--test-per-family",
            str(WORLD["test_per_family"]),
            "--json",
        ).stdout
    )
    assert made["problems_created"] == 3 * (WORLD["train_per_family"] + WORLD["test_per_family"])
    cfg = loop.LoopConfig.load(made["config"])
    assert {k: getattr(cfg, k) for k in LOOP} == LOOP

    # Killed while iteration 0 trains: everything before is recorded; nothing is registered.
    real_train = loop_steps.LoopSteps._train

    def killed(self, k):
        raise _Killed()

    monkeypatch.setattr(loop_steps.LoopSteps, "_train", killed)
    with pytest.raises(_Killed):
        loop.run_loop(db, cfg, progress=False)
    with db.engine.connect() as conn:
        before = dict(conn.execute(sa.text(FIGURES)).one()._mapping)
        status = conn.execute(sa.text("SELECT status FROM pipeline_run WHERE stage = 'loop'")).scalar()
    assert status == "interrupted"
    partial = loop.show(db, "toy")["iterations"][0]
    assert partial["pairs"] and partial["trained"] is None and partial["status"].startswith("interrupted")

    monkeypatch.setattr(loop_steps.LoopSteps, "_train", real_train)
    result = loop.run_loop(db, cfg, progress=False)
    rows = {r["iteration"]: r for r in result["iterations"]}
    with db.engine.connect() as conn:
        after = dict(conn.execute(sa.text(FIGURES)).one()._mapping)
        names = conn.execute(sa.text("SELECT name FROM navigator_model ORDER BY id")).scalars().all()
    # iteration 0's finished steps were not run again: the same trajectories, rollouts, pairs and runs
    assert {k: after[k] for k in ("trajectories", "rollouts", "pairs", "sample_runs")} == {
        k: before[k] for k in ("trajectories", "rollouts", "pairs", "sample_runs")
    }
    assert before["sample_runs"] == 2  # train and held-out sampling of iteration 0, once each
    assert after["datasets"] == before["datasets"] + 1  # iteration 1's export
    assert names == ["toy-sft", "toy-it0", "toy-it1"]
    assert [rows[k]["navigator"] for k in (0, 1, 2)] == ["toy-sft", "toy-it0", "toy-it1"]
    assert rows[2]["final"] and rows[0]["status"] == rows[1]["status"] == "done"

    # Every iteration is a recorded run with its parameters, linked to the loop.
    with db.engine.connect() as conn:
        its = (
            conn.execute(sa.text("SELECT params FROM pipeline_run WHERE stage = 'loop-iteration'"))
            .scalars()
            .all()
        )
    assert {p["loop"] for p in its} == {"toy"} and {p["iteration"] for p in its} == {0, 1, 2}

    # Running the finished loop again does nothing: no new iteration record, no new rows.
    with db.engine.connect() as conn:
        runs_before = conn.execute(
            sa.text("SELECT count(*) FROM pipeline_run WHERE stage <> 'loop'")
        ).scalar()
        rows_before = conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM trajectory) + (SELECT count(*) FROM "
                "navigator_model) + (SELECT count(*) FROM training_run)"
            )
        ).scalar()
    rerun = json.loads(cli("loop", "--config", made["config"], "--json").stdout)
    assert rerun["iterations"] == json.loads(json.dumps(result["iterations"], default=str))
    with db.engine.connect() as conn:
        assert (
            conn.execute(sa.text("SELECT count(*) FROM pipeline_run WHERE stage <> 'loop'")).scalar()
            == runs_before
        )
        assert (
            conn.execute(
                sa.text(
                    "SELECT (SELECT count(*) FROM trajectory) + (SELECT count(*) FROM "
                    "navigator_model) + (SELECT count(*) FROM training_run)"
                )
            ).scalar()
            == rows_before
        )

    # `loop show --json` prints the same record.
    shown = json.loads(cli("loop", "show", "toy", "--json").stdout)
    assert shown["iterations"] == json.loads(json.dumps(result["iterations"], default=str))

    # DPO figures come from the training metrics.
    assert all(rows[k]["dpo_accuracy"] is not None and rows[k]["dpo_margin"] is not None for k in (0, 1))

    # The proof: held-out plans pick the right template clearly more often, and still parse.
    start, end = rows[0], rows[2]
    print(
        json.dumps(
            {
                k: {
                    c: rows[k][c]
                    for c in (
                        "heldout_plans",
                        "heldout_parse_rate",
                        "heldout_right_template",
                        "reward_mean",
                        "pairs",
                        "dpo_accuracy",
                    )
                }
                for k in rows
            }
        )
    )
    assert (
        end["heldout_requested"]
        == start["heldout_requested"]
        == 3 * WORLD["test_per_family"] * LOOP["eval_n"]
    )
    assert end["heldout_right_template"] >= start["heldout_right_template"] + 0.2
    assert end["heldout_parse_rate"] >= 0.8
