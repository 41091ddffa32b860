"""Template versioning: create, edit (optimistic locking), revert, deprecate, restore, history, diff, blame.

A template's identity is its key (category path plus name); its content lives in
immutable versions. An edit that changes nothing writes nothing. Every write
checks the version it started from, so two concurrent editors can never
silently overwrite each other: the loser gets a ConflictError and writes nothing.
Every version records its author: the one given, else the OS user running the command
(a pipeline's versions also carry the run's id).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, select

from kb import storable
from kb.errors import ConflictError, InputError, NotFound
from kb.models import Template, TemplateVersion
from kb.models._common import utcnow
from kb.template_fields import CONTENT_FIELDS, STATUSES
from kb.template_writes import Current, NewVersion, write_versions


@dataclass
class TemplateSpec:
    """What a user or a pipeline says a template is; `category`/`section`/`name` make its key."""

    name: str
    category: str
    section: str | None = None
    template_type: str | None = None
    tags: list[str] = field(default_factory=list)
    description: str = ""
    application_scope: str = ""
    steps: list[Any] = field(default_factory=list)
    example_problem: str | None = None
    example_solution: str | None = None
    example_answer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return make_key(self.category, self.section, self.name)

    def content(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in CONTENT_FIELDS}

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], *, file: str | None = None, record: str | None = None
    ) -> TemplateSpec:
        """Validate a plain dict (from JSON/YAML/flags); errors name the file, record and field."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"key"})
        if unknown:
            raise InputError(
                f"unknown field(s) {', '.join(unknown)}", file=file, record=record, field=unknown[0]
            )
        for required in ("name", "category"):
            if not isinstance(data.get(required), str) or not data[required].strip():
                raise InputError(
                    "is required and must be a non-empty string", file=file, record=record, field=required
                )
        values = dict(data)
        values.pop("key", None)
        for name in ("tags", "steps"):
            if name in values and not isinstance(values[name], list):
                raise InputError("must be a list", file=file, record=record, field=name)
        if "tags" in values and not all(isinstance(t, str) for t in values["tags"]):
            raise InputError("must be a list of strings", file=file, record=record, field="tags")
        if "extra" in values and not isinstance(values["extra"], dict):
            raise InputError("must be an object", file=file, record=record, field="extra")
        for name in (
            "section",
            "template_type",
            "description",
            "application_scope",
            "example_problem",
            "example_solution",
            "example_answer",
        ):
            if values.get(name) is not None and not isinstance(values[name], str):
                raise InputError("must be a string", file=file, record=record, field=name)
        spec = cls(**values)
        spec.description = spec.description or ""
        spec.application_scope = spec.application_scope or ""
        check_storable(spec, file=file, record=record)
        return spec

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, **asdict(self)}


INDEXED_FIELDS = (
    "name",
    "tags",
    "description",
    "application_scope",
    "steps",
)  # the full-text vector's sources


def check_storable(spec: TemplateSpec, *, file: str | None = None, record: str | None = None) -> None:
    """Refuse, naming the field, what PostgreSQL would reject: NUL characters, absurd nesting, text
    too long for the full-text vector."""
    for name, value in [("category", spec.category), ("section", spec.section), *spec.content().items()]:
        storable.check_value(value, file=file, record=record, field=name)
    storable.check_indexed_length({f: getattr(spec, f) for f in INDEXED_FIELDS}, file=file, record=record)


def make_key(category: str, section: str | None, name: str) -> str:
    parts = [p.strip().replace("/", "∕") for p in (category, section, name) if p and p.strip()]
    return "/".join(parts)


def content_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(
        {f: content.get(f) for f in CONTENT_FIELDS}, sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def resolve(session: Session, ref: str | int) -> Template:
    """A template by id or key."""
    ref_s = str(ref)
    by_id = ref_s.isdigit() and int(ref_s) <= storable.INT32_MAX  # a bigger number is no id (nor a key)
    stmt = (
        select(Template).where(Template.id == int(ref_s))
        if by_id
        else select(Template).where(Template.key == ref_s)
    )
    template = session.exec(stmt).first()
    if template is None:
        raise NotFound(f"no template {ref_s!r} (give an id or a key like 'Category/Section/Name')")
    return template


def get_version(session: Session, ref: str | int, version_no: int | None = None) -> TemplateVersion:
    """The current version of a template, or version N of it."""
    template = resolve(session, ref)
    no = version_no if version_no is not None else template.current_version_no
    version = session.exec(
        select(TemplateVersion).where(
            TemplateVersion.template_id == template.id, TemplateVersion.version_no == no
        )
    ).first()
    if version is None:
        raise NotFound(
            f"template {template.key!r} has no version {no} (latest is {template.current_version_no})"
        )
    return version


def spec_of(template: Template, version: TemplateVersion) -> TemplateSpec:
    return TemplateSpec(
        category=template.category,
        section=template.section,
        **{f: getattr(version, f) for f in CONTENT_FIELDS},
    )


def _write_version(
    session: Session,
    template: Template | None,
    spec: TemplateSpec,
    *,
    parent_id: int | None,
    **source: Any,
) -> TemplateVersion:
    """One version through the one writer (kb.template_writes): TEMPLATE None creates it."""
    session.flush()
    before = (
        None
        if template is None
        else Current(template.id, template.status, template.current_version_no, parent_id, None)
    )
    content = spec.content()
    write = NewVersion(
        spec.key, spec.category, spec.section, content, content_hash(content), before, **source
    )
    version_id = write_versions(session.connection(), [write])[spec.key]
    if template is not None:
        session.refresh(template)
    return session.get(TemplateVersion, version_id)


def create_template(
    session: Session,
    spec: TemplateSpec,
    *,
    source_kind: str = "user",
    source_ref: str | None = None,
    provenance: dict | None = None,
    change_note: str | None = None,
    run_id: int | None = None,
    author: str | None = None,
) -> TemplateVersion:
    if session.exec(select(Template.id).where(Template.key == spec.key)).first() is not None:
        raise ConflictError(f"template {spec.key!r} already exists; use edit")
    return _write_version(
        session,
        None,
        spec,
        parent_id=None,
        source_kind=source_kind,
        source_ref=source_ref,
        provenance=provenance,
        change_note=change_note or "created",
        run_id=run_id,
        author=author,
    )


def edit_template(
    session: Session,
    ref: str | int,
    changes: dict[str, Any] | TemplateSpec,
    *,
    expect_version: int | None = None,
    source_kind: str = "user",
    source_ref: str | None = None,
    provenance: dict | None = None,
    change_note: str | None = None,
    run_id: int | None = None,
    author: str | None = None,
) -> tuple[TemplateVersion, bool]:
    """Write a new version with CHANGES applied; (version, changed). No-op when nothing changed.

    expect_version: the version the caller read; a mismatch raises ConflictError and writes nothing.
    """
    template = resolve(session, ref)
    _check_expected(template, expect_version)
    current = get_version(session, template.id)
    base = spec_of(template, current)
    if isinstance(changes, TemplateSpec):
        new = replace(changes, category=template.category, section=template.section)
    else:
        bad = sorted(set(changes) - set(CONTENT_FIELDS))
        if bad:
            raise InputError(f"cannot edit field(s) {', '.join(bad)}", field=bad[0])
        new = TemplateSpec.from_dict({**asdict(base), **changes})
    if content_hash(new.content()) == current.content_hash:
        return current, False
    version = _write_version(
        session,
        template,
        new,
        parent_id=current.id,
        source_kind=source_kind,
        source_ref=source_ref,
        provenance=provenance,
        change_note=change_note,
        run_id=run_id,
        author=author,
    )
    return version, True


def _check_expected(template: Template, expect_version: int | None) -> None:
    if expect_version is not None and template.current_version_no != expect_version:
        raise ConflictError(
            f"template {template.key!r} is at version {template.current_version_no}, "
            f"not {expect_version}: someone else edited it first; nothing was written"
        )


def revert_template(
    session: Session,
    ref: str | int,
    to_version: int,
    *,
    expect_version: int | None = None,
    author: str | None = None,
    change_note: str | None = None,
    source_ref: str | None = None,
) -> tuple[TemplateVersion, bool]:
    """Write a new version whose content equals version TO_VERSION; (version, changed).

    History keeps everything: the versions after TO_VERSION stay, and the new one records which
    version it restores in its provenance. Already equal to it: nothing is written.
    """
    template = resolve(session, ref)
    _check_expected(template, expect_version)
    target = get_version(session, template.id, to_version)
    current = get_version(session, template.id)
    if target.content_hash == current.content_hash:
        return current, False
    version = _write_version(
        session,
        template,
        spec_of(template, target),
        parent_id=current.id,
        source_kind="user",
        source_ref=source_ref,
        provenance={
            "reverted_to": target.version_no,
            "reverted_to_version_id": target.id,
            "reverted_from": current.version_no,
        },
        change_note=change_note or f"revert to version {target.version_no}",
        run_id=None,
        author=author,
    )
    return version, True


def upsert_template(session: Session, spec: TemplateSpec, **source: Any) -> tuple[TemplateVersion, str]:
    """Create, or add a version if the content changed: (version, 'created' | 'updated' | 'unchanged')."""
    existing = session.exec(select(Template).where(Template.key == spec.key)).first()
    if existing is None:
        return create_template(session, spec, **source), "created"
    version, changed = edit_template(session, existing.id, spec, **source)
    return version, "updated" if changed else "unchanged"


def set_status(session: Session, ref: str | int, status: str) -> Template:
    if status not in STATUSES:
        raise InputError(f"status must be one of {', '.join(STATUSES)}", field="status")
    template = resolve(session, ref)
    template.status = status
    template.updated_at = utcnow()
    session.add(template)
    session.flush()
    return template


def history(session: Session, ref: str | int) -> list[TemplateVersion]:
    template = resolve(session, ref)
    return list(
        session.exec(
            select(TemplateVersion)
            .where(TemplateVersion.template_id == template.id)
            .order_by(TemplateVersion.version_no)
        )
    )


def blame(versions: list[TemplateVersion]) -> list[dict[str, Any]]:
    """Per content field: the version (oldest first in VERSIONS) that last changed it, and who made it."""
    last: dict[str, TemplateVersion] = {}
    previous: TemplateVersion | None = None
    for v in versions:
        for f in CONTENT_FIELDS:
            if previous is None or getattr(v, f) != getattr(previous, f):
                last[f] = v
        previous = v
    return [
        {
            "field": f,
            "version": v.version_no,
            "author": v.author,
            "run_id": v.run_id,
            "source_kind": v.source_kind,
            "change_note": v.change_note,
            "created_at": v.created_at,
        }
        for f in CONTENT_FIELDS
        if (v := last.get(f)) is not None
    ]


def diff_versions(a: TemplateVersion, b: TemplateVersion) -> list[dict[str, Any]]:
    """Field-by-field differences between two versions: [{field, old, new}]."""
    return [
        {"field": f, "old": getattr(a, f), "new": getattr(b, f)}
        for f in CONTENT_FIELDS
        if getattr(a, f) != getattr(b, f)
    ]


def version_dict(template: Template, version: TemplateVersion) -> dict[str, Any]:
    """A template at a version, as one flat record for output."""
    return {
        "id": template.id,
        "key": template.key,
        "category": template.category,
        "section": template.section,
        "status": template.status,
        "version": version.version_no,
        "current_version": template.current_version_no,
        "version_id": version.id,
        **{f: getattr(version, f) for f in CONTENT_FIELDS},
        "content_hash": version.content_hash,
        "parent_version_id": version.parent_version_id,
        "source_kind": version.source_kind,
        "source_ref": version.source_ref,
        "provenance": version.provenance,
        "change_note": version.change_note,
        "author": version.author,
        "run_id": version.run_id,
        "created_at": version.created_at,
    }


def list_templates(
    session: Session,
    *,
    tags: list[str] | tuple[str, ...] = (),
    category: str | None = None,
    section: str | None = None,
    status: str | None = None,
    text: str | None = None,
    limit: int | None = None,
) -> list[tuple[Template, TemplateVersion]]:
    """Templates at their current version, filtered. Tags must all be present (case-insensitive);
    text matches name/description by substring (ILIKE) or by full-text search."""
    stmt = select(Template, TemplateVersion).join(
        TemplateVersion, TemplateVersion.id == Template.current_version_id
    )
    if status is not None:
        if status not in STATUSES:
            raise InputError(f"status must be one of {', '.join(STATUSES)}", field="status")
        stmt = stmt.where(Template.status == status)
    if category is not None:
        stmt = stmt.where(sa.func.lower(Template.category) == category.lower())
    if section is not None:
        stmt = stmt.where(sa.func.lower(Template.section) == section.lower())
    for tag in tags:
        tag_values = sa.func.unnest(TemplateVersion.tags).table_valued("tag").render_derived()
        stmt = stmt.where(
            sa.exists().select_from(tag_values).where(sa.func.lower(tag_values.c.tag) == tag.lower())
        )
    if text:
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            sa.or_(
                TemplateVersion.name.ilike(pattern, escape="\\"),
                TemplateVersion.description.ilike(pattern, escape="\\"),
                TemplateVersion.search_tsv.op("@@")(sa.func.websearch_to_tsquery("english", text)),
            )
        )
    stmt = stmt.order_by(Template.category, Template.section, TemplateVersion.name, Template.id)
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())
