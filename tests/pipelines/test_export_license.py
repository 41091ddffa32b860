"""An export's default licence: the one every source of its data was imported with (`--license` at import,
recorded with the import run); `unknown` when no source has one; refused (exit 2, naming the sources) when
they differ or only some have one, until `export --license` says which."""

from __future__ import annotations

import json

import sqlalchemy as sa

from kb.starter import starter_library_path
from tests.pipelines.test_export import world  # noqa: F401  (fixture)


def _problems_file(path, texts):
    path.write_text("".join(json.dumps({"problem": t, "answer": "1"}) + "\n" for t in texts))
    return str(path)


def _export(cli, kind, out, *args, expect=0):
    result = cli("export", kind, "--out", str(out), "--json", *args, expect=expect)
    return json.loads(result.output) if expect == 0 else result


def _versions(db) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM dataset_version")).scalar()


def test_problems_default_to_the_licence_they_were_imported_with(cli, db, tmp_path):
    cli(
        "problems",
        "import",
        _problems_file(tmp_path / "a.jsonl", ["One plus zero?", "Two minus one?"]),
        "--source",
        "a",
        "--license",
        "apache-2.0",
        "--no-embed",
    )
    manifest = _export(cli, "problems", tmp_path / "out")
    assert manifest["license"] == manifest["params"]["license"] == "apache-2.0"
    assert manifest["license_sources"] == [{"license": "apache-2.0", "problems": 2, "templates": 0}]
    assert not manifest["license_given"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert (
        "license: apache-2.0" in card
        and "the licence recorded for every source: apache-2.0: 2 problems" in card
    )

    # A second file under another licence: the sources disagree, so the exporter must choose.
    cli(
        "problems",
        "import",
        _problems_file(tmp_path / "b.jsonl", ["Three over three?"]),
        "--source",
        "b",
        "--license",
        "mit",
        "--no-embed",
    )
    refused = _export(cli, "problems", tmp_path / "mixed", expect=2)
    assert "apache-2.0: 2 problems; mit: 1 problem" in refused.output and "--license" in refused.output
    assert "Traceback" not in refused.output and not (tmp_path / "mixed").exists() and _versions(db) == 1
    assert _export(cli, "problems", tmp_path / "b", "--problems", "source=b")["license"] == "mit"
    chosen = _export(cli, "problems", tmp_path / "mixed", "--license", "other")
    assert chosen["license"] == "other" and chosen["license_given"]
    assert "given by the exporter" in (tmp_path / "mixed" / "README.md").read_text()


def test_only_some_sources_with_a_licence_is_refused_none_is_unknown(cli, db, tmp_path):
    cli("problems", "import", _problems_file(tmp_path / "a.jsonl", ["One plus zero?"]), "--no-embed")
    unknown = _export(cli, "problems", tmp_path / "u")
    assert unknown["license"] == "unknown" and unknown["license_sources"][0]["license"] is None
    assert "no licence is recorded for any source" in (tmp_path / "u" / "README.md").read_text()
    cli(
        "problems",
        "import",
        _problems_file(tmp_path / "b.jsonl", ["Two minus one?"]),
        "--license",
        "mit",
        "--no-embed",
    )
    refused = _export(cli, "problems", tmp_path / "x", expect=2)
    assert "mit: 1 problem; none recorded: 1 problem" in refused.output


def test_imported_templates_carry_their_licence_into_template_exports(cli, db, tmp_path):
    cli("import", "jsonl", str(starter_library_path()), "--license", "apache-2.0", "--no-embed")
    manifest = _export(cli, "templates", tmp_path / "t")
    assert manifest["license"] == "apache-2.0" and manifest["license_sources"][0]["templates"] > 0
    assert manifest["license_sources"][0]["problems"] == 0


def test_the_template_hints_of_dpo_prompts_are_sources_too(cli, db, world, tmp_path):  # noqa: F811
    with db.engine.begin() as conn:  # the world's problems as if imported under a licence; its templates not
        run = conn.execute(
            sa.text(
                "INSERT INTO pipeline_run (stage, params, code_version, status, counts) "
                "VALUES ('import-problems', '{\"license\": \"cc-by-4.0\"}', 't', 'succeeded', "
                "'{}') RETURNING id"
            )
        ).scalar()
        conn.execute(sa.text("UPDATE problem SET run_id = :r"), {"r": run})
    refused = _export(cli, "dpo", tmp_path / "d", expect=2)
    assert "cc-by-4.0: 1 problem; none recorded: 1 template" in refused.output
    assert _export(cli, "problems", tmp_path / "p")["license"] == "cc-by-4.0"
    assert _export(cli, "dpo", tmp_path / "d", "--license", "cc-by-4.0")["license"] == "cc-by-4.0"


def test_a_licence_that_is_no_identifier_is_refused_before_anything_is_imported(cli, db, tmp_path):
    result = cli(
        "problems",
        "import",
        _problems_file(tmp_path / "a.jsonl", ["One plus zero?"]),
        "--license",
        "Use it nicely!",
        "--no-embed",
        expect=2,
    )
    assert "--license" in result.output
    result = cli(
        "import", "jsonl", str(starter_library_path()), "--license", "MIT License", "--no-embed", expect=2
    )
    assert "--license" in result.output
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM problem")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM template")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM pipeline_run")).scalar() == 0
