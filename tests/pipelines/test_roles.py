"""The one role resolver: a registered navigator works everywhere a model does, written the same way."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from kb.errors import InputError, NotFound
from pipelines.llm.base import SamplingParams
from pipelines.llm.roles import resolve_role
from pipelines.train.navigators import register_navigator


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from demo.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "m")


def test_specs_names_and_sampling_resolve_one_way(db, tiny_dir, tmp_path):
    register_navigator(db, name="nav-a", path=str(tiny_dir), base_model=None, training_run_id=None)
    named = resolve_role(db, "navigator", "nav-a", None, SamplingParams(max_tokens=7))
    assert (named.config.backend, named.config.options["model_path"], named.name) == (
        "transformers",
        str(tiny_dir),
        "nav-a",
    )
    assert named.sampling.max_tokens == 7
    on_vllm = resolve_role(db, "navigator", "vllm:nav-a", None)
    assert on_vllm.config.backend == "vllm" and on_vllm.config.options["model_path"] == str(tiny_dir)
    by_path = resolve_role(db, "navigator", f"transformers:{tiny_dir}", None)
    assert by_path.config.options == {"model_path": str(tiny_dir)}
    # defaults < config file < flags
    cfg = tmp_path / "llm.toml"
    cfg.write_text(
        '[roles.navigator]\nbackend = "transformers"\nmodel_path = "/x"\n'
        "[roles.navigator.sampling]\ntemperature = 0.5\nmax_tokens = 99\n"
    )
    r = resolve_role(db, "navigator", "nav-a", str(cfg), SamplingParams(top_p=0.9), max_tokens=5)
    assert (r.sampling.temperature, r.sampling.top_p, r.sampling.max_tokens) == (0.5, 0.9, 5)
    assert r.config.options["model_path"] == str(tiny_dir)  # the name beats the file's path
    with pytest.raises(NotFound, match="no navigator or model named 'nope'"):
        resolve_role(db, "navigator", "nope", None)
    with pytest.raises(InputError, match="no LLM configured"):
        resolve_role(db, "inference", None, None)


@pytest.mark.slow
def test_a_registered_navigator_is_accepted_by_sample_evaluate_solve_and_eval(cli, db, tiny_dir, tmp_path):
    register_navigator(db, name="nav-b", path=str(tiny_dir), base_model=None, training_run_id=None)
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"problem": "Solve x+1=2.", "answer": "1", "unique_id": "r/1"}) + "\n"
    )
    cli("problems", "import", str(tmp_path / "p.jsonl"), "--preset", "math500", "--no-embed")
    # a random tiny model rarely plans: the command may exit 5 (every unit failed), as it should
    sampled = json.loads(
        cli(
            "sample",
            "--n",
            "1",
            "--navigator",
            "nav-b",
            "--max-tokens",
            "4",
            "--hint-k",
            "0",
            "--json",
            expect=None,
        ).stdout
    )
    assert sampled["units_done"] + sampled["units_failed"] == 1
    with db.engine.begin() as conn:
        from pipelines.trajectories_store import insert_trajectory

        pid = conn.execute(sa.text("SELECT id FROM problem")).scalar()
        insert_trajectory(conn, pid, [("Subtract one", None, None)], "hand", "k", abstraction="linear")
    cli("rollouts", "--trajectories", "navigator=hand", "--inference", "nav-b", "--max-tokens", "4", "--json")
    cli(
        "solve",
        "Solve x+1=2.",
        "--navigator",
        "nav-b",
        "--max-tokens",
        "4",
        "--parse-retries",
        "0",
        "--plan-hints",
        "0",
        "--json",
        expect=None,
    )
    cli(
        "eval",
        "--problems",
        "all",
        "--navigator",
        "nav-b",
        "--max-tokens",
        "4",
        "--parse-retries",
        "0",
        "--no-baseline",
        "--out",
        str(tmp_path / "eval"),
        "--json",
        expect=None,
    )
    with db.engine.connect() as conn:
        stages = dict(
            conn.execute(
                sa.text("SELECT stage, count(*) FROM llm_call WHERE model = 'nav-b' GROUP BY stage")
            ).all()
        )
    assert {"sample", "evaluate", "solve:navigator"} <= set(stages), stages
    assert stages["solve:navigator"] >= 2  # solve and eval each asked the registered navigator for a plan
