"""Template import: ReasonFlux-v1 drift, lossless mapping, idempotence, one transaction, JSONL round trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from kb import templates as T
from kb.db import session_scope
from kb.template_jsonl import template_record
from pipelines.import_templates import read_reasonflux_v1
from pipelines.reasonflux_v1 import from_v1, split_example_text, to_v1, unescape_breaks

SAMPLE = "reasonflux_v1_templates_sample.json"


def small_library() -> dict:
    """A library with the drift of the real one: every layout the importer must handle."""
    return {
        "Sequences": {
            "Arithmetic": [
                {
                    "template_name": "Sum of terms",
                    "template_type": "Problem Solving Method",
                    "knowledge_tag": ["Arithmetic sequence", "Sum"],
                    "description": "Pair first and last terms.",
                    "application_scenario": "Finding S_n.",
                    "reason_flow": ["Step 1: a1 and d", "Step 2: S_n"],
                    "example_application": "Example Problem: Given a1=1, d=2, find S_10.\\n\\nSolution Steps:\\n"
                    "1. S_10 = 10(1+19)/2 = 100\\n\\nAnswer: 100",
                },
                {
                    "template_name": "Sum of terms",
                    "template_type": "Problem-solving Method",
                    "knowledge_tag": ["Sum"],
                    "description": "Same name again, same section.",
                    "application_scenario": ["When S_n is given", "When a_n is asked"],
                    "reason_flow": ["Step 1: S_n - S_{n-1}"],
                    "example_application": {
                        "Problem": "S_n = n^2, find a_n.",
                        "Solution": ["a_n = 2n - 1"],
                        "Answer": "2n-1",
                    },
                },
            ],
            "Geometric": [
                {
                    "template_name": "Sum of terms",
                    "template_type": "Solving Method",
                    "knowledge_tag": ["Sum"],
                    "description": "Same name, other section: a different template.",
                    "application_scenario": "Geometric sums.",
                    "reason_flow": ["Use a1(1-q^n)/(1-q)"],
                    "example_application": {"example_question": "a1=1, q=2: S_3?", "analysis": ["1+2+4"]},
                    "source_page": 12,
                },
                {
                    "template_name": "Common ratio",
                    "knowledge_tag": ["ratio"],
                    "description": "Divide terms.",
                    "application_scenario": "q unknown.",
                    "reason_flow": ["q = a2/a1"],
                    "example_application": {
                        "problem": "a1=2, a2=6: q?",
                        "solution_process": ["6/2 = 3"],
                        "final_answer": "3",
                        "analysis": "ratio of consecutive terms",
                    },
                },
            ],
        },
        "Complex Numbers": {
            "Modulus": [
                {
                    "template_name": "Modulus as distance",
                    "template_type": "Important Formulas and Laws",
                    "knowledge_tag": ["modulus"],
                    "description": "|z - a| is a distance.",
                    "application_scenario": "Extremes of |z - b|.",
                    "reason_flow": ["Draw the circle"],
                    "example_application": None,
                },
            ],
        },
    }


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def rows(db, sql: str) -> list:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql)).all()]


def counts(db) -> tuple:
    return rows(
        db,
        "SELECT (SELECT count(*) FROM template), (SELECT count(*) FROM template_version), "
        "(SELECT count(*) FROM pipeline_run)",
    )[0]


def import_v1(cli, path, *extra, expect=0):
    result = cli("import", "reasonflux-v1", str(path), "--no-embed", "--json", *extra, expect=expect)
    return json.loads(result.output) if expect == 0 else result


# ---------------------------------------------------------------- mapping (no database)


def test_v1_mapping_normalises_drift_and_loses_nothing(tmp_path):
    library = small_library()
    records = read_reasonflux_v1(write(tmp_path / "lib.json", library))
    by_where = {r.where: r.spec for r in records}
    assert list(by_where) == [
        "Sequences > Arithmetic > [0]",
        "Sequences > Arithmetic > [1]",
        "Sequences > Geometric > [0]",
        "Sequences > Geometric > [1]",
        "Complex Numbers > Modulus > [0]",
    ]
    first, dup, other, ratio, modulus = by_where.values()
    assert (first.category, first.section, first.key) == (
        "Sequences",
        "Arithmetic",
        "Sequences/Arithmetic/Sum of terms",
    )
    assert dup.name == "Sum of terms (2)" and dup.key == "Sequences/Arithmetic/Sum of terms (2)"
    assert other.key == "Sequences/Geometric/Sum of terms"
    assert {s.template_type for s in (first, dup, other)} == {"Problem-Solving Method"}
    assert modulus.template_type == "Important Formulas and Theorems" and ratio.template_type is None
    assert first.tags == ["Arithmetic sequence", "Sum"] and first.steps == ["Step 1: a1 and d", "Step 2: S_n"]
    # free text: split into problem / solution / answer, escaped line breaks made real
    assert first.example_problem == "Given a1=1, d=2, find S_10."
    assert first.example_solution == "Solution Steps:\n1. S_10 = 10(1+19)/2 = 100\n\nAnswer: 100"
    assert first.example_answer == "100"
    # dict layouts
    assert (dup.example_problem, dup.example_solution, dup.example_answer) == (
        "S_n = n^2, find a_n.",
        "a_n = 2n - 1",
        "2n-1",
    )
    assert (other.example_problem, other.example_solution, other.example_answer) == (
        "a1=1, q=2: S_3?",
        "1+2+4",
        None,
    )
    assert (ratio.example_problem, ratio.example_solution, ratio.example_answer) == (
        "a1=2, a2=6: q?",
        "6/2 = 3",
        "3",
    )
    assert dup.application_scope == "When S_n is given\nWhen a_n is asked"
    # lossless: every source record comes back exactly, unmapped fields included
    originals = [t for chapter in library.values() for section in chapter.values() for t in section]
    assert [to_v1(r.spec) for r in records] == originals
    assert other.extra["reasonflux_v1"]["original"]["source_page"] == 12
    assert (
        ratio.extra["reasonflux_v1"]["original"]["example_application"]["analysis"]
        == "ratio of consecutive terms"
    )
    assert ratio.extra["reasonflux_v1"]["absent"] == ["template_type"]


def test_free_text_examples_split_without_breaking_latex():
    problem, solution, answer = split_example_text(
        "Example 3: Prove $a \\neq b$ for all n\\nSolution process:\\n1. Assume a = b\\n2. Contradiction"
    )
    assert problem == "Prove $a \\neq b$ for all n"
    assert (
        unescape_breaks(solution) == "Solution process:\n1. Assume a = b\n2. Contradiction" and answer is None
    )
    assert unescape_breaks(r"$a \neq b$\n\\n1") == "$a \\neq b$\n\n1"  # \neq is LaTeX, not a break
    assert split_example_text("just a remark") == (None, "just a remark", None)


def test_sample_library_is_mapped_losslessly(shared_data):
    library = json.loads((shared_data / SAMPLE).read_text(encoding="utf-8"))
    records = read_reasonflux_v1(shared_data / SAMPLE)
    originals = [t for chapter in library.values() for section in chapter.values() for t in section]
    assert len(records) == len(originals) == 62
    assert len({r.spec.key for r in records}) == 62  # repeated names got distinct keys
    assert [to_v1(r.spec) for r in records] == originals
    assert {r.spec.category for r in records} == set(library)
    assert {r.spec.template_type for r in records} == {
        "Problem-Solving Method",
        "Property Theorem",
        "Important Formulas and Theorems",
        "Knowledge Application",
        "Secondary Conclusion",
    }
    with_problem = sum(1 for r in records if r.spec.example_problem)
    assert with_problem >= 55, f"only {with_problem} of 62 examples yielded a problem statement"


# ---------------------------------------------------------------- import into the database


def test_import_small_file_is_idempotent_and_versions_only_changes(cli, db, tmp_path):
    library = small_library()
    path = write(tmp_path / "lib.json", library)
    first = import_v1(cli, path)
    assert (first["created"], first["updated"], first["unchanged"]) == (5, 0, 0)
    assert counts(db) == (5, 5, 1)
    run = rows(db, "SELECT id, stage, status, counts->>'created' FROM pipeline_run")
    assert run == [(first["run_id"], "import", "succeeded", "5")]
    version = rows(
        db,
        "SELECT source_kind, source_ref, provenance, run_id, version_no, parent_version_id "
        "FROM template_version v JOIN template t ON t.current_version_id = v.id "
        "WHERE t.key = 'Sequences/Geometric/Common ratio'",
    )[0]
    assert version == (
        "file",
        str(path.resolve()),
        {"format": "reasonflux-v1", "chapter": "Sequences", "section": "Geometric", "index": 1},
        first["run_id"],
        1,
        None,
    )

    again = import_v1(cli, path)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 5)
    assert counts(db) == (5, 5, 2)

    library["Sequences"]["Geometric"][1]["description"] = "Divide consecutive terms."
    library["Complex Numbers"]["Modulus"].append(
        {"template_name": "Conjugate", "knowledge_tag": [], "reason_flow": ["z + conj(z) = 2 Re z"]}
    )
    changed = import_v1(cli, write(tmp_path / "lib.json", library))
    assert (changed["created"], changed["updated"], changed["unchanged"]) == (1, 1, 4)
    history = rows(
        db,
        "SELECT version_no, run_id, parent_version_id IS NOT NULL, is_current FROM template_history "
        "WHERE key = 'Sequences/Geometric/Common ratio' ORDER BY version_no",
    )
    assert history == [(1, first["run_id"], False, False), (2, changed["run_id"], True, True)]
    assert rows(db, f"SELECT count(*) FROM template_version WHERE run_id = {changed['run_id']}") == [(2,)]
    assert rows(
        db, "SELECT description FROM current_template WHERE key = 'Sequences/Geometric/Common ratio'"
    ) == [("Divide consecutive terms.",)]


def test_import_keeps_user_status_and_cli_summary_table(cli, db, tmp_path):
    path = write(tmp_path / "lib.json", small_library())
    import_v1(cli, path)
    cli("templates", "deprecate", "Complex Numbers/Modulus/Modulus as distance")
    out = cli("import", "reasonflux-v1", str(path), "--no-embed").output
    assert "unchanged" in out and "run_id" in out
    assert rows(
        db, "SELECT status FROM template WHERE key = 'Complex Numbers/Modulus/Modulus as distance'"
    ) == [("deprecated",)]


def test_sample_import_idempotent_and_modified_copy(cli, db, shared_data, tmp_path):
    first = import_v1(cli, shared_data / SAMPLE)
    assert (first["created"], first["updated"], first["unchanged"]) == (62, 0, 0)
    assert rows(db, "SELECT count(DISTINCT category) FROM template") == [(3,)]
    again = import_v1(cli, shared_data / SAMPLE)
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, 62)
    assert counts(db)[:2] == (62, 62)

    library = json.loads((shared_data / SAMPLE).read_text(encoding="utf-8"))
    modified = copy.deepcopy(library)
    modified["Sequences"]["Mathematical induction"][1]["reason_flow"].append("Step 5: Check n=2 as well")
    modified["Counting Principles"]["Binomial theorem"][0]["application_scenario"] = ["Largest coefficient"]
    changed = import_v1(cli, write(tmp_path / "modified.json", modified))
    assert (changed["created"], changed["updated"], changed["unchanged"]) == (0, 2, 60)
    assert counts(db)[:2] == (62, 64)
    updated = rows(
        db,
        "SELECT key FROM template_version v JOIN template t ON t.id = v.template_id "
        "WHERE v.version_no = 2 ORDER BY key",
    )
    assert updated == [
        ("Counting Principles/Binomial theorem/Properties of Binomial Coefficients",),
        ("Sequences/Mathematical induction/Mathematical Induction Problem Solving Template (2)",),
    ]


# ---------------------------------------------------------------- bad input: located error, nothing written


def _bad_v1(tmp_path, mutate) -> Path:
    library = small_library()
    mutate(library)
    return write(tmp_path / "bad.json", library)


@pytest.mark.parametrize(
    "mutate, record, field",
    [
        (
            lambda lib: lib["Sequences"]["Geometric"][1].pop("template_name"),
            "Sequences > Geometric > [1]",
            "template_name",
        ),
        (
            lambda lib: lib["Sequences"]["Arithmetic"][1].update(knowledge_tag=5),
            "Sequences > Arithmetic > [1]",
            "knowledge_tag",
        ),
        (
            lambda lib: lib["Sequences"]["Arithmetic"][0].update(knowledge_tag=["ok", 3]),
            "Sequences > Arithmetic > [0]",
            "knowledge_tag",
        ),
        (
            lambda lib: lib["Complex Numbers"]["Modulus"][0].update(description=["not", "text"]),
            "Complex Numbers > Modulus > [0]",
            "description",
        ),
        (
            lambda lib: lib["Complex Numbers"]["Modulus"][0].update(application_scenario={"a": 1}),
            "Complex Numbers > Modulus > [0]",
            "application_scenario",
        ),
        (
            lambda lib: lib["Complex Numbers"]["Modulus"][0].update(example_application=42),
            "Complex Numbers > Modulus > [0]",
            "example_application",
        ),
        (
            lambda lib: lib["Complex Numbers"]["Modulus"][0].update(description="nul \x00 inside"),
            "Complex Numbers > Modulus > [0]",
            "description",
        ),
        (lambda lib: lib["Sequences"].update(Geometric={"not": "a list"}), "Sequences > Geometric", None),
        (lambda lib: lib["Sequences"]["Geometric"].append("just text"), "Sequences > Geometric > [2]", None),
    ],
)
def test_bad_v1_record_names_file_record_field_and_writes_nothing(cli, db, tmp_path, mutate, record, field):
    import_v1(cli, write(tmp_path / "good.json", {"Other": {"S": [{"template_name": "kept"}]}}))
    before = counts(db)
    path = _bad_v1(tmp_path, mutate)
    result = import_v1(cli, path, expect=2)
    assert f"file {path}" in result.output and f"record {record}" in result.output
    if field:
        assert f"field {field}" in result.output
    assert counts(db) == before


def test_malformed_json_names_file_and_position(cli, db, tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"Sequences": {"A": [\n  {"template_name": "x",}\n]}}')
    result = import_v1(cli, path, expect=2)
    assert f"file {path}" in result.output and "line 2" in result.output and "malformed JSON" in result.output
    assert counts(db) == (0, 0, 0)


def _jsonl(path: Path, records: list) -> Path:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records),
        encoding="utf-8",
    )
    return path


GOOD = {
    "name": "Telescoping",
    "category": "Sequences",
    "section": "Sums",
    "tags": ["sums"],
    "steps": ["Write as a difference", "Cancel"],
    "status": "active",
}


@pytest.mark.parametrize(
    "bad, line, field, message",
    [
        ('{"name": "x", "category": ', 3, None, "malformed JSON"),
        ({"category": "Sequences", "tags": []}, 3, "name", "required"),
        ({**GOOD, "name": "Other", "tags": "sums"}, 3, "tags", "must be a list"),
        ({**GOOD, "name": "Other", "steps": {"1": "a"}}, 3, "steps", "must be a list"),
        ({**GOOD, "name": "Other", "status": "archived"}, 3, "status", "must be one of"),
        ({**GOOD, "name": "Other", "colour": "red"}, 3, "colour", "unknown field"),
        ({**GOOD, "name": "Other", "key": "Sequences/Sums/Wrong"}, 3, "key", "does not match"),
        (GOOD, 3, "key", "already appears on line 1"),
        ("[1, 2]", 3, None, "must be a JSON object"),
    ],
)
def test_bad_jsonl_line_names_file_line_field_and_writes_nothing(
    cli, db, tmp_path, bad, line, field, message
):
    import_v1(cli, write(tmp_path / "good.json", {"Other": {"S": [{"template_name": "kept"}]}}))
    before = counts(db)
    path = _jsonl(tmp_path / "bad.jsonl", [GOOD, {**GOOD, "name": "Second"}, bad])
    result = cli("import", "jsonl", str(path), "--no-embed", expect=2)
    assert f"file {path}" in result.output and f"record line {line}" in result.output, result.output
    assert message in result.output
    if field:
        assert f"field {field}" in result.output
    assert counts(db) == before


# ---------------------------------------------------------------- JSONL round trip


def _export(db, path: Path) -> Path:
    """What `reasonflux export templates --format jsonl` writes: template_record per template."""
    with session_scope(db) as s:
        lines = [template_record(t, v) for t, v in T.list_templates(s)]
    return _jsonl(path, lines)


def _state(db) -> list:
    return rows(db, "SELECT key, status, content_hash, version_no FROM current_template ORDER BY key")


def test_jsonl_round_trip_is_lossless(cli, db, tmp_path):
    import_v1(cli, write(tmp_path / "lib.json", small_library()))
    cli("templates", "edit", "Sequences/Arithmetic/Sum of terms", "--description", "Edited by hand.")
    cli("templates", "deprecate", "Sequences/Geometric/Common ratio")
    exported = _export(db, tmp_path / "export.jsonl")
    before = _state(db)
    assert json.loads(exported.read_text().splitlines()[0]).keys() >= {
        "key",
        "name",
        "category",
        "extra",
        "status",
    }

    same = json.loads(cli("import", "jsonl", str(exported), "--no-embed", "--json").output)
    assert (same["created"], same["updated"], same["unchanged"], same["status_changed"]) == (0, 0, 5, 0)

    with db.engine.begin() as conn:  # a fresh knowledge base
        conn.execute(sa.text("TRUNCATE template, template_version, pipeline_run RESTART IDENTITY CASCADE"))
    fresh = json.loads(cli("import", "jsonl", str(exported), "--no-embed", "--json").output)
    assert fresh["created"] == 5
    assert [(k, s, h) for k, s, h, _ in _state(db)] == [(k, s, h) for k, s, h, _ in before]
    reexported = _export(db, tmp_path / "again.jsonl")
    assert reexported.read_text() == exported.read_text()

    # status travels in the record; a status change alone writes no version
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    for record in lines:
        record["status"] = "active"
    status = json.loads(
        cli("import", "jsonl", str(_jsonl(tmp_path / "s.jsonl", lines)), "--no-embed", "--json").output
    )
    assert (status["updated"], status["status_changed"]) == (0, 1)
    assert rows(db, "SELECT count(*) FROM template WHERE status = 'deprecated'") == [(0,)]
    assert counts(db)[1] == 5


def test_v1_into_jsonl_round_trip_keeps_the_original_records(cli, db, shared_data, tmp_path):
    import_v1(cli, shared_data / SAMPLE)
    exported = _export(db, tmp_path / "sample.jsonl")
    specs = [
        T.TemplateSpec.from_dict({k: v for k, v in json.loads(line).items() if k != "status"})
        for line in exported.read_text().splitlines()
    ]
    library = json.loads((shared_data / SAMPLE).read_text(encoding="utf-8"))
    originals = sorted(json.dumps(t, sort_keys=True) for c in library.values() for s in c.values() for t in s)
    assert sorted(json.dumps(to_v1(s), sort_keys=True) for s in specs) == originals


def test_from_v1_rejects_non_object():
    from kb.errors import InputError

    with pytest.raises(InputError, match="record A > B > \\[0\\]: must be an object"):
        from_v1(["x"], chapter="A", section="B", file="f.json", record="A > B > [0]")


def test_concurrent_imports_of_one_file_converge(db, tmp_path):
    """Two imports racing on the same new templates: one creates them, the other finds them unchanged."""
    import threading

    from pipelines.import_templates import import_file

    path = write(tmp_path / "lib.json", small_library())
    results, errors, start = [], [], threading.Barrier(2)

    def run():
        start.wait()
        try:
            results.append(import_file(db, path, "reasonflux-v1", embed=False).counts)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted((c["created"], c["unchanged"]) for c in results) == [(0, 5), (5, 0)]
    assert counts(db)[:2] == (5, 5)


def test_a_write_failing_in_the_server_rolls_back_the_whole_import(cli, db, tmp_path, monkeypatch):
    """One transaction: when the database refuses one record, the records before it are not kept either."""
    import pipelines.import_templates as importer

    monkeypatch.setattr(importer.T, "check_storable", lambda spec, **kw: None)  # let a NUL reach PostgreSQL
    library = small_library()
    library["Complex Numbers"]["Modulus"][0]["description"] = "nul \x00 inside"
    result = cli(
        "import", "reasonflux-v1", str(write(tmp_path / "lib.json", library)), "--no-embed", expect=None
    )
    assert result.exit_code != 0
    assert counts(db)[:2] == (0, 0)
    assert rows(db, "SELECT stage, status FROM pipeline_run") == [("import", "failed")]
