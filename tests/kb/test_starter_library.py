"""The packaged starter library: it parses, covers the MATH subjects, its examples are consistent, it loads."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

import kb
from kb import templates as T
from kb.db import session_scope
from kb.errors import InputError
from kb.starter import load_starter_entries, load_starter_specs, starter_library_path

MATH_SUBJECTS = (
    "Algebra",
    "Intermediate Algebra",
    "Prealgebra",
    "Number Theory",
    "Counting & Probability",
    "Geometry",
    "Precalculus",
)
# Plain integers, decimals and (possibly negative) fractions, optionally times pi: these must evaluate to numbers.
NUMERIC_ANSWER = re.compile(r"^-?(\d+(\.\d+)?|\\frac\{\d*(\\pi)?\}\{\d+\})$")
MATH_SEGMENT = re.compile(r"\$([^$]+)\$")


@pytest.fixture(scope="module")
def specs() -> list[T.TemplateSpec]:
    return load_starter_specs()


def test_library_ships_inside_the_package_and_parses(specs):
    path = starter_library_path()
    assert path.is_file()
    assert path.resolve().is_relative_to(Path(kb.__file__).resolve().parent)
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(specs) == len(lines) >= 30
    assert all(json.loads(line)["status"] == "active" for line in lines)


def test_every_math_subject_is_covered(specs):
    per_subject = Counter(s.category for s in specs)
    assert set(per_subject) == set(MATH_SUBJECTS)
    assert min(per_subject.values()) >= 4, per_subject


def test_keys_are_unique(specs):
    keys = [s.key for s in specs]
    assert len(set(keys)) == len(keys)


def test_every_template_is_complete(specs):
    for s in specs:
        where = s.key
        assert s.section and s.template_type, where
        assert s.description.strip() and s.application_scope.strip(), where
        assert 4 <= len(s.steps) <= 7 and all(isinstance(x, str) and x.strip() for x in s.steps), where
        assert 3 <= len(s.tags) <= 6 and all(t == t.lower() and t.strip() for t in s.tags), where
        assert s.example_problem and s.example_solution and s.example_answer, where
        assert s.extra == {}, where


def test_numeric_answers_evaluate_to_numbers(specs):
    from math_verify import parse

    numeric = [s for s in specs if NUMERIC_ANSWER.match(s.example_answer)]
    assert len(numeric) >= len(specs) // 2
    for s in numeric:
        parsed = parse(f"${s.example_answer}$")
        assert parsed and parsed[0].is_number and parsed[0].is_finite, (s.key, s.example_answer, parsed)


@pytest.mark.slow
def test_every_worked_solution_reaches_its_answer(specs):
    """The stated answer appears, up to equivalence, as a formula (or the last side of one) in the solution."""
    from math_verify import parse, verify

    for s in specs:
        gold = parse(f"${s.example_answer}$")
        assert gold, (s.key, s.example_answer)
        candidates = [
            c for seg in MATH_SEGMENT.findall(s.example_solution) for c in (seg, seg.split("=")[-1])
        ]
        assert any(verify(gold, parse(f"${c}$")) for c in candidates), (s.key, s.example_answer)


def _counts(db) -> tuple[int, int]:
    with db.engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT count(*) FROM template")).scalar_one(),
            conn.execute(sa.text("SELECT count(*) FROM template_version")).scalar_one(),
        )


def test_loads_into_the_database_and_reloading_writes_nothing(db, specs):
    ref = str(starter_library_path())
    with session_scope(db) as s:
        outcomes = [T.upsert_template(s, spec, source_kind="file", source_ref=ref)[1] for spec in specs]
    assert outcomes == ["created"] * len(specs)
    assert _counts(db) == (len(specs), len(specs))
    with session_scope(db) as s:
        again = [T.upsert_template(s, spec, source_kind="file", source_ref=ref)[1] for spec in specs]
    assert again == ["unchanged"] * len(specs)
    assert _counts(db) == (len(specs), len(specs))
    with session_scope(db) as s:
        stored = T.spec_of(T.resolve(s, specs[-1].key), T.get_version(s, specs[-1].key))
    assert stored == specs[-1]


def test_imports_through_the_jsonl_importer_as_one_run(db, specs):
    """The demo's path: `reasonflux import jsonl` on the packaged file; a second import changes nothing."""
    from pipelines.import_templates import import_file

    first = import_file(db, starter_library_path(), "jsonl", embed=False)
    assert first.counts["created"] == len(specs)
    second = import_file(db, starter_library_path(), "jsonl", embed=False)
    assert second.counts["unchanged"] == len(specs)
    assert _counts(db) == (len(specs), len(specs))
    with db.engine.connect() as conn:
        runs = conn.execute(
            sa.text("SELECT count(DISTINCT run_id) FROM template_version WHERE run_id IS NOT NULL")
        ).scalar_one()
        statuses = conn.execute(sa.text("SELECT DISTINCT status FROM template")).scalars().all()
    assert runs == 1 and statuses == ["active"]


def _write(tmp_path: Path, records: list[dict | str]) -> Path:
    path = tmp_path / "lib.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return path


GOOD = {
    "name": "Pick a Base",
    "category": "Algebra",
    "section": "Exponents",
    "tags": ["powers"],
    "description": "d",
    "application_scope": "a",
    "steps": ["s1"],
    "status": "active",
}


def test_small_library_loads_with_status(tmp_path):
    path = _write(tmp_path, [GOOD, "", {**GOOD, "name": "Other", "status": "deprecated"}])
    entries = load_starter_entries(path)
    assert [(s.key, st) for s, st in entries] == [
        ("Algebra/Exponents/Pick a Base", "active"),
        ("Algebra/Exponents/Other", "deprecated"),
    ]


@pytest.mark.parametrize(
    "bad, line, field, message",
    [
        ("{not json", 2, None, "malformed JSON"),
        ({**GOOD, "name": "X", "status": "retired"}, 2, "status", "must be one of"),
        ({**GOOD, "name": "X", "colour": "red"}, 2, "colour", "unknown field"),
        ({**GOOD, "name": "X", "steps": "one step"}, 2, "steps", "must be a list"),
        ({**GOOD}, 2, "key", "already appears on line 1"),
    ],
)
def test_bad_records_name_file_line_and_field(tmp_path, bad, line, field, message):
    path = _write(tmp_path, [GOOD, bad])
    with pytest.raises(InputError, match=message) as err:
        load_starter_specs(path)
    assert err.value.file == str(path)
    assert err.value.record == f"line {line}"
    assert err.value.field == field
