"""Exports: byte-identical twice, manifest contents, verify catches a changed byte, TRL formats load."""

from __future__ import annotations

import json
import shutil

import pytest
import sqlalchemy as sa

from kb import migrate
from kb import templates as T
from kb.dataset_verify import verify
from kb.datasets import VerificationError, sha256_file
from kb.db import session_scope
from pipelines import navigator
from pipelines.export import export
from pipelines.pairs import build_pairs
from pipelines.problems import content_hash
from pipelines.trajectories_store import insert_rollouts, insert_trajectory


def _problem(conn, text: str, split: str = "train") -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO problem (text, split, answer, content_hash, extra) "
            "VALUES (:t, :s, '1', :h, '{}') RETURNING id"
        ),
        {"t": text, "s": split, "h": content_hash(text)},
    ).scalar()


@pytest.fixture
def world(db):
    """Two templates, a train anchor with a 4-problem similar set, three trajectories with rewards 1, .5, 0."""
    with session_scope(db) as s:
        v1 = T.create_template(
            s,
            T.TemplateSpec(
                name="Telescoping sum",
                category="Sequences",
                tags=["sums"],
                description="Write terms as differences.",
                application_scope="Sums of fractions.",
            ),
        )
        v2 = T.create_template(
            s,
            T.TemplateSpec(
                name="Vieta's formulas",
                category="Algebra",
                tags=["roots"],
                description="Relate roots and coefficients.",
                application_scope="Symmetric functions of roots.",
            ),
        )
    with db.engine.begin() as conn:
        anchor = _problem(conn, "Compute 1/(1*2) + 1/(2*3) + ... + 1/(99*100).")
        members = [_problem(conn, f"Similar sum number {i}.") for i in range(4)]
        _problem(conn, "A test problem.", "test")
        build = conn.execute(
            sa.text(
                "INSERT INTO similar_build (method, params, params_hash) "
                "VALUES ('test', '{}', 'b') RETURNING id"
            )
        ).scalar()
        set_id = conn.execute(
            sa.text(
                "INSERT INTO similar_set (build_id, anchor_problem_id, anchor_split, size) "
                "VALUES (:b, :a, 'train', 4) RETURNING id"
            ),
            {"b": build, "a": anchor},
        ).scalar()
        conn.execute(
            sa.text(
                "INSERT INTO similar_set_member (set_id, problem_id, rank, similarity) "
                "VALUES (:s, :p, :r, 0.8)"
            ),
            [{"s": set_id, "p": p, "r": i} for i, p in enumerate(members)],
        )
    trajectories = []
    for key, n_correct in (("good", 4), ("mid", 2), ("bad", 0)):
        with session_scope(db) as s:
            steps = [
                {
                    "text": "Split each term",
                    "template_phrase": "telescoping",
                    "template_version_id": v1.id,
                    "retrieval_score": 0.9,
                },
                {"text": "Cancel and sum", "template_phrase": "Cancellation"},
            ]
            tid = insert_trajectory(
                s,
                anchor,
                steps,
                "nav",
                key,
                similar_set_id=set_id,
                abstraction=f"A telescoping sum ({key}).",
                sampling={"prompt_hash": navigator.CONTRACT_HASH, "hints": [v2.id]},
            )
            insert_rollouts(
                s,
                [
                    {"trajectory_id": tid, "problem_id": p, "correct": i < n_correct}
                    for i, p in enumerate(members)
                ],
            )
        trajectories.append(tid)
    pairs = build_pairs(db, min_margin=0.2, min_rollouts=4, max_pairs_per_problem=4)
    assert pairs["created"] == 3
    return {"anchor": anchor, "trajectories": trajectories, "pairs": pairs, "versions": (v1, v2)}


def _files(folder):
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_dpo_export_is_byte_identical_and_manifest_is_complete(cli, db, world, tmp_path):
    a = json.loads(cli("export", "dpo", "--out", str(tmp_path / "a"), "--jsonl", "--json").output)
    b = json.loads(cli("export", "dpo", "--out", str(tmp_path / "b"), "--jsonl", "--json").output)
    assert a["id"] == b["id"] and a["id"].startswith("dpo-")
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["kind"] == "dpo" and manifest["row_counts"] == {"train": 3}
    assert manifest["params"] == {
        "pairs": world["pairs"]["params_hash"],
        "min_margin": 0.0,
        "split": "train",
        "contracts": [navigator.CONTRACT_HASH],
        "license": "unknown",
    }
    assert manifest["license"] == "unknown"
    assert manifest["schema_revision"] == migrate.head_revision() and manifest["created_at"]
    assert set(manifest["files"]) == {"data/train.parquet", "jsonl/dpo.jsonl"}
    for name, digest in {**manifest["files"], **manifest["card"]}.items():
        assert sha256_file(tmp_path / "a" / name) == digest
    card = (tmp_path / "a" / "README.md").read_text()
    assert a["id"] in card and "data/train.parquet" in card and "prompt" in card
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, kind, files, row_counts FROM dataset_version")).all()
    assert len(rows) == 1 and rows[0].id == a["id"] and rows[0].files == manifest["files"]
    listed = json.loads(cli("datasets", "list", "--json").output)
    assert [r["id"] for r in listed] == [a["id"]]
    # Both folders the version was written to are recorded, in the order written; writing one again adds none.
    cli("export", "dpo", "--out", str(tmp_path / "a"), "--jsonl")
    folders = [str((tmp_path / x).resolve()) for x in ("a", "b")]
    assert listed[0]["paths"] == folders
    shown = json.loads(cli("datasets", "show", a["id"][:8], "--json").output)
    assert shown["params"] == manifest["params"]
    assert shown["paths"] == folders and shown["path"] == folders[0]
    assert str(tmp_path / "b") in cli("datasets", "list", "--csv").output
    # A different selection is a different version; it cannot go into a folder holding another one.
    cli("export", "dpo", "--out", str(tmp_path / "a"), "--min-margin", "0.6", expect=3)
    other = json.loads(
        cli("export", "dpo", "--out", str(tmp_path / "c"), "--min-margin", "0.6", "--json").output
    )
    assert other["id"] != a["id"] and other["row_counts"] == {"train": 1}


def test_dpo_rows_are_trl_conversational_preference_data(db, world, tmp_path):
    import datasets
    from trl.data_utils import is_conversational

    export(db, "dpo", tmp_path / "d")
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "d" / "data" / "train.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert ds.num_rows == 3 and {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    assert ds.features["prompt"] == datasets.List(
        {"role": datasets.Value("string"), "content": datasets.Value("string")}
    )
    first = ds[0]
    assert is_conversational(first)
    # The prompt is exactly the solver's plan request, with the hints the trajectory was sampled with.
    v2 = world["versions"][1]
    hint = navigator.Hint(v2.id, "Vieta's formulas", "Symmetric functions of roots.")
    assert first["prompt"] == navigator.plan_messages(
        "Compute 1/(1*2) + 1/(2*3) + ... + 1/(99*100).", hints=[hint]
    )
    good, _mid, bad = world["trajectories"]
    assert (first["chosen_trajectory_id"], first["rejected_trajectory_id"]) == (good, bad)
    # The reply names the linked template's name, else the phrase the plan named.
    assert first["chosen"] == [
        {
            "role": "assistant",
            "content": navigator.render_plan(
                "A telescoping sum (good).",
                [("Split each term", "Telescoping sum"), ("Cancel and sum", "Cancellation")],
            ),
        }
    ]
    assert navigator.parse_plan(first["rejected"][0]["content"]).abstraction == "A telescoping sum (bad)."
    assert [r["margin"] for r in ds] == pytest.approx([1.0, 0.5, 0.5])


@pytest.mark.slow
def test_dpo_export_trains_two_steps_with_trl(db, world, tmp_path):
    import datasets
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from demo.tiny_model import build_tiny_model

    export(db, "dpo", tmp_path / "d")
    model_dir = build_tiny_model(tmp_path / "tiny")
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "d" / "data" / "train.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=2,
        learning_rate=1e-4,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        max_length=1024,
    )
    trainer = DPOTrainer(
        model=str(model_dir),
        args=args,
        train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    result = trainer.train()
    assert result.global_step == 2
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["loss"] == h["loss"] for h in logged)  # finite, not NaN


def test_verify_catches_changed_bytes_and_kb_mismatch(cli, db, world, tmp_path):
    out = tmp_path / "v"
    export(db, "dpo", out, formats=("parquet", "jsonl"))
    ok = json.loads(cli("datasets", "verify", str(out), "--json").output)
    assert ok["manifest"] == "ok" and ok["kb"] == "ok"
    # An edited card is documentation, not corruption: a warning, exit 0.
    card = out / "README.md"
    card.write_text(card.read_text() + "\nNotes from our team.\n")
    edited = cli("datasets", "verify", str(out), "--json")
    assert json.loads(edited.stdout)["card"] == "edited" and "dataset card was edited" in edited.stderr
    assert "README.md" in edited.stderr
    data = bytearray((out / "data" / "train.parquet").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "data" / "train.parquet").write_bytes(bytes(data))
    result = cli("datasets", "verify", str(out), expect=1)
    assert "train.parquet" in result.output and "does not match" in result.output
    # Consistent with a rewritten manifest, but not with the KB's record.
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["data/train.parquet"] = sha256_file(out / "data" / "train.parquet")
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify(None, out)["manifest"] == "ok"
    with pytest.raises(VerificationError, match="knowledge base"):
        verify(db, out)
    (out / "stray.txt").write_text("x")  # beside the data: reported, not fatal
    assert "stray.txt" in cli("datasets", "verify", str(out), "--no-kb").stderr
    (out / "data" / "extra.parquet").write_text("x")  # among the data: loaders would read it
    assert "extra.parquet" in cli("datasets", "verify", str(out), "--no-kb", expect=1).output


def test_sft_templates_and_problems_exports(cli, db, world, tmp_path):
    import datasets

    from kb.template_jsonl import template_record

    with session_scope(db) as s:
        T.set_status(s, world["versions"][1].template_id, "deprecated")
    sft = export(db, "sft", tmp_path / "sft", plans=False)
    ds = datasets.load_dataset(
        "parquet",
        data_files=str(tmp_path / "sft" / "data" / "train.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert sft["row_counts"] == {"train": 1}  # the deprecated template is not trained on
    messages = ds[0]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert "Telescoping sum" in messages[0]["content"] and "sums" in messages[0]["content"]
    assert "Write terms as differences." in messages[1]["content"]
    assert "Sums of fractions." in messages[1]["content"]

    tpl = json.loads(
        cli("export", "templates", "--out", str(tmp_path / "tpl"), "--format", "jsonl", "--json").output
    )
    assert set(tpl["files"]) == {"data/train.jsonl"}
    lines = [json.loads(x) for x in (tmp_path / "tpl" / "data" / "train.jsonl").read_text().splitlines()]
    with session_scope(db) as s:
        expected = [template_record(T.resolve(s, v.template_id), v) for v in world["versions"]]
    assert lines == json.loads(json.dumps(expected))
    assert lines[1]["status"] == "deprecated"

    probs = json.loads(
        cli(
            "export",
            "problems",
            "--out",
            str(tmp_path / "p"),
            "--problems",
            "split=train",
            "--jsonl",
            "--json",
        ).output
    )
    assert probs["row_counts"] == {"train": 5}  # keyed by split, as `load_dataset` names it
    assert probs["params"] == {"problems": {"split": "train"}, "license": "unknown"}
    rows = [json.loads(x) for x in (tmp_path / "p" / "jsonl" / "problems.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows) and rows[0]["id"] == world["anchor"]
    again = json.loads(
        cli(
            "export",
            "problems",
            "--out",
            str(tmp_path / "p"),
            "--problems",
            "split=train",
            "--jsonl",
            "--json",
        ).output
    )
    assert again["id"] == probs["id"]  # re-exporting into the same folder is a no-op


def test_folders_and_records_of_earlier_versions_still_verify(cli, db, world, tmp_path):
    """Before format 3, row_counts were keyed by part name ({"problems": 5}); such a folder, and such a KB
    row, still verify, against each other and against a folder written today."""
    old = tmp_path / "old"
    probs = export(db, "problems", old, problems="split=train")
    manifest = json.loads((old / "manifest.json").read_text())
    manifest.update(format="reasonflux-dataset/2", row_counts={"problems": 5})
    (old / "manifest.json").write_text(json.dumps(manifest))
    with db.engine.begin() as conn:  # the row as the earlier version recorded it (rows are never updated)
        row = dict(
            conn.execute(sa.text("SELECT * FROM dataset_version WHERE id = :i"), {"i": probs["id"]})
            .mappings()
            .one()
        )
        conn.execute(sa.text("DELETE FROM dataset_version WHERE id = :i"), {"i": probs["id"]})
        conn.execute(
            sa.text(
                "INSERT INTO dataset_version (id, kind, params, schema_revision, row_counts, files, path, run_id, "
                "created_at) VALUES (:id, :kind, CAST(:params AS jsonb), :rev, '{\"problems\": 5}', "
                "CAST(:files AS jsonb), :path, :run, :at)"
            ),
            {
                **row,
                "rev": row["schema_revision"],
                "params": json.dumps(row["params"]),
                "files": json.dumps(row["files"]),
                "run": row["run_id"],
                "at": row["created_at"],
            },
        )
    assert json.loads(cli("datasets", "verify", str(old), "--json").output)["kb"] == "ok"
    # The same selection: the same version, recorded the old way.
    new = export(db, "problems", tmp_path / "new", problems="split=train")
    assert new["id"] == probs["id"] and new["row_counts"] == {"train": 5}
    assert json.loads(cli("datasets", "verify", str(tmp_path / "new"), "--json").output)["kb"] == "ok"
    manifest["row_counts"] = {"problems": 4}  # a different count is still a mismatch, in either vocabulary
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert "row_counts differs" in cli("datasets", "verify", str(old), expect=1).output


def test_plan_texts_render_replies_and_refuse_what_cannot_be_one(db, world):
    from kb.errors import InputError
    from pipelines.export_conversations import plan_texts

    good = world["trajectories"][0]
    with db.engine.connect() as conn:
        plans = plan_texts(conn, [good])
        assert plan_texts(conn, []) == {}
    assert navigator.parse_plan(plans[good]).steps[0].template == "Telescoping sum"
    with session_scope(db) as s:
        bare = insert_trajectory(s, world["anchor"], [], "nav", "bare", abstraction="x")
        no_abstraction = insert_trajectory(
            s,
            world["anchor"],
            [("Only step", world["versions"][1].id, None)],
            "nav",
            "plain",
            abstraction=None,
        )
    for tid in (bare, no_abstraction):
        with db.engine.connect() as conn, pytest.raises(InputError, match=f"trajectory {tid}"):
            plan_texts(conn, [tid])


def test_every_exported_reply_parses_with_the_solvers_parser(db, world, tmp_path):
    """The seam: what the exports teach is what the solver reads (DPO chosen/rejected, SFT plan rows)."""
    import pyarrow.parquet as pq

    export(db, "dpo", tmp_path / "dpo")
    export(db, "sft", tmp_path / "sft", plan_min_reward=0.5)
    dpo = pq.read_table(tmp_path / "dpo" / "data" / "train.parquet").to_pylist()
    sft = [
        r
        for r in pq.read_table(tmp_path / "sft" / "data" / "train.parquet").to_pylist()
        if r["kind"] == "plan"
    ]
    assert len(dpo) == 3 and len(sft) == 1  # the anchor's best trajectory (reward 1.0)
    for row in dpo:
        for column in ("chosen", "rejected"):
            navigator.parse_plan(row[column][0]["content"])
        assert row["prompt"][0]["content"] == navigator.SYSTEM
    for row in sft:
        *prompt, reply = row["messages"]
        assert navigator.request_kind(prompt) == "plan" and reply["role"] == "assistant"
        navigator.parse_plan(reply["content"])
        assert row["trajectory_id"] == world["trajectories"][0] and row["reward"] == 1.0


def test_sft_mix_is_selectable_and_recorded(db, world, tmp_path):
    none = export(db, "sft", tmp_path / "none", plans=False)
    strict = export(db, "sft", tmp_path / "strict", plan_min_reward=1.0)
    loose = export(db, "sft", tmp_path / "loose", plan_min_reward=0.0, plans_per_problem=3)
    assert [m["params"]["mix"]["plan_rows"] for m in (none, strict, loose)] == [0, 1, 3]
    assert loose["params"]["mix"] == {
        "template_rows": 2,
        "plan_rows": 3,
        "templates": True,
        "plans": True,
        "plan_min_reward": 0.0,
        "plans_per_problem": 3,
        "contracts": [navigator.CONTRACT_HASH],
    }
    only_plans = export(db, "sft", tmp_path / "plans", templates=False)
    assert (only_plans["params"]["mix"]["template_rows"], only_plans["row_counts"]) == (0, {"train": 1})
    from kb.errors import InputError

    with pytest.raises(InputError, match="template rows, plan rows or both"):
        export(db, "sft", tmp_path / "nothing", templates=False, plans=False)


def test_exports_refuse_mixed_contract_versions_unless_asked(cli, db, world, tmp_path):
    from kb.errors import InputError

    with session_scope(db) as s:
        old = insert_trajectory(
            s,
            world["anchor"],
            [("Guess", None, None)],
            "nav",
            "old",
            abstraction="Old format",
            sampling={"prompt_hash": "nav-old"},
            similar_set_id=None,
        )
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO dpo_pair (problem_id, chosen_trajectory_id, rejected_trajectory_id, "
                "chosen_reward, rejected_reward, margin, params, params_hash) "
                "VALUES (:p, :c, :r, 1, 0, 1, '{}', :h)"
            ),
            {
                "p": world["anchor"],
                "c": world["trajectories"][0],
                "r": old,
                "h": world["pairs"]["params_hash"],
            },
        )
    with pytest.raises(InputError, match="mixes navigator contract versions"):
        export(db, "dpo", tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    out = json.loads(
        cli("export", "dpo", "--out", str(tmp_path / "mixed"), "--allow-mixed-contracts", "--json").output
    )
    assert out["params"]["contracts"] == sorted([navigator.CONTRACT_HASH, "nav-old"])


def test_refused_folder_records_nothing(db, world, tmp_path):
    from kb.errors import ConflictError

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConflictError, match="not empty"):
        export(db, "problems", tmp_path / "busy")
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM dataset_version")).scalar() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]  # no temporary folder left behind


def test_training_reads_the_exports(db, world, tmp_path):
    from pipelines.train.data import load_rows, verify_export

    dpo = export(db, "dpo", tmp_path / "dpo")
    sft = export(db, "sft", tmp_path / "sft")
    rows = load_rows(verify_export(db, dpo["id"], stage="dpo"), "dpo")
    # By id: the first recorded folder that is still there.
    export(db, "dpo", tmp_path / "dpo2")
    shutil.rmtree(tmp_path / "dpo")
    assert verify_export(db, dpo["id"], stage="dpo").path == (tmp_path / "dpo2").resolve()
    assert rows.num_rows == 3 and rows[0]["chosen"][0]["role"] == "assistant"
    sft_rows = load_rows(verify_export(db, str(tmp_path / "sft"), stage="sft"), "sft")
    assert sft_rows.num_rows == sft["row_counts"]["train"] == 3  # two templates, one plan example


def test_templates_jsonl_export_imports_back_unchanged(cli, db, world, tmp_path):
    cli("export", "templates", "--out", str(tmp_path / "t"), "--format", "jsonl")
    out = json.loads(
        cli("import", "jsonl", str(tmp_path / "t" / "data" / "train.jsonl"), "--no-embed", "--json").output
    )
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar() == 2
    assert (out["created"], out["updated"], out["unchanged"]) == (0, 0, 2)


def _versions(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM dataset_version")).scalar()


def test_out_as_a_symlink_is_refused_in_one_line_with_no_row(cli, db, world, tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    result = cli("export", "dpo", "--out", str(tmp_path / "link"), expect=2)
    assert "symbolic link" in result.output and str(tmp_path / "link") in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert _versions(db) == 0 and not any((tmp_path / "real").iterdir())
    # The same export into the folder itself is complete, and is then the one row.
    made = json.loads(cli("export", "dpo", "--out", str(tmp_path / "real"), "--json").output)
    assert verify(db, tmp_path / "real")["id"] == made["id"] and _versions(db) == 1


@pytest.mark.parametrize("content", ["[1, 2]", "not json {", '"a string"'])
def test_a_manifest_in_out_that_is_no_object_is_one_line_naming_it(cli, db, world, tmp_path, content):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text(content)
    result = cli("export", "dpo", "--out", str(tmp_path / "out"), expect=3)
    assert str(tmp_path / "out" / "manifest.json") in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and _versions(db) == 0
    checked = cli("datasets", "verify", str(tmp_path / "out"), "--no-kb", expect=None)
    assert checked.exit_code not in (0, None) and str(tmp_path / "out" / "manifest.json") in checked.output
    assert "Traceback" not in checked.output and len(checked.output.strip().splitlines()) == 1


@pytest.mark.timeout(300)
def test_a_full_disk_is_one_line_naming_the_file_and_records_nothing(db, world, tmp_path):
    """`ulimit -f` (EFBIG on write; ENOSPC reads the same): no traceback, no row, nothing left behind."""
    import os
    import subprocess
    import sys

    script = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (2048, resource.RLIM_INFINITY)); "
        "from kb.cli import main; sys.argv = ['reasonflux', 'export', 'dpo', '--jsonl', '--out', sys.argv[1]]; "
        "main()"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "out")],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    assert (
        "cannot write " in proc.stderr and "File too large" in proc.stderr and "Traceback" not in proc.stderr
    )
    assert str(tmp_path) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert _versions(db) == 0 and list(tmp_path.iterdir()) == []


def test_dpo_rows_are_the_contract_rendering_of_each_pair(db, world, tmp_path):
    """Every row, against a row-by-row reference: trajectories that share a plan, a request or a problem are
    rendered once and reused, so each row must still hold its own trajectory's request and reply."""
    import pyarrow.parquet as pq

    v1, v2 = world["versions"]
    awkward = 'Split "each" term\\ é 漢字 🙂\tand\u2028go'
    with db.engine.begin() as conn:
        problems = [_problem(conn, f"Awkward problem {i}: {awkward}") for i in range(2)]
    ids = []
    for i, (problem, hints, abstraction, steps) in enumerate(
        [
            (problems[0], [v1.id], "Shared plan.", [{"text": awkward, "template_version_id": v1.id}]),
            (
                problems[0],
                [v2.id, 999_999],
                "Shared plan.",
                [{"text": awkward, "template_version_id": v1.id}],
            ),
            (problems[0], None, "Shared plan.", [{"text": awkward, "template_phrase": awkward}]),
            (problems[1], [v1.id], "Shared plan.", [{"text": awkward, "template_version_id": v1.id}]),
            (
                problems[1],
                [v1.id],
                f"Other {awkward}",
                [{"text": "One"}, {"text": "Two", "template_phrase": "p"}],
            ),
        ]
    ):
        sampling = {"prompt_hash": navigator.CONTRACT_HASH, **({"hints": hints} if hints is not None else {})}
        with session_scope(db) as s:
            ids.append(
                insert_trajectory(
                    s, problem, steps, "nav", f"awk-{i}", abstraction=abstraction, sampling=sampling
                )
            )
    pairs = [(0, 2), (1, 2), (2, 0), (3, 4), (4, 3), (0, 1)]
    with db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO dpo_pair (problem_id, chosen_trajectory_id, rejected_trajectory_id, chosen_reward, "
                "rejected_reward, margin, params, params_hash) VALUES (:p, :a, :b, 0.75, 0.25, 0.5, '{}', 'awkward')"
            ),
            [{"p": problems[0], "a": ids[a], "b": ids[b]} for a, b in pairs],
        )
    export(db, "dpo", tmp_path / "d", pairs="awkward")
    rows = pq.read_table(tmp_path / "d" / "data" / "train.parquet").to_pylist()
    assert [(r["chosen_trajectory_id"], r["rejected_trajectory_id"]) for r in rows] == [
        (ids[a], ids[b]) for a, b in pairs
    ]
    for row in rows:
        assert row["prompt"] == _reference_prompt(db, row["chosen_trajectory_id"])
        for column in ("chosen", "rejected"):
            assert row[column] == [
                {"role": "assistant", "content": _reference_reply(db, row[f"{column}_trajectory_id"])}
            ]
    assert rows[0]["chosen"] == rows[1]["chosen"] and rows[0]["prompt"] != rows[1]["prompt"]


def _reference_prompt(db, trajectory_id):
    with db.engine.connect() as conn:
        text, sampling = conn.execute(
            sa.text(
                "SELECT p.text, t.sampling FROM trajectory t JOIN problem p "
                "ON p.id = t.problem_id WHERE t.id = :t"
            ),
            {"t": trajectory_id},
        ).one()
        hints = []
        for h in sampling.get("hints") or []:
            found = conn.execute(
                sa.text("SELECT id, name, application_scope FROM template_version WHERE id = :h"), {"h": h}
            ).first()
            if found:
                hints.append(navigator.Hint(*found))
    return navigator.plan_messages(text, hints=hints)


def _reference_reply(db, trajectory_id):
    with db.engine.connect() as conn:
        abstraction = conn.execute(
            sa.text("SELECT abstraction FROM trajectory WHERE id = :t"), {"t": trajectory_id}
        ).scalar()
        steps = conn.execute(
            sa.text(
                "SELECT st.text, coalesce(v.name, st.template_phrase, st.text) FROM trajectory_step st LEFT JOIN "
                "template_version v ON v.id = st.template_version_id WHERE st.trajectory_id = :t ORDER BY st.position"
            ),
            {"t": trajectory_id},
        ).all()
    return navigator.render_plan(abstraction, [tuple(s) for s in steps])


def test_fetch_columns_reads_nulls_empty_strings_and_numbers_in_order(db):
    import pyarrow as pa

    from kb.errors import NotFound
    from pipelines.export_columns import fetch_columns

    schema = pa.schema([("id", pa.int64()), ("s", pa.string()), ("x", pa.float64()), ("t", pa.string())])
    query = (
        "SELECT * FROM (VALUES (3, NULL, 1.5, 'é'), (1, '', -2.0, NULL), (2, 'a\\b', 0.0, ''), "
        "(4, 'ÿ漢🙂', 3.0, NULL), (5, NULL, 1e300, 'z')) v(id, s, x, t)"
    )
    with db.engine.connect() as conn:
        table = fetch_columns(conn, query, {}, schema, "id")
        table.validate(full=True)
        assert table.to_pylist() == [
            {"id": 1, "s": "", "x": -2.0, "t": None},
            {"id": 2, "s": "a\\b", "x": 0.0, "t": ""},
            {"id": 3, "s": None, "x": 1.5, "t": "é"},
            {"id": 4, "s": "ÿ漢🙂", "x": 3.0, "t": None},
            {"id": 5, "s": None, "x": 1e300, "t": "z"},
        ]
        assert fetch_columns(conn, query + " WHERE false", {}, schema, "id").num_rows == 0
        with pytest.raises(NotFound, match="NULLs"):
            fetch_columns(conn, "SELECT NULL::int AS id", {}, pa.schema([("id", pa.int64())]), "id")
