"""Import stage: template libraries from files into versioned templates, in one transaction.

Two formats:
- `reasonflux-v1`: the official ReasonFlux-v1 library, chapter -> section -> list of
  templates, with all its drift (see `from_v1`). The mapped fields are normalised;
  every source value the mapping does not reproduce exactly is kept verbatim in
  `extra["reasonflux_v1"]`, so `to_v1(from_v1(record)) == record` for every record.
- `jsonl`: one `template_record` per line (TemplateSpec.to_dict() plus "status"),
  the format `reasonflux export templates` writes; import(export) is lossless.

Writes are set-based: content hashes are computed here, compared with the current
hashes in one locking query, and new templates, versions and current-version
pointers are written with a few statements per chunk. Re-importing the same file
writes nothing; a changed file writes versions for the changed templates only.
A bad record aborts everything before any write, with the file, the record's path
or line, and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb import templates as T
from kb.db import Database
from kb.errors import ConflictError, InputError
from kb.runs import pipeline_run
from kb.storable import parse_json, too_deep
from kb.template_jsonl import read_template_jsonl
from kb.template_writes import CHUNK, NewVersion, lock_current, write_versions

FORMATS = ("reasonflux-v1", "jsonl")
V1_EXTRA = "reasonflux_v1"  # extra[V1_EXTRA] = {"original": {field: value}, "absent": [field, ...]}
V1_FIELDS = (
    "template_name",
    "template_type",
    "knowledge_tag",
    "description",
    "application_scenario",
    "reason_flow",
    "example_application",
)


@dataclass
class ImportRecord:
    """One template read from a file, with where it came from."""

    spec: T.TemplateSpec
    where: str  # "Sequences > Arithmetic > [3]" or "line 12": for messages
    provenance: dict[str, Any]
    status: str | None = None  # JSONL records carry one; None leaves an existing template's status alone


@dataclass
class ImportResult:
    run_id: int | None
    counts: dict[str, int]
    new_version_ids: list[int] = field(default_factory=list)
    current_version_ids: list[int] = field(default_factory=list)


# --------------------------------------------------------------------------- ReasonFlux-v1 layout

TYPE_CANON = {
    "problem solving method": "Problem-Solving Method",
    "solving method": "Problem-Solving Method",
    "solution method": "Problem-Solving Method",
    "property theorem": "Property Theorem",
    "knowledge application": "Knowledge Application",
    "second level conclusion": "Secondary Conclusion",
    "secondary conclusion": "Secondary Conclusion",
}
TYPE_PREFIX_CANON = {"important formula": "Important Formulas and Theorems"}

# example_application dict keys, by role, best first (keys compared lower-case, spaces -> '_')
PROBLEM_KEYS = ("example_problem", "problem", "example_question", "question", "example", "title")
SOLUTION_KEYS = (
    "solution_steps",
    "solution_process",
    "solving_process",
    "solution",
    "application_steps",
    "steps",
    "analysis_process",
    "analysis",
    "explanation",
    "proof",
)
ANSWER_KEYS = ("answer", "final_answer", "result", "conclusion")

# Free-text examples: where the worked solution starts, and the answer line.
# Labels start with a capital: "solution: x=3" inside a worked solution is not a label.
_SOLUTION_LABEL = re.compile(
    r"(?:Solution|Solving|Application|Analysis|Proof)(?:\s+(?:[Ss]teps?|[Pp]rocess|of [Tt]emplate))?"
    r"|Steps? (?:of applying the template|of Template Application|to solve)"
)
_LABEL_END = re.compile(r"\s*[:：]")
_ANSWER_LABEL = re.compile(r"(?:^|(?<=\s)|(?<=\\n))(?:Final\s+)?Answer\s*[:：]", re.IGNORECASE)
_EXAMPLE_LABEL = re.compile(r"^\s*(?:【Example】|Example\b[^:：\n\\]{0,40}?[:：])\s*", re.IGNORECASE)
# The library escapes many line breaks as a literal backslash-n (sometimes two backslashes). A literal
# "\n" before a lowercase letter is left alone: it is LaTeX (\neq, \nu, \nabla, ...), not a break.
_ESCAPED_BREAK = re.compile(r"\\{1,2}n(?![a-z])")
_EDGE = re.compile(r"^(?:\s|\\{1,2}n(?![a-z]))+|(?:\s|\\{1,2}n(?![a-z]))+$")
_MIN_PROBLEM_CHARS = 20


def unescape_breaks(text: str) -> str:
    return _ESCAPED_BREAK.sub("\n", text)


def _trim(text: str) -> str:
    return _EDGE.sub("", text)


def canonical_type(raw: str | None) -> str | None:
    """One spelling per template type ('Problem Solving Method', 'Problem-solving Methods', ... -> one)."""
    if raw is None:
        return None
    norm = re.sub(r"[\s_\-]+", " ", raw.strip().lower())
    norm = re.sub(r"s$", "", norm)
    if norm in TYPE_CANON:
        return TYPE_CANON[norm]
    for prefix, canon in TYPE_PREFIX_CANON.items():
        if norm.startswith(prefix):
            return canon
    return raw.strip() or None


def split_example_text(text: str) -> tuple[str | None, str | None, str | None]:
    """(problem, solution, answer) from a free-text worked example; best effort, never drops text
    from the solution (which runs from the solution label, or the second line, to the end)."""
    start = _solution_start(text)
    if start is None:
        return None, _trim(text) or None, None
    problem = _trim(_EXAMPLE_LABEL.sub("", text[:start], count=1))
    solution = _trim(text[start:])
    answers = list(_ANSWER_LABEL.finditer(text, start))
    answer = _trim(text[answers[0].end() :]) if len(answers) == 1 else None
    return problem or None, solution or None, answer or None


def _solution_start(text: str) -> int | None:
    """Where the worked solution begins: the first solution label with a real problem before it,
    else the first line break after a problem statement."""
    for m in _SOLUTION_LABEL.finditer(text):
        before = text[: m.start()]
        if not _LABEL_END.match(text, m.end()) or (
            before and not re.search(r"(?:\s|\\n|[.:：)】])$", before)
        ):
            continue
        if len(_trim(_EXAMPLE_LABEL.sub("", before, count=1))) >= _MIN_PROBLEM_CHARS:
            return m.start()
    first_break = re.search(r"\n|\\{1,2}n(?![a-z])", text)
    if (
        first_break
        and len(_trim(_EXAMPLE_LABEL.sub("", text[: first_break.start()], count=1))) >= _MIN_PROBLEM_CHARS
    ):
        return first_break.end()
    return None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, ensure_ascii=False)


def _example_fields(example: Any) -> tuple[str | None, str | None, str | None]:
    if example is None:
        return None, None, None
    if isinstance(example, str):
        return split_example_text(example)
    if isinstance(example, list):  # several worked examples: the first one is mapped
        return _example_fields(example[0]) if example else (None, None, None)
    by_role = {re.sub(r"[\s\-]+", "_", str(k).strip().lower()): v for k, v in example.items()}

    def pick(keys: Sequence[str]) -> str | None:
        return next((_as_text(by_role[k]) for k in keys if by_role.get(k) not in (None, "", [])), None)

    problem = pick(PROBLEM_KEYS)
    return (
        _EXAMPLE_LABEL.sub("", problem, count=1) or None if problem else None,
        pick(SOLUTION_KEYS),
        pick(ANSWER_KEYS),
    )


def _str_list(value: Any, *, file: str, record: str, name: str, items: str = "strings") -> list:
    """A list field; a lone string is taken as a one-item list (the original stays in extra)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InputError(
            f"must be a list of {items} (got {type(value).__name__})", file=file, record=record, field=name
        )
    if items == "strings" and not all(isinstance(v, str) for v in value):
        bad = next(i for i, v in enumerate(value) if not isinstance(v, str))
        raise InputError(
            f"item [{bad}] must be a string (got {type(value[bad]).__name__})",
            file=file,
            record=record,
            field=name,
        )
    return value


def _opt_str(raw: dict, name: str, *, file: str, record: str) -> str | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(
            f"must be a string (got {type(value).__name__})", file=file, record=record, field=name
        )
    return value


def from_v1(raw: Any, *, chapter: str, section: str | None, file: str, record: str) -> T.TemplateSpec:
    """Map one ReasonFlux-v1 template to a TemplateSpec; what the mapping changes is kept in extra."""
    if not isinstance(raw, dict):
        raise InputError(f"must be an object (got {type(raw).__name__})", file=file, record=record)
    name = raw.get("template_name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(
            "is required and must be a non-empty string", file=file, record=record, field="template_name"
        )
    template_type = _opt_str(raw, "template_type", file=file, record=record)
    description = _opt_str(raw, "description", file=file, record=record)
    scope = raw.get("application_scenario")
    if isinstance(scope, list):
        scope = "\n".join(_str_list(scope, file=file, record=record, name="application_scenario"))
    elif scope is not None and not isinstance(scope, str):
        raise InputError(
            f"must be a string or a list of strings (got {type(scope).__name__})",
            file=file,
            record=record,
            field="application_scenario",
        )
    example = raw.get("example_application")
    if example is not None and not isinstance(example, (str, dict, list)):
        raise InputError(
            f"must be text or an object (got {type(example).__name__})",
            file=file,
            record=record,
            field="example_application",
        )
    problem, solution, answer = _example_fields(example)
    steps = _str_list(raw.get("reason_flow"), file=file, record=record, name="reason_flow", items="steps")
    spec = T.TemplateSpec(
        name=name.strip(),
        category=chapter,
        section=section,
        template_type=canonical_type(template_type),
        tags=[
            t.strip()
            for t in _str_list(raw.get("knowledge_tag"), file=file, record=record, name="knowledge_tag")
        ],
        description=unescape_breaks(description or ""),
        application_scope=unescape_breaks(scope or ""),
        steps=[unescape_breaks(s) if isinstance(s, str) else s for s in steps],
        example_problem=_opt_unescape(problem),
        example_solution=_opt_unescape(solution),
        example_answer=_opt_unescape(answer),
    )
    return _keep_original(spec, raw)


def _opt_unescape(text: str | None) -> str | None:
    return unescape_breaks(text) if text is not None else None


def _keep_original(spec: T.TemplateSpec, raw: dict) -> T.TemplateSpec:
    """Record in extra every source value that to_v1(spec) would not give back exactly."""
    bare = replace(spec, extra={k: v for k, v in spec.extra.items() if k != V1_EXTRA})
    rebuilt = to_v1(bare)
    original = {k: v for k, v in raw.items() if k not in rebuilt or rebuilt[k] != v}
    absent = [k for k in V1_FIELDS if k not in raw]
    spec.extra = (
        {**bare.extra, V1_EXTRA: {"original": original, "absent": absent}}
        if original or absent
        else bare.extra
    )
    return spec


def to_v1(spec: T.TemplateSpec) -> dict[str, Any]:
    """The ReasonFlux-v1 record a spec came from (exactly, for specs made by from_v1)."""
    if spec.example_problem is None and spec.example_answer is None:
        example: Any = spec.example_solution
    else:
        example = {
            k: v
            for k, v in (
                ("example_problem", spec.example_problem),
                ("solution", spec.example_solution),
                ("answer", spec.example_answer),
            )
            if v is not None
        }
    record: dict[str, Any] = {
        "template_name": spec.name,
        "template_type": spec.template_type,
        "knowledge_tag": list(spec.tags),
        "description": spec.description,
        "application_scenario": spec.application_scope,
        "reason_flow": list(spec.steps),
        "example_application": example,
    }
    kept = spec.extra.get(V1_EXTRA) or {}
    record.update(kept.get("original", {}))
    for name in kept.get("absent", []):
        record.pop(name, None)
    return record


def read_reasonflux_v1(path: str | Path) -> list[ImportRecord]:
    """Every template in a ReasonFlux-v1 library file, validated; duplicate keys get a ' (2)' suffix."""
    file = str(path)
    data = _load_json(path)
    if not isinstance(data, dict):
        raise InputError("must be an object: chapter -> section -> list of templates", file=file)
    records: list[ImportRecord] = []
    seen: set[str] = set()
    for chapter, sections in data.items():
        if not str(chapter).strip():
            raise InputError("chapter name is empty", file=file, record=repr(chapter), field="chapter")
        if not isinstance(sections, dict):
            raise InputError(
                f"must be an object of sections (got {type(sections).__name__})", file=file, record=chapter
            )
        for section, items in sections.items():
            where_section = f"{chapter} > {section}"
            if not isinstance(items, list):
                raise InputError(
                    f"must be a list of templates (got {type(items).__name__})",
                    file=file,
                    record=where_section,
                )
            for index, raw in enumerate(items):
                where = f"{where_section} > [{index}]"
                spec = from_v1(raw, chapter=chapter, section=section or None, file=file, record=where)
                _dedupe(spec, raw, seen)
                T.check_storable(spec, file=file, record=where)
                records.append(
                    ImportRecord(
                        spec,
                        where,
                        {"format": "reasonflux-v1", "chapter": chapter, "section": section, "index": index},
                    )
                )
    return records


def _dedupe(spec: T.TemplateSpec, raw: dict, seen: set[str]) -> None:
    """The library repeats names, even within a section: later ones become 'Name (2)', 'Name (3)'."""
    base, n = spec.name, 1
    while spec.key in seen:
        n += 1
        spec.name = f"{base} ({n})"
    if n > 1:
        _keep_original(spec, raw)
    seen.add(spec.key)


def _load_json(path: str | Path) -> Any:
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=file) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", file=file) from None
    if not text.strip():
        raise InputError("the file is empty", file=file)
    try:
        return parse_json(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"malformed JSON: {e.msg}", file=file, record=f"line {e.lineno} column {e.colno}"
        ) from None
    except RecursionError:
        raise too_deep(file=file) from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise InputError(f"malformed JSON: {e}", file=file) from None


# --------------------------------------------------------------------------- JSONL


def read_jsonl(path: str | Path) -> list[ImportRecord]:
    return [
        ImportRecord(t.spec, f"line {t.line}", {"format": "jsonl", "line": t.line}, t.status)
        for t in read_template_jsonl(path)
    ]


def read_file(path: str | Path, fmt: str) -> list[ImportRecord]:
    if fmt not in FORMATS:
        raise InputError(f"unknown import format {fmt!r} (one of {', '.join(FORMATS)})", field="format")
    records = read_reasonflux_v1(path) if fmt == "reasonflux-v1" else read_jsonl(path)
    if not records:  # an empty library is a mistake (wrong file, truncated download), not "0 imported"
        raise InputError("holds no templates", file=str(path))
    return records


# --------------------------------------------------------------------------- writing

_SET_STATUS = sa.text("""
    UPDATE template t SET status = r.status, updated_at = now()
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(template_id int, status text)
    WHERE t.id = r.template_id AND t.status <> r.status
""")


def apply_records(
    conn: sa.Connection,
    records: Sequence[ImportRecord],
    *,
    source_ref: str | None,
    run_id: int | None,
    source_kind: str = "file",
    change_note: str | None = None,
) -> ImportResult:
    """Write RECORDS as templates/versions inside the caller's transaction: the changed ones through the
    one version writer (kb.template_writes, set-based, optimistic lock), then the status changes."""
    keys = [r.spec.key for r in records]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise InputError(f"template {dup!r} appears more than once", field="key")
    current = lock_current(conn, keys)
    plan = [(r, T.content_hash(r.spec.content()), current.get(r.spec.key)) for r in records]
    writes = [
        NewVersion(
            r.spec.key,
            r.spec.category,
            r.spec.section,
            r.spec.content(),
            h,
            before,
            source_kind=source_kind,
            source_ref=source_ref,
            provenance=r.provenance,
            change_note=change_note or ("imported" if before is None else "updated by import"),
            run_id=run_id,
            status=r.status or "active",
        )
        for r, h, before in plan
        if before is None or before.content_hash != h
    ]
    version_ids = write_versions(conn, writes)
    status_rows = [
        {"template_id": before.template_id, "status": r.status}
        for r, _, before in plan
        if before is not None and r.status is not None and before.status != r.status
    ]
    for chunk in _chunks(status_rows):
        conn.execute(_SET_STATUS, {"rows": json.dumps(chunk)})
    created = sum(1 for w in writes if w.before is None)
    unchanged_ids = [before.version_id for _, h, before in plan if before and before.content_hash == h]
    counts = {
        "templates": len(records),
        "created": created,
        "updated": len(writes) - created,
        "unchanged": len(records) - len(writes),
        "status_changed": len(status_rows),
    }
    new_ids = sorted(version_ids.values())
    return ImportResult(run_id, counts, new_ids, sorted([*new_ids, *unchanged_ids]))


def _chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def import_file(
    db: Database,
    path: str | Path,
    fmt: str,
    *,
    embed: bool = True,
    model: str | None = None,
    note: str | None = None,
    license: str | None = None,
) -> ImportResult:
    """Read, validate and import a template file as one pipeline run (stage "import").

    LICENSE: the licence of the file's templates, recorded with the run (`pipelines.licences`: the default
    licence of exports of the versions it writes); None: not known.

    Nothing is written (not even the run) when the file is bad. The templates are written in one
    transaction; embeddings (unless embed=False) are computed after it commits, for the current
    versions of the file's templates (the embed stage skips vectors that are already up to date).
    """
    from kb.datasets import check_license

    check_license(license)
    records = read_file(path, fmt)
    source_ref = str(Path(path).resolve())
    params = {
        "format": fmt,
        "file": source_ref,
        "embed": embed,
        "model": model,
        "note": note,
        "license": license,
    }
    with pipeline_run(db, "import", params) as (run_id, counts):
        result = _apply_with_retry(db, records, source_ref=source_ref, run_id=run_id, change_note=note)
        result.run_id = run_id
        counts.update(result.counts)
        if embed and result.current_version_ids:
            from pipelines.embed import embed_new_templates

            counts["embedded"] = embed_new_templates(db, result.current_version_ids, run_id, model=model)
        result.counts = dict(counts)
    return result


def _apply_with_retry(
    db: Database, records: Sequence[ImportRecord], attempts: int = 3, **kw: Any
) -> ImportResult:
    """A concurrent writer makes the whole transaction roll back (ConflictError); a fresh attempt then
    sees its work, so the import converges instead of failing."""
    for attempt in range(1, attempts + 1):
        try:
            with db.engine.begin() as conn:
                return apply_records(conn, records, **kw)
        except ConflictError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
