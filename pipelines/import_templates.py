"""Import stage: template libraries from files into versioned templates, in one transaction.

Two formats:
- `reasonflux-v1`: the official ReasonFlux-v1 library, chapter -> section -> list of
  templates, mapped by pipelines.reasonflux_v1 (`from_v1`; `to_v1(from_v1(record)) == record`).
- `jsonl`: one `template_record` per line (TemplateSpec.to_dict() plus "status"),
  the format `reasonflux export templates` writes, read by kb.template_jsonl (the
  one reader, also the starter library's); import(export) is lossless.

Writes are set-based: content hashes are computed here, compared with the current
hashes in one locking query (kb.template_writes.lock_current), and the changed
templates are written by the one version writer (kb.template_writes.write_versions,
a few statements per chunk, the same optimistic lock as `templates edit`). Re-importing the same file
writes nothing; a changed file writes versions for the changed templates only.
A bad record aborts everything before any write, with the file, the record's path
or line, and the field.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb import templates as T
from kb.datasets import check_license
from kb.db import Database
from kb.errors import ConflictError, InputError
from kb.runs import pipeline_run
from kb.storable import parse_json, too_deep
from kb.template_jsonl import read_template_jsonl
from kb.template_writes import NewVersion, chunks, lock_current, write_versions
from pipelines.embed import embed_new_templates
from pipelines.reasonflux_v1 import from_v1, keep_original

FORMATS = ("reasonflux-v1", "jsonl")


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
        keep_original(spec, raw)
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
    for chunk in chunks(status_rows):
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
