"""Retrievers learned from the KB: pairs export, training, registry, re-embedding, search, honest folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sqlalchemy as sa

from kb import templates as T
from kb.config import DEFAULT_EMBED_MODEL
from kb.db import session_scope
from kb.embeddings import get_embedder
from pipelines.embed import embed_templates

# Three chapters, two templates each, every one with a worked example.
LIBRARY = [
    T.TemplateSpec(
        name="Stars and bars",
        category="Counting",
        section="Distributions",
        tags=["distribution"],
        description="Count the ways to distribute identical objects into distinct boxes.",
        application_scope="Identical candies, balls or coins shared among people or boxes.",
        steps=[
            "Let x_i be the number of objects in box i",
            "Count solutions of x_1+...+x_k = n: C(n+k-1, k-1)",
        ],
        example_problem="In how many ways can 10 identical candies be given to 3 children?",
    ),
    T.TemplateSpec(
        name="Inclusion-exclusion",
        category="Counting",
        section="Sets",
        tags=["inclusion-exclusion"],
        description="Count a union of overlapping sets by adding sizes and subtracting overlaps.",
        application_scope="How many numbers are divisible by 2 or 3; people in at least one club.",
        steps=["Add the sizes of the sets", "Subtract pairwise intersections, add triple ones"],
        example_problem="How many integers from 1 to 100 are divisible by 2 or by 5?",
    ),
    T.TemplateSpec(
        name="Geometric series sum",
        category="Sequences",
        section="Geometric",
        tags=["geometric series"],
        description="Sum of the first n terms of a geometric sequence with common ratio q.",
        application_scope="Adding terms that are multiplied by the same ratio each time, like 1 + 2 + 4 + 8.",
        steps=["Identify a_1 and the ratio q", "S_n = a_1 (1 - q^n) / (1 - q)"],
        example_problem="Find the sum 1 + 3 + 9 + ... + 3^6.",
    ),
    T.TemplateSpec(
        name="Arithmetic sequence terms",
        category="Sequences",
        section="Arithmetic",
        tags=["arithmetic sequence"],
        description="The n-th term and the sum of an arithmetic sequence with common difference d.",
        application_scope="Terms that grow by the same amount each time.",
        steps=["a_n = a_1 + (n-1) d", "S_n = n (a_1 + a_n) / 2"],
        example_problem="The first term is 4 and each term is 3 more than the last. What is the 20th term?",
    ),
    T.TemplateSpec(
        name="Modulus of a complex number",
        category="Complex Numbers",
        section="Basics",
        tags=["modulus"],
        description="The modulus |a+bi| is the square root of a^2 + b^2.",
        application_scope="Distance of a complex number from the origin.",
        steps=["Write z = a + bi", "|z| = sqrt(a^2 + b^2)"],
        example_problem="What is |3 - 4i|?",
    ),
    T.TemplateSpec(
        name="Powers of i",
        category="Complex Numbers",
        section="Basics",
        tags=["imaginary unit"],
        description="Powers of the imaginary unit repeat with period 4.",
        application_scope="Simplifying i^n for large n.",
        steps=["Reduce n modulo 4", "i^0=1, i^1=i, i^2=-1, i^3=-i"],
        example_problem="Simplify i^2023.",
    ),
]


@pytest.fixture
def small_kb(db):
    with session_scope(db) as s:
        for spec in LIBRARY:
            T.create_template(s, spec)
    embed_templates(db)
    return db


def _vectors(db, model: str) -> dict[int, np.ndarray]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT version_id, embedding::real[] FROM template_embedding WHERE model = :m"),
            {"m": model},
        ).all()
    return {r[0]: np.asarray(r[1], dtype=np.float32) for r in rows}


TRAIN = ("--max-steps", "2", "--batch-size", "3", "--max-seq-length", "48", "--seed", "7")


@pytest.mark.slow
def test_train_registers_reembeds_and_searches(small_kb, cli, tmp_path):
    db = small_kb
    before = _vectors(db, DEFAULT_EMBED_MODEL)
    out = json.loads(
        cli(
            "retriever", "train", "--name", "rt-small", "--out", str(tmp_path / "rt"), *TRAIN, "--json"
        ).stdout
    )
    assert (
        out["name"] == "rt-small"
        and out["base_model"] == DEFAULT_EMBED_MODEL
        and out["embedded"] == len(LIBRARY)
    )
    assert out["metrics"]["steps"] == 2 and out["metrics"]["pairs_by_source"]["examples"] == len(LIBRARY)
    # The pairs are a verified dataset version, and the registry row names it.
    cli("datasets", "verify", out["pairs_path"])
    shown = json.loads(cli("retriever", "show", "rt-small", "--json").stdout)
    assert (
        shown["dataset_version_id"] == out["dataset_version"] and shown["base_model"] == DEFAULT_EMBED_MODEL
    )
    assert (
        shown["config"]["seed"] == 7 and shown["config"]["max_steps"] == 2 and shown["metrics"]["steps"] == 2
    )
    assert [r["name"] for r in json.loads(cli("retriever", "list", "--json").stdout)] == ["rt-small"]

    # The registered name is a model name: its own vectors, a trained (different) model, the default untouched.
    tuned = _vectors(db, "rt-small")
    assert set(tuned) == set(before)
    assert all(np.array_equal(before[k], v) for k, v in _vectors(db, DEFAULT_EMBED_MODEL).items())
    assert max(float(np.abs(tuned[k] - before[k]).max()) for k in tuned) > 1e-4
    assert get_embedder("rt-small").name == "rt-small"

    # Re-embedding the library with it is one command; searching with it, another.
    again = json.loads(
        cli("embed", "--model", "rt-small", "--what", "templates", "--recompute", "--json").stdout
    )
    assert again["model"] == "rt-small" and again["templates"] == len(LIBRARY)
    hits = json.loads(
        cli(
            "templates",
            "search",
            "--model",
            "rt-small",
            "--mode",
            "vector",
            "-k",
            "2",
            "Simplify i^4041.",
            "--json",
        ).stdout
    )
    assert hits[0]["name"] == "Powers of i"

    # Deterministic with a seed: the same pairs and settings give the same weights.
    cli("retriever", "train", "--name", "rt-again", "--out", str(tmp_path / "rt2"), *TRAIN)
    again_vecs = _vectors(db, "rt-again")
    assert all(np.allclose(again_vecs[k], tuned[k], atol=1e-5) for k in tuned)


def test_train_refuses_the_default_name_and_a_taken_one(small_kb, cli, tmp_path):
    res = cli(
        "retriever", "train", "--name", DEFAULT_EMBED_MODEL, "--out", str(tmp_path / "x"), *TRAIN, expect=None
    )
    assert res.exit_code != 0 and "never replaced" in res.output
    res = cli("retriever", "train", "--name", "../escape", *TRAIN, expect=None)
    assert res.exit_code != 0 and "not a path" in res.output
    res = cli(
        "retriever",
        "train",
        "--name",
        "x",
        "--sources",
        "examples=0,mining=0,solve_steps=0,trajectories=0",
        *TRAIN,
        expect=None,
    )
    assert res.exit_code != 0 and "switched off" in res.output
    with small_kb.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM retriever_model")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM dataset_version")).scalar() == 0
    assert not (tmp_path / "x").exists()


def test_unknown_model_name_is_a_clear_error(small_kb, cli):
    res = cli("templates", "search", "--model", "no-such-retriever", "powers of i", expect=None)
    assert res.exit_code != 0 and "not a registered retriever" in res.output


def test_leave_one_chapter_out_never_trains_on_the_evaluated_chapter(small_kb):
    from pipelines.retriever.evaluate import fold_pairs

    with small_kb.engine.connect() as conn:
        category = dict(conn.execute(sa.text("SELECT id, category FROM template")).all())
    for chapter in ("Counting", "Sequences", "Complex Numbers"):
        pairs, templates = fold_pairs(small_kb, chapter, {"hard_negatives": 2})
        assert pairs and {p["category"] for p in pairs} == {"Counting", "Sequences", "Complex Numbers"} - {
            chapter
        }
        assert all(category[p["template_id"]] != chapter for p in pairs)
        assert all(category[n] != chapter for p in pairs for n in p["negative_template_ids"])
        assert all(
            len(p["negative_template_ids"]) == 2 and p["template_id"] not in p["negative_template_ids"]
            for p in pairs
        )
        assert all(t["category"] != chapter for t in templates)


@pytest.mark.slow
def test_leave_one_chapter_out_reports_each_fold(small_kb):
    from pipelines.retriever.evaluate import leave_one_chapter_out
    from pipelines.retriever.fit_config import HyperParams

    result = leave_one_chapter_out(
        small_kb, hp=HyperParams(max_steps=1, batch_size=2, max_seq_length=32), chapters=["Complex Numbers"]
    )
    assert [f["chapter"] for f in result["folds"]] == ["Complex Numbers"]
    assert result["folds"][0]["train_pairs"] == 4
    keys = {(r["model"], r["form"], r["mode"]) for r in result["rows"]}
    assert keys == {
        (m, f, mode)
        for m in ("zero-shot", "fine-tuned")
        for f in ("problem", "navigator")
        for mode in ("hybrid", "vector")
    }
    assert all(r["queries"] == 2 and 0 <= r["recall@1"] <= r["recall@5"] <= 1 for r in result["rows"])
    # Zero-shot finds these two easy chapters' templates in the top five of six.
    assert all(r["recall@5"] == 1.0 for r in result["mean"] if r["model"] == "zero-shot")


def test_pairs_export_is_a_versioned_dataset(small_kb, cli, tmp_path):
    import pyarrow.parquet as pq

    out = json.loads(
        cli(
            "retriever",
            "pairs",
            "--out",
            str(tmp_path / "p"),
            "--sources",
            "examples=2.5",
            "--exclude-category",
            "Counting",
            "--json",
        ).stdout
    )
    assert out["id"].startswith("retriever-pairs-") and out["pairs"] == 4 and out["pairs_examples"] == 4
    cli("datasets", "verify", str(tmp_path / "p"))
    rows = pq.read_table(tmp_path / "p" / "data" / "pairs.parquet").to_pylist()
    assert {r["weight"] for r in rows} == {2.5} and all(r["category"] != "Counting" for r in rows)
    assert all(len(r["negative_template_ids"]) == 1 for r in rows)
    again = json.loads(
        cli(
            "retriever",
            "pairs",
            "--out",
            str(tmp_path / "q"),
            "--sources",
            "examples=2.5",
            "--exclude-category",
            "Counting",
            "--json",
        ).stdout
    )
    assert again["id"] == out["id"]  # same selection, same KB: the same version
    bad = cli("retriever", "pairs", "--out", str(tmp_path / "r"), "--sources", "examples=x", expect=None)
    assert bad.exit_code != 0 and "--sources" in bad.output and not (tmp_path / "r").exists()
