"""Writing template versions: the one home of the optimistic lock, for every writer.

`templates add/edit/revert` (kb.templates), the import stage and mining all write versions through
`write_versions`, set-based (a few statements per chunk, one version or twenty thousand): new templates,
their versions, then the current-version pointers, each moved only from the version the writer compared
against (`UPDATE template ... WHERE current_version_no = from_no`). A writer that lost the race gets a
ConflictError and its transaction writes nothing, whichever command it came from.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from kb.errors import ConflictError
from kb.models._common import utcnow

CHUNK = 2000  # rows per statement: bounded parameter size, still few round trips


@dataclass(frozen=True)
class Current:
    """A template as the writer read it: the version a new one must follow."""

    template_id: int
    status: str
    version_no: int
    version_id: int | None
    content_hash: str | None


@dataclass
class NewVersion:
    """One version to write. BEFORE is None for a new template (created with STATUS)."""

    key: str
    category: str
    section: str | None
    content: dict[str, Any]
    content_hash: str
    before: Current | None
    source_kind: str = "user"
    source_ref: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    change_note: str | None = None
    run_id: int | None = None
    author: str | None = None  # None or blank: the OS user (current_author)
    status: str = "active"


def current_author() -> str:
    """Who is running this command: the OS user (REASONFLUX_AUTHOR overrides, e.g. in services)."""
    explicit = os.environ.get("REASONFLUX_AUTHOR", "").strip()
    if explicit:
        return explicit
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers) and no LOGNAME/USER
        return f"uid:{os.getuid()}"


def conflict(keys: Sequence[str]) -> ConflictError:
    """The one message of a lost race, whichever command wrote."""
    which = f"template {keys[0]!r}" if len(keys) == 1 else f"{len(keys)} templates (first {keys[0]!r})"
    return ConflictError(
        f"{which} changed by someone else while writing; nothing was written: reload and retry"
    )


def lock_current(conn: sa.Connection, keys: Sequence[str]) -> dict[str, Current]:
    """The current state of the templates with KEYS (absent ones are new), locked until commit."""
    found: dict[str, Current] = {}
    for chunk in chunks(list(keys)):
        for row in conn.execute(_LOCK_CURRENT, {"keys": chunk}):
            found[row.key] = Current(
                row.id, row.status, row.current_version_no, row.current_version_id, row.content_hash
            )
    return found


def write_versions(conn: sa.Connection, writes: Sequence[NewVersion]) -> dict[str, int]:
    """Write WRITES inside the caller's transaction; {key: new version id}. ConflictError when another
    writer created one of the new templates or moved one of the pointers first."""
    if not writes:
        return {}
    now, default_author = utcnow().isoformat(), current_author()
    template_ids = {w.key: w.before.template_id for w in writes if w.before is not None}
    template_ids.update(_insert_templates(conn, [w for w in writes if w.before is None], now))
    version_ids: dict[str, int] = {}
    for chunk in chunks(list(writes)):
        rows = [_version_row(w, template_ids[w.key], now, default_author) for w in chunk]
        try:
            inserted = dict(conn.execute(_INSERT_VERSIONS, {"rows": _rows_param(rows)}).all())
        except sa.exc.IntegrityError:  # another writer took one of these version numbers first
            raise conflict([w.key for w in chunk]) from None
        version_ids.update({w.key: inserted[template_ids[w.key]] for w in chunk})
    for chunk in chunks(list(writes)):
        rows = [
            {
                "template_id": template_ids[w.key],
                "version_id": version_ids[w.key],
                "version_no": _version_no(w.before) + 1,
                "from_no": _version_no(w.before),
            }
            for w in chunk
        ]
        if conn.execute(_MOVE_POINTERS, {"rows": _rows_param(rows), "now": now}).rowcount != len(rows):
            raise conflict([w.key for w in chunk])
    return version_ids


def _insert_templates(conn: sa.Connection, new: list[NewVersion], now: str) -> dict[str, int]:
    ids: dict[str, int] = {}
    for chunk in chunks(new):
        rows = [
            {"key": w.key, "category": w.category, "section": w.section, "status": w.status} for w in chunk
        ]
        try:
            ids.update(dict(conn.execute(_INSERT_TEMPLATES, {"rows": _rows_param(rows), "now": now}).all()))
        except sa.exc.IntegrityError:  # created by another writer since we looked
            raise conflict([w.key for w in chunk]) from None
    return ids


def _version_row(w: NewVersion, template_id: int, now: str, default_author: str) -> dict[str, Any]:
    return {
        "template_id": template_id,
        "version_no": _version_no(w.before) + 1,
        **w.content,
        "content_hash": w.content_hash,
        "parent_version_id": w.before.version_id if w.before else None,
        "source_kind": w.source_kind,
        "source_ref": w.source_ref,
        "provenance": w.provenance or {},
        "change_note": w.change_note,
        "author": (w.author or "").strip() or default_author,
        "run_id": w.run_id,
        "created_at": now,
    }


def _version_no(before: Current | None) -> int:
    return before.version_no if before is not None else 0


def chunks(items: list, size: int = CHUNK) -> Iterator[list]:
    """ITEMS in statement-sized pieces."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _rows_param(rows: list[dict[str, Any]]) -> str:
    return json.dumps(rows, ensure_ascii=False, separators=(",", ":"))


_LOCK_CURRENT = sa.text("""
    SELECT t.key, t.id, t.status, t.current_version_no, t.current_version_id, v.content_hash
    FROM template t LEFT JOIN template_version v ON v.id = t.current_version_id
    WHERE t.key = ANY(:keys)
    FOR UPDATE OF t
""")
_INSERT_TEMPLATES = sa.text("""
    INSERT INTO template (key, category, section, status, current_version_no, created_at, updated_at)
    SELECT r.key, r.category, r.section, r.status, 0, CAST(:now AS timestamptz), CAST(:now AS timestamptz)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(key text, category text, section text, status text)
    RETURNING key, id
""")
_INSERT_VERSIONS = sa.text("""
    INSERT INTO template_version (
        template_id, version_no, name, template_type, tags, description, application_scope, steps,
        example_problem, example_solution, example_answer, extra, content_hash, parent_version_id,
        source_kind, source_ref, provenance, change_note, author, run_id, created_at)
    SELECT r.template_id, r.version_no, r.name, r.template_type, r.tags, r.description, r.application_scope,
           r.steps, r.example_problem, r.example_solution, r.example_answer, r.extra, r.content_hash,
           r.parent_version_id, r.source_kind, r.source_ref, r.provenance, r.change_note, r.author, r.run_id,
           r.created_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        template_id int, version_no int, name text, template_type text, tags text[], description text,
        application_scope text, steps jsonb, example_problem text, example_solution text, example_answer text,
        extra jsonb, content_hash text, parent_version_id int, source_kind text, source_ref text,
        provenance jsonb, change_note text, author text, run_id int, created_at timestamptz)
    RETURNING template_id, id
""")
# The optimistic lock: a pointer only moves forward from the version the writer compared against.
_MOVE_POINTERS = sa.text("""
    UPDATE template t
    SET current_version_no = r.version_no, current_version_id = r.version_id,
        updated_at = CAST(:now AS timestamptz)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(template_id int, version_no int, version_id int, from_no int)
    WHERE t.id = r.template_id AND t.current_version_no = r.from_no
""")
