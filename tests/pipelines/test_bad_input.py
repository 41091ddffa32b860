"""Bad input: a clear one-line error naming file, record and field, exit 2, nothing written, no traceback;
or, where the input is valid (U+2028 in a string, 65,536+ records), it is imported correctly."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from kb.storable import MAX_DEPTH


def _counts(db) -> tuple:
    with db.engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT (SELECT count(*) FROM problem), (SELECT count(*) FROM template), "
                "(SELECT count(*) FROM template_version), (SELECT count(*) FROM pipeline_run), "
                "(SELECT count(*) FROM dataset_version)"
            )
        ).one()


def _lines(path, records) -> str:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return str(path)


def _refused(cli, db, *args, must: tuple[str, ...]):
    before = _counts(db)
    result = cli(*args, expect=2)
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1, result.output
    for text in must:
        assert text in result.output, (text, result.output)
    assert _counts(db) == before, args
    return result


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


TEMPLATE = {
    "name": "Vieta",
    "category": "Algebra",
    "description": "Relate roots to coefficients.",
    "steps": ["Write the polynomial", "Read off sums"],
}
V1 = {
    "Algebra": {
        "Polynomials": [
            {"template_name": "Vieta", "description": "Relate roots.", "reason_flow": ["Write", "Read"]}
        ]
    }
}


@pytest.mark.parametrize(
    "record, field, message",
    [
        ({"problem": "a\u0000b"}, "problem", "NUL"),
        ({"problem": "fine", "meta": {"notes": ["ok", "b\u0000"]}}, "meta.notes[1]", "NUL"),
        ({"problem": "fine", "bad\u0000key": 1}, "'bad\\x00key'", "NUL"),
        ({"problem": "fine", "level": 99999999999}, "level", "out of range"),
        ('{"problem": "fine", "meta": ' + _nested(MAX_DEPTH + 5) + "}", "meta", "nested more than"),
        ('{"problem": "fine", "meta": ' + _nested(100_000) + "}", None, "nested too deeply"),
        ('{"problem": "fine", "n": ' + "9" * 5000 + "}", None, "invalid JSON"),
        ({"problem": "x" * 10_000_000}, "problem", "full-text index"),
        ('{"problem": "half a pair \\ud800 here"}', "problem", "lone surrogate (\\ud800 at character 13)"),
        ('{"problem": "fine", "meta": {"k": ["\\udfff"]}}', "meta.k[0]", "lone surrogate"),
    ],
)
def test_problem_import_refuses_what_postgres_cannot_store(cli, db, tmp_path, record, field, message):
    path = _lines(tmp_path / "p.jsonl", [{"problem": "A good first line."}, record])
    must = (path, "record line 2", message, *([f"field {field}"] if field else []))
    _refused(cli, db, "problems", "import", path, "--map", "difficulty=level", "--no-embed", must=must)


def _distinct_cyrillic_words(n: int) -> str:
    """n different 4-letter words, 2 bytes a letter: under 1M characters, over 1 MB of distinct lexemes."""
    letters = [chr(0x430 + i) for i in range(32)]
    return " ".join("".join(letters[(i >> shift) & 31] for shift in (15, 10, 5, 0)) for i in range(n))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("description", "nul \u0000 here", "NUL"),
        (
            "description",
            _distinct_cyrillic_words(190_000),
            "bytes as UTF-8; at most 1,000,000 fit the full-text index",
        ),
        ("steps", ["ok", "b\u0000"], "NUL"),
        ("extra", {"deep": json.loads(_nested(MAX_DEPTH + 5))}, "nested more than"),
        ("description", "word " * 2_000_000, "full-text index"),
    ],
)
def test_template_jsonl_import_and_add_refuse_unstorable_fields(cli, db, tmp_path, field, value, message):
    path = _lines(tmp_path / "t.jsonl", [TEMPLATE, {**TEMPLATE, "name": "Other", field: value}])
    _refused(cli, db, "import", "jsonl", path, "--no-embed", must=(path, "line 2", f"field {field}", message))
    single = tmp_path / "t.json"
    single.write_text(json.dumps({**TEMPLATE, field: value}), encoding="utf-8")
    _refused(
        cli, db, "templates", "add", "--file", str(single), must=(str(single), f"field {field}", message)
    )


@pytest.mark.parametrize("field, escaped", [("name", '"Vieta \\ud83d"'), ("steps", '["ok", "\\udc00"]')])
def test_a_lone_surrogate_in_a_template_is_refused_naming_the_field(cli, db, tmp_path, field, escaped):
    """JSON can spell half a surrogate pair ("\\ud800"); it is no Unicode text and cannot be stored."""
    line = json.dumps({**TEMPLATE, field: "PLACEHOLDER"}).replace('"PLACEHOLDER"', escaped)
    path = _lines(tmp_path / "t.jsonl", [TEMPLATE | {"name": "First"}, line])
    _refused(
        cli,
        db,
        "import",
        "jsonl",
        path,
        "--no-embed",
        must=(path, "line 2", f"field {field}", "lone surrogate"),
    )
    single = tmp_path / "t.json"
    single.write_text(line, encoding="utf-8")
    _refused(
        cli, db, "templates", "add", "--file", str(single), must=(str(single), f"field {field}", "surrogate")
    )


def test_template_edit_refuses_unstorable_fields(cli, db, tmp_path):
    single = tmp_path / "t.json"
    single.write_text(json.dumps(TEMPLATE), encoding="utf-8")
    cli("templates", "add", "--file", str(single))
    edit = tmp_path / "e.json"
    edit.write_text(json.dumps({"description": "x\u0000"}), encoding="utf-8")
    _refused(
        cli,
        db,
        "templates",
        "edit",
        "Algebra/Vieta",
        "--file",
        str(edit),
        must=(str(edit), "field description", "NUL"),
    )
    edit.write_text(json.dumps({"description": "new", "version": 99999999999}), encoding="utf-8")
    _refused(
        cli,
        db,
        "templates",
        "edit",
        "Algebra/Vieta",
        "--file",
        str(edit),
        must=(str(edit), "field version", "out of range"),
    )
    edit.write_text(_nested(100_000), encoding="utf-8")
    _refused(
        cli, db, "templates", "edit", "Algebra/Vieta", "--file", str(edit), must=(str(edit), "too deeply")
    )


def test_v1_import_refuses_deep_huge_and_empty_files(cli, db, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"Algebra": ' + _nested(100_000) + "}", encoding="utf-8")
    _refused(cli, db, "import", "reasonflux-v1", str(deep), "--no-embed", must=(str(deep), "too deeply"))
    huge = json.loads(json.dumps(V1))
    huge["Algebra"]["Polynomials"][0]["description"] = "word " * 2_000_000
    path = tmp_path / "huge.json"
    path.write_text(json.dumps(huge), encoding="utf-8")
    _refused(
        cli,
        db,
        "import",
        "reasonflux-v1",
        str(path),
        "--no-embed",
        must=(str(path), "Algebra > Polynomials > [0]", "field description", "full-text index"),
    )
    for text, message in (
        ("", "the file is empty"),
        ("  \n", "the file is empty"),
        ("{}", "holds no templates"),
        ('{"Algebra": {"Polynomials": []}}', "holds no templates"),
    ):
        path.write_text(text, encoding="utf-8")
        _refused(cli, db, "import", "reasonflux-v1", str(path), "--no-embed", must=(str(path), message))


def test_empty_files_are_errors(cli, db, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    _refused(cli, db, "problems", "import", str(empty), "--no-embed", must=(str(empty), "empty"))
    _refused(cli, db, "import", "jsonl", str(empty), "--no-embed", must=(str(empty), "holds no templates"))
    blank = tmp_path / "blank.yaml"
    blank.write_text("\n\n", encoding="utf-8")
    _refused(cli, db, "templates", "add", "--file", str(blank), must=(str(blank), "the file is empty"))


def test_u2028_inside_a_jsonl_string_is_data_not_a_line_break(cli, db, tmp_path):
    text = "First part\u2028second part\u2029third\x85fourth\x1cfifth"
    path = _lines(tmp_path / "p.jsonl", [{"problem": text, "answer": "1"}, {"problem": "Another one."}])
    assert json.loads(cli("problems", "import", path, "--no-embed", "--json").output)["created"] == 2
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT text FROM problem ORDER BY id LIMIT 1")).scalar() == text
    tpath = _lines(tmp_path / "t.jsonl", [{**TEMPLATE, "description": text}])
    assert json.loads(cli("import", "jsonl", tpath, "--no-embed", "--json").output)["created"] == 1
    with db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT description FROM template_version")).scalar() == text


@pytest.mark.slow
def test_more_than_65535_problems_in_one_file_import(cli, db, tmp_path):
    n = 65_600
    path = tmp_path / "many.jsonl"
    path.write_text(
        "".join(f'{{"problem": "Problem number {i}: compute {i} squared."}}\n' for i in range(n)),
        encoding="utf-8",
    )
    out = json.loads(cli("problems", "import", str(path), "--no-embed", "--json").output)
    assert out["created"] == n and out["records"] == n
    again = json.loads(cli("problems", "import", str(path), "--no-embed", "--json").output)
    assert again["created"] == 0 and again["existing"] == n
    assert _counts(db)[0] == n


def test_export_out_under_a_file_is_refused_before_any_work(cli, db, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out in (a_file / "sub", a_file / "sub" / "deeper"):
        result = _refused(
            cli, db, "export", "templates", "--out", str(out), must=("--out", str(out), "a file")
        )
        assert "not a folder" in result.output
    # The file itself: click's own usage error, before the command runs.
    assert "is a file" in cli("export", "templates", "--out", str(a_file), expect=2).output


def test_unreachable_database_url_is_one_line(db):
    from kb.cli import cli as root

    for url in ("postgresql://someone:s3cret@127.0.0.1:1/nothing", "postgresql://u:s3cret@host.invalid/x"):
        result = CliRunner().invoke(root, ["--database-url", url, "templates", "list"])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "cannot connect to" in lines[0] and "Traceback" not in result.output
        assert "s3cret" not in result.output and "***" in lines[0]


def test_ids_out_of_integer_range_are_not_found_not_database_errors(cli, db):
    assert "no problem 99999999999" in cli("problems", "show", "99999999999", expect=1).output
    assert "no template '99999999999'" in cli("templates", "show", "99999999999", expect=1).output
    assert "no template" in cli("templates", "history", "9" * 30, expect=1).output


ESCAPES = "\u001b]0;owned\u0007Vieta\u001b[2J\u009b31m\r"


def test_control_characters_in_stored_text_are_escaped_on_the_terminal_and_kept_in_json(cli, db, tmp_path):
    """A template named with escape sequences must not retitle or clear the terminal that lists it."""
    single = tmp_path / "t.json"
    single.write_text(
        json.dumps({**TEMPLATE, "name": ESCAPES, "steps": ["ok", "bell \u0007"]}), encoding="utf-8"
    )
    key = str(
        json.loads(cli("templates", "add", "--file", str(single), "--no-embed", "--json").output)[0]["id"]
    )
    printed = [
        cli("templates", "list").output,
        cli("templates", "show", key).output,
        cli("templates", "history", key).output,
        cli("templates", "show", "Algebra/nothing\u001b[2J", expect=1).output,
    ]
    for out in printed:
        assert not any(c in out for c in "\u001b\u0007\u009b\r"), repr(out)
    assert "\\x1b]0;owned\\x07Vieta\\x1b[2J\\x9b31m" in printed[1] and "\\x1b[2J" in printed[3]
    stored = json.loads(cli("templates", "show", key, "--json").output)  # data stays data
    assert stored["name"] == ESCAPES and stored["steps"][1] == "bell \u0007"


@pytest.mark.parametrize(
    "line, where",
    [
        (
            '{"name": "Vieta", "name": "Other", "category": "Algebra", "description": "d", "steps": ["s"]}',
            "'name'",
        ),
        (
            (
                '{"name": "Vieta", "category": "Algebra", "description": "d", "steps": ["s"], '
                '"extra": {"src": {"a": 1, "a": 2}}}'
            ),
            "'a' in extra.src",
        ),
    ],
)
def test_a_key_named_twice_in_a_template_record_is_refused_naming_record_and_key(
    cli, db, tmp_path, line, where
):
    path = _lines(tmp_path / "t.jsonl", [TEMPLATE | {"name": "First"}, line])
    _refused(cli, db, "import", "jsonl", path, "--no-embed", must=(path, "line 2", f"duplicate key {where}"))
    single = tmp_path / "t.json"
    single.write_text(line, encoding="utf-8")
    _refused(cli, db, "templates", "add", "--file", str(single), must=(str(single), f"duplicate key {where}"))


def test_a_key_named_twice_in_a_problem_record_is_refused_naming_record_and_key(cli, db, tmp_path):
    path = _lines(
        tmp_path / "p.jsonl",
        [{"problem": "A good first line."}, '{"problem": "one", "answer": "1", "answer": "2"}'],
    )
    _refused(
        cli, db, "problems", "import", path, "--no-embed", must=(path, "line 2", "duplicate key 'answer'")
    )
    as_list = tmp_path / "p.json"
    as_list.write_text('[{"problem": "a"}, {"problem": "b", "meta": {"k": 1, "k": 2}}]', encoding="utf-8")
    _refused(
        cli,
        db,
        "problems",
        "import",
        str(as_list),
        "--format",
        "json",
        "--no-embed",
        must=(str(as_list), "duplicate key 'k' in [1].meta"),
    )
