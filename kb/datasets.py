"""Dataset versions: immutable exported folders, their manifests, and verification against the KB.

A version folder holds data files (Parquet, optionally JSONL), a dataset card
(README.md) and manifest.json. The version id is derived from the content (kind,
selection parameters, schema revision, data file hashes), so exporting the same
selection twice yields the same id and byte-identical files; the second export
reuses the recorded row (and its created time), so even the manifest is identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import ConflictError, KbError, NotFound

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "reasonflux-dataset/1"
# No Parquet dictionary pages: hashing every string costs more than zstd saves on these columns.
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "row_group_size": 131072,
                   "use_dictionary": False}


class VerificationError(KbError):
    """A dataset folder does not match its manifest or the KB's record."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)


def params_hash(params: dict[str, Any], length: int = 16) -> str:
    """A short stable id for a set of selection parameters."""
    return hashlib.sha256(canonical_json(params).encode()).hexdigest()[:length]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class DataPart:
    """One logical table of a dataset: written as NAME.parquet and/or NAME.jsonl."""

    name: str
    table: Any  # pyarrow.Table
    records: Callable[[], Iterable[dict]] | None = None  # JSONL records; default: the table's rows
    description: str = ""


@dataclass
class ExportSpec:
    kind: str
    params: dict[str, Any]
    parts: list[DataPart]
    formats: tuple[str, ...] = ("parquet",)
    card_intro: str = ""
    usage: str = ""
    extra_manifest: dict[str, Any] = field(default_factory=dict)


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    # Fixed options and no Arrow schema or other metadata: same rows -> same bytes, and dictionary-encoded
    # columns read back as their plain value type.
    pq.write_table(table.replace_schema_metadata(None), path, store_schema=False, **PARQUET_OPTIONS)


def _write_jsonl(records: Iterable[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(rec, ensure_ascii=False, default=str) + "\n" for rec in records)


def _plain(t):
    """A type as readers of the Parquet file see it (dictionary encoding is storage, not type)."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _plain(t.value_type)
    if pa.types.is_list(t):
        return pa.list_(_plain(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _plain(f.type)) for f in t])
    return t


def _card(spec: ExportSpec, version_id: str, revision: str, row_counts: dict, hashes: dict) -> str:
    lines = [
        "---", f"pretty_name: reasonflux {spec.kind} {version_id}", "configs:", "- config_name: default",
        "  data_files:",
    ]
    for part in spec.parts:
        lines += [f"  - split: {part.name}", f"    path: {part.name}.{'parquet' if 'parquet' in spec.formats else 'jsonl'}"]
    lines += ["---", "", f"# {version_id}", "", spec.card_intro.strip(), "",
              f"- kind: `{spec.kind}`", f"- schema revision: `{revision}`",
              f"- selection: `{canonical_json(spec.params)}`", ""]
    for part in spec.parts:
        lines += [f"## {part.name} ({row_counts[part.name]} rows)", "", part.description.strip(), "",
                  "| column | type |", "| --- | --- |"]
        lines += [f"| `{f.name}` | `{_plain(f.type)}` |" for f in part.table.schema]
        lines.append("")
    if spec.usage:
        lines += ["## Usage", "", spec.usage.strip(), ""]
    lines += ["## Files", "", "| file | sha256 |", "| --- | --- |"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in sorted(hashes.items())]
    lines += ["", "Check them with `reasonflux datasets verify DIR`.", ""]
    return "\n".join(lines)


def write_dataset(db: Database, spec: ExportSpec, out_dir: str | Path, *, run_id: int | None = None) -> dict:
    """Write the folder, record the version (or reuse its row), return the manifest."""
    from kb import migrate

    out = Path(out_dir)
    revision = migrate.current_revision(db.engine) or "base"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        data_hashes: dict[str, str] = {}
        row_counts = {p.name: p.table.num_rows for p in spec.parts}
        for part in spec.parts:
            if "parquet" in spec.formats:
                _write_parquet(part.table, tmp / f"{part.name}.parquet")
            if "jsonl" in spec.formats:
                _write_jsonl(part.records() if part.records else part.table.to_pylist(), tmp / f"{part.name}.jsonl")
        for path in sorted(tmp.iterdir()):
            data_hashes[path.name] = sha256_file(path)
        identity = {"kind": spec.kind, "params": spec.params, "schema_revision": revision, "files": data_hashes}
        version_id = f"{spec.kind}-{params_hash(identity, 12)}"
        (tmp / CARD).write_text(_card(spec, version_id, revision, row_counts, data_hashes), encoding="utf-8")
        hashes = {**data_hashes, CARD: sha256_file(tmp / CARD)}
        _check_destination(out, version_id)  # before recording: a refused folder must leave no row behind
        created_at = _record(db, version_id, spec, revision, row_counts, hashes, out, run_id)
        manifest = {
            "format": FORMAT, "id": version_id, "kind": spec.kind, "params": spec.params,
            "schema_revision": revision, "row_counts": row_counts, "files": hashes,
            "created_at": created_at, **spec.extra_manifest,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
        _place(tmp, out, version_id)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**manifest, "path": str(out)}


def _record(db: Database, version_id: str, spec: ExportSpec, revision: str, row_counts: dict, hashes: dict,
            out: Path, run_id: int | None) -> str:
    """Insert the dataset_version row unless it exists; the row's created time either way."""
    with db.engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO dataset_version (id, kind, params, schema_revision, row_counts, files, path, run_id) "
            "VALUES (:id, :kind, CAST(:params AS jsonb), :rev, CAST(:rc AS jsonb), CAST(:files AS jsonb), :path, :run) "
            "ON CONFLICT (id) DO NOTHING"),
            {"id": version_id, "kind": spec.kind, "params": canonical_json(spec.params), "rev": revision,
             "rc": canonical_json(row_counts), "files": canonical_json(hashes), "path": str(out.resolve()),
             "run": run_id})
        row = conn.execute(sa.text("SELECT files, created_at FROM dataset_version WHERE id = :id"),
                           {"id": version_id}).one()
    if row.files != hashes:
        raise ConflictError(f"dataset version {version_id} is recorded with other file hashes; nothing was written")
    return row.created_at.isoformat()


def _check_destination(out: Path, version_id: str) -> None:
    """OUT must not exist, be empty, or already hold this very version."""
    if not out.exists():
        return
    existing = out / MANIFEST
    if existing.is_file():
        other = json.loads(existing.read_text(encoding="utf-8")).get("id")
        if other != version_id:
            raise ConflictError(f"{out} already holds dataset version {other}; versions are immutable, "
                                "choose another --out")
    elif any(out.iterdir()):
        raise ConflictError(f"{out} exists and is not empty; choose another --out")


def _place(tmp: Path, out: Path, version_id: str) -> None:
    """Move the finished folder into place (an existing copy of this version is identical: kept)."""
    _check_destination(out, version_id)
    if (out / MANIFEST).is_file():
        return
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)


# ---- reading and verification --------------------------------------------------------------------------

VERSION_COLUMNS = ("id", "kind", "schema_revision", "row_counts", "path", "run_id", "created_at")


def list_versions(db: Database, kind: str | None = None) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT id, kind, schema_revision, row_counts, path, run_id, created_at FROM dataset_version "
            "WHERE CAST(:k AS text) IS NULL OR kind = :k ORDER BY created_at, id"), {"k": kind}).mappings()
        return [dict(r) for r in rows]


def get_version(db: Database, ref: str) -> dict[str, Any]:
    """A version by id or unique id prefix."""
    with db.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM dataset_version WHERE id = :r OR id LIKE :p ORDER BY id"),
                            {"r": ref, "p": ref.replace("%", "").replace("_", r"\_") + "%"}).mappings().all()
    exact = [r for r in rows if r["id"] == ref]
    if exact:
        return dict(exact[0])
    if not rows:
        raise NotFound(f"no dataset version {ref!r} (see `reasonflux datasets list`)")
    if len(rows) > 1:
        raise NotFound(f"{ref!r} matches several dataset versions: {', '.join(r['id'] for r in rows)}")
    return dict(rows[0])


def verify(db: Database | None, folder: str | Path) -> dict[str, Any]:
    """Re-hash every file; compare with manifest.json and with the KB's row. Raises VerificationError."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise VerificationError(f"{manifest_path}: no manifest; not a dataset version folder")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VerificationError(f"{manifest_path}: unreadable manifest ({e})") from None
    files = manifest.get("files") or {}
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise VerificationError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise VerificationError(f"{path}: sha256 {actual} does not match the manifest ({digest})")
    unlisted = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in files)
    if unlisted:
        raise VerificationError(f"{folder / unlisted[0]}: not listed in the manifest")
    result = {"id": manifest.get("id"), "kind": manifest.get("kind"), "files": len(files), "manifest": "ok"}
    if db is not None:
        try:
            row = get_version(db, str(manifest.get("id")))
        except NotFound:
            raise VerificationError(f"{manifest_path}: dataset version {manifest.get('id')} is not recorded in "
                                    "this knowledge base") from None
        if row["id"] != manifest.get("id"):
            raise VerificationError(f"{manifest_path}: id {manifest.get('id')} is not recorded in this knowledge base")
        for key in ("kind", "params", "schema_revision", "row_counts", "files"):
            if row[key] != manifest.get(key):
                raise VerificationError(f"{manifest_path}: {key} differs from the knowledge base's record of "
                                        f"{row['id']}")
        for name, digest in sorted(row["files"].items()):
            if files.get(name) != digest:
                raise VerificationError(f"{folder / name}: hash differs from the knowledge base's record")
        result["kb"] = "ok"
    return result
