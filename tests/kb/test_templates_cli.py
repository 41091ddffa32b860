"""`reasonflux templates`: versioning through the CLI, no-op edits, conflicts, filters, diff, status."""

from __future__ import annotations

import json

import sqlalchemy as sa
import yaml

KEY = "Algebra/Polynomials/Vieta's formulas"


def _count(db, table: str) -> int:
    with db.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


def _add_vieta(cli):
    return cli(
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
        "--tag",
        "polynomials",
        "--description",
        "Relate roots to coefficients.",
        "--step",
        "Write the monic polynomial",
        "--step",
        "Read off the elementary symmetric sums",
        "--type",
        "Problem-Solving Method",
        "--json",
    )


def test_add_edit_noop_history_and_diff(cli, db):
    added = json.loads(_add_vieta(cli).output)
    assert added == [
        {
            "id": 1,
            "key": KEY,
            "version": 1,
            "version_id": added[0]["version_id"],
            "content_hash": added[0]["content_hash"],
            "embedded": [],
        }
    ]

    edited = json.loads(
        cli(
            "templates",
            "edit",
            KEY,
            "--description",
            "Sums and products of roots.",
            "--note",
            "clarify",
            "--json",
        ).output
    )
    assert edited["changed"] is True and edited["version"] == 2

    same = cli("templates", "edit", "1", "--description", "Sums and products of roots.")
    assert "no changes" in same.output and "version 2" in same.output
    assert _count(db, "template_version") == 2

    history = json.loads(cli("templates", "history", KEY, "--json").output)
    assert [(h["version"], h["current"], h["change_note"]) for h in history] == [
        (1, False, "created"),
        (2, True, "clarify"),
    ]
    assert history[1]["parent_version_id"] == history[0]["version_id"]

    diff = json.loads(cli("templates", "diff", KEY, "1", "2", "--json").output)
    assert diff["changes"] == [
        {"field": "description", "old": "Relate roots to coefficients.", "new": "Sums and products of roots."}
    ]
    table = cli("templates", "diff", KEY, "1", "2").output
    assert "description" in table and "Sums and products of roots." in table

    old = json.loads(cli("templates", "show", KEY, "--version", "1", "--json").output)
    assert old["version"] == 1 and old["description"] == "Relate roots to coefficients."
    assert old["current_version"] == 2
    shown = cli("templates", "show", "1").output
    assert "Read off the elementary symmetric sums" in shown  # long text is not cut for people


def test_expect_version_conflict_exits_3_and_writes_nothing(cli, db):
    _add_vieta(cli)
    cli("templates", "edit", KEY, "--description", "first editor", "--expect-version", "1")
    result = cli(
        "templates", "edit", KEY, "--description", "second editor", "--expect-version", "1", expect=3
    )
    assert "someone else edited it first" in result.output and "version 2" in result.output
    assert _count(db, "template_version") == 2
    current = json.loads(cli("templates", "show", KEY, "--json").output)
    assert current["description"] == "first editor"


def test_edit_from_show_json_round_trip_uses_its_version(cli, db, tmp_path):
    _add_vieta(cli)
    record = json.loads(cli("templates", "show", KEY, "--json").output)
    record["steps"] = [*record["steps"], "Check with a small case"]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(record))
    cli("templates", "edit", KEY, "--description", "meanwhile")  # someone else: now at version 2
    stale = cli("templates", "edit", KEY, "--file", str(path), expect=3)
    assert "not 1" in stale.output
    assert _count(db, "template_version") == 2
    record["version"] = 2
    path.write_text(json.dumps(record))
    out = json.loads(cli("templates", "edit", KEY, "--file", str(path), "--json").output)
    assert out["version"] == 3
    latest = json.loads(cli("templates", "show", KEY, "--json").output)
    assert latest["steps"][-1] == "Check with a small case" and latest["description"] == record["description"]


def test_add_from_yaml_list_and_flags_override(cli, db, tmp_path):
    path = tmp_path / "new.yaml"
    path.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Telescoping sums",
                    "category": "Sequences",
                    "section": "Sums",
                    "tags": ["sums"],
                    "steps": ["Write the term as a difference", "Cancel"],
                    "example_problem": "Sum 1/(k(k+1)).",
                },
                {
                    "name": "Stars and bars",
                    "category": "Counting",
                    "tags": ["combinations"],
                    "description": "Count multisets.",
                },
            ]
        )
    )
    out = json.loads(cli("templates", "add", "--file", str(path), "--note", "seed", "--json").output)
    assert [r["key"] for r in out] == ["Sequences/Sums/Telescoping sums", "Counting/Stars and bars"]
    shown = json.loads(cli("templates", "show", "Counting/Stars and bars", "--json").output)
    assert shown["tags"] == ["combinations"] and shown["change_note"] == "seed"
    assert shown["source_kind"] == "user" and shown["source_ref"] == str(path)
    dup = cli("templates", "add", "--file", str(path), expect=3)
    assert "already exists" in dup.output
    assert _count(db, "template") == 2


def test_add_and_edit_bad_input_names_file_record_field(cli, db, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "ok", "category": "A"}, {"name": "x", "category": "A", "tags": "roots"}]')
    result = cli("templates", "add", "--file", str(bad), expect=2)
    assert str(bad) in result.output and "record [1]" in result.output and "field tags" in result.output
    assert _count(db, "template") == 0  # the good first record was not written either

    broken = tmp_path / "broken.json"
    broken.write_text('{"name": "x",')
    result = cli("templates", "add", "--file", str(broken), expect=2)
    assert "malformed JSON" in result.output and str(broken) in result.output

    missing = cli("templates", "add", "--category", "A", expect=2)
    assert "field name" in missing.output

    _add_vieta(cli)
    moved = tmp_path / "move.json"
    moved.write_text(json.dumps({"category": "Geometry", "description": "x"}))
    result = cli("templates", "edit", KEY, "--file", str(moved), expect=2)
    assert "field category" in result.output and "cannot change" in result.output
    assert _count(db, "template_version") == 1
    wrong_type = tmp_path / "wrong.yaml"
    wrong_type.write_text("steps: just one step\n")
    result = cli("templates", "edit", KEY, "--file", str(wrong_type), expect=2)
    assert str(wrong_type) in result.output and "field steps" in result.output
    assert _count(db, "template_version") == 1
    assert "no template" in cli("templates", "show", "Nope/Nothing", expect=1).output


def test_list_filters_and_status(cli, db):
    _add_vieta(cli)
    cli(
        "templates",
        "add",
        "--category",
        "Sequences",
        "--section",
        "Arithmetic",
        "--name",
        "Sum of terms",
        "--tag",
        "Series",
        "--tag",
        "sums",
        "--description",
        "Pair the first and last terms (Gauss).",
    )
    cli(
        "templates",
        "add",
        "--category",
        "Sequences",
        "--section",
        "Geometric",
        "--name",
        "Common ratio",
        "--tag",
        "series",
        "--description",
        "Divide consecutive terms.",
    )

    def keys(*args):
        return [r["key"] for r in json.loads(cli("templates", "list", *args, "--json").output)]

    assert len(keys()) == 3
    assert keys("--category", "sequences") == [
        "Sequences/Arithmetic/Sum of terms",
        "Sequences/Geometric/Common ratio",
    ]
    assert keys("--tag", "SERIES", "--tag", "sums") == ["Sequences/Arithmetic/Sum of terms"]
    assert keys("--text", "gauss") == ["Sequences/Arithmetic/Sum of terms"]  # ILIKE on the description
    assert keys("--text", "dividing terms") == ["Sequences/Geometric/Common ratio"]  # full text, stemmed
    assert keys("--text", "100%") == []

    out = json.loads(cli("templates", "deprecate", "Sequences/Geometric/Common ratio", "--json").output)
    assert out == {
        "id": 3,
        "key": "Sequences/Geometric/Common ratio",
        "status": "deprecated",
        "changed": True,
    }
    assert keys("--status", "active") == [KEY, "Sequences/Arithmetic/Sum of terms"]
    assert keys("--status", "deprecated") == ["Sequences/Geometric/Common ratio"]
    assert _count(db, "template_version") == 3  # status is not content: no new version
    cli("templates", "restore", "3")
    assert keys("--status", "deprecated") == []
    table = cli("templates", "list").output
    assert "Sum of terms" in table and "Arithmetic" in table and "status" in table
    csv_out = cli("templates", "list", "--csv", "--tag", "roots").output.splitlines()
    assert csv_out[0].startswith("id,key,category") and len(csv_out) == 2


EDITOR_SCRIPT = """
import pathlib, sys
path = pathlib.Path(sys.argv[-1])
count = pathlib.Path(sys.argv[1])
n = int(count.read_text()) if count.exists() else 0
count.write_text(str(n + 1))
text = path.read_text()
mode = sys.argv[2]
if mode == "describe":
    path.write_text(text.replace("description: Relate roots to coefficients.", "description: Edited in an editor."))
elif mode == "bad-then-fix" and n == 0:  # an unknown field first: the editor re-opens with the error
    path.write_text(text + "colour: blue\\n")
elif mode == "bad-then-fix":
    assert text.startswith("# ERROR:"), text
    path.write_text(text.replace("colour: blue\\n", "").replace("Relate roots", "Relating roots"))
"""


def _editor(tmp_path, monkeypatch, mode: str):
    import sys

    script = tmp_path / "editor.py"
    script.write_text(EDITOR_SCRIPT)
    count = tmp_path / "opened"
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", f"{sys.executable} {script} {count} {mode}")
    return count


def test_edit_without_fields_opens_the_editor_on_yaml(cli, db, tmp_path, monkeypatch):
    _add_vieta(cli)
    opened = _editor(tmp_path, monkeypatch, "describe")
    out = json.loads(cli("templates", "edit", KEY, "--no-embed", "--json").stdout)
    assert out["changed"] is True and out["version"] == 2 and opened.read_text() == "1"
    shown = json.loads(cli("templates", "show", KEY, "--json").stdout)
    assert shown["description"] == "Edited in an editor." and shown["steps"] == [
        "Write the monic polynomial",
        "Read off the elementary symmetric sums",
    ]


def test_the_editor_reopens_on_an_error_and_unchanged_writes_nothing(cli, db, tmp_path, monkeypatch):
    _add_vieta(cli)
    opened = _editor(tmp_path, monkeypatch, "bad-then-fix")
    out = json.loads(cli("templates", "edit", KEY, "--no-embed", "--json").stdout)
    assert opened.read_text() == "2" and out["version"] == 2
    assert json.loads(cli("templates", "show", KEY, "--json").stdout)["description"].startswith(
        "Relating roots"
    )

    _editor(tmp_path, monkeypatch, "leave")  # saves nothing new
    result = cli("templates", "edit", KEY)
    assert "no changes" in result.stderr and _count(db, "template_version") == 2
