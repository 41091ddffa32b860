"""Problem import: presets, field mapping, stored once, bad input writes nothing; list/show/search."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from kb.errors import InputError
from pipelines.problems import content_hash, import_problems, parse_mapping


def _write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _count(db, table="problem"):
    with db.engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


def _rows(db):
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.text("SELECT * FROM problem ORDER BY id")).mappings()]


MATH = [
    {
        "problem": "What is $1+1$?",
        "solution": "It is $\\boxed{2}$.",
        "answer": "2",
        "subject": "Prealgebra",
        "level": 1,
        "unique_id": "test/prealgebra/1.json",
    },
    {
        "problem": "Solve $x^2=4$ for $x>0$.",
        "solution": "$x=2$",
        "answer": "2",
        "subject": "Algebra",
        "level": "Level 3",
        "unique_id": "test/algebra/7.json",
    },
]


def test_math500_preset_and_idempotent_reimport(db, tmp_path):
    path = _write(tmp_path / "m.jsonl", MATH)
    first = import_problems(db, path, preset="math500", embed=False)
    assert (first["created"], first["existing"]) == (2, 0)
    rows = _rows(db)
    assert [r["difficulty"] for r in rows] == [1, 3]
    assert [r["source_id"] for r in rows] == ["test/prealgebra/1.json", "test/algebra/7.json"]
    assert {r["source"] for r in rows} == {"math500"} and {r["split"] for r in rows} == {"test"}
    assert rows[0]["solution"].startswith("It is") and rows[1]["subject"] == "Algebra"
    assert all(r["run_id"] == first["run_id"] for r in rows)
    again = import_problems(db, path, preset="math500", embed=False)
    assert (again["created"], again["existing"]) == (0, 2)
    assert _count(db) == 2


def test_aime_preset_with_optional_solution(db, tmp_path):
    path = _write(
        tmp_path / "aime24.jsonl",
        [
            {"id": "2024-I-1", "problem": "Find $n$.", "answer": "204"},
            {"id": "2024-I-2", "problem": "Find $m$.", "answer": "25", "solution": "Because."},
        ],
    )
    out = import_problems(db, path, preset="aime", source="aime24", split="train", embed=False)
    assert out["created"] == 2
    rows = _rows(db)
    assert [(r["source_id"], r["answer"], r["solution"]) for r in rows] == [
        ("2024-I-1", "204", None),
        ("2024-I-2", "25", "Because."),
    ]
    assert {r["source"] for r in rows} == {"aime24"} and {r["split"] for r in rows} == {"train"}


def test_mapping_keeps_unmapped_keys_and_dedups_normalised_text(cli, db, tmp_path):
    path = _write(
        tmp_path / "custom.jsonl",
        [
            {"question": "How many  primes\nare below 10?", "final": "4", "topic": "nt", "uid": 9},
            {"question": "How many primes are below 10? ", "final": "4"},
            {"question": "Is 1 prime?", "final": "no", "split": "test"},
        ],
    )
    out = json.loads(
        cli(
            "problems", "import", str(path), "--map", "problem=question,answer=final", "--no-embed", "--json"
        ).output
    )
    assert (out["created"], out["existing"], out["duplicates"]) == (2, 0, 1)
    rows = _rows(db)
    assert rows[0]["answer"] == "4" and rows[0]["extra"] == {"topic": "nt", "uid": 9}
    assert rows[0]["content_hash"] == content_hash("How many primes are below 10?")
    assert [r["split"] for r in rows] == ["train", "test"]
    assert rows[0]["source"] == "custom"


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"answer": "3"}, "question"),
        ({"question": ["not", "text"], "answer": "3"}, "question"),
        ({"question": "ok", "answer": "3", "lvl": "hard"}, "lvl"),
    ],
)
def test_bad_record_names_file_line_field_and_writes_nothing(db, tmp_path, bad, field):
    path = _write(tmp_path / "bad.jsonl", [{"question": "fine", "answer": "1"}, bad])
    with pytest.raises(InputError) as err:
        import_problems(db, path, mapping=parse_mapping(["problem=question", "difficulty=lvl"]), embed=False)
    assert (err.value.file, err.value.record, err.value.field) == (str(path), "line 2", field)
    assert _count(db) == 0


def test_cli_errors_are_clean(cli, db, tmp_path):
    path = _write(tmp_path / "broken.jsonl", [{"problem": "a"}, "{not json"])
    result = cli("problems", "import", str(path), "--no-embed", expect=2)
    assert "broken.jsonl" in result.output and "line 2" in result.output and "Traceback" not in result.output
    result = cli("problems", "import", str(path), "--map", "nonsense=x", "--no-embed", expect=2)
    assert "nonsense" in result.output
    assert _count(db) == 0


def test_list_show_and_search(cli, db, tmp_path):
    path = _write(
        tmp_path / "p.jsonl",
        [
            {
                "problem": "Compute the sum of an arithmetic series 1+2+...+100.",
                "answer": "5050",
                "subject": "Algebra",
            },
            {"problem": "Find the area of a circle of radius 3.", "answer": "9\\pi", "subject": "Geometry"},
            {
                "problem": "How many ways to arrange 5 books on a shelf?",
                "answer": "120",
                "subject": "Counting",
            },
        ],
    )
    out = import_problems(db, path, embed=True)
    assert out["embedded"] == 3 and _count(db, "problem_embedding") == 3
    listed = json.loads(cli("problems", "list", "--subject", "Geometry", "--json").output)
    assert [r["id"] for r in listed] == [2]
    shown = json.loads(cli("problems", "show", "2", "--json").output)
    assert shown["answer"] == "9\\pi" and shown["embedding_models"] == ["all-MiniLM-L6-v2"]
    hits = json.loads(cli("problems", "search", "circle area radius", "--json").output)
    assert hits[0]["id"] == 2 and hits[0]["score"] > hits[-1]["score"]
    text_hits = json.loads(cli("problems", "search", "books shelf", "--text", "--json").output)
    assert [h["id"] for h in text_hits] == [3]
    cli("problems", "show", "99", expect=1)


@pytest.mark.shared_data
def test_import_math500_shared(db, shared_data):
    path = shared_data / "math500_test.jsonl"
    out = import_problems(db, path, preset="math500", embed=False)
    assert out["created"] == 500 and out["existing"] == 0
    with db.engine.connect() as conn:
        levels = conn.execute(
            sa.text(
                "SELECT min(difficulty), max(difficulty), count(DISTINCT subject), "
                "count(*) FILTER (WHERE split = 'test') FROM problem"
            )
        ).one()
    assert tuple(levels) == (1, 5, 7, 500)
    assert import_problems(db, path, preset="math500", embed=False)["created"] == 0
