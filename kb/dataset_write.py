"""Writing a dataset version folder (`write_dataset`): the data files in a temporary folder beside the
destination, their hashes, the content-derived version id, the card and manifest, then the version row and the
folder moved into place, the row committed only once the folder is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import sqlalchemy as sa

from kb import migrate
from kb.dataset_card import card_text
from kb.datasets import (
    CARD,
    FORMAT,
    MANIFEST,
    PARQUET_OPTIONS,
    ExportSpec,
    VerificationError,
    canonical_json,
    data_file,
    params_hash,
    read_manifest,
    sha256_file,
    split_row_counts,
)
from kb.db import Database
from kb.errors import ConflictError, InputError, KbError


def _write_parquet(table, path: Path) -> None:
    # Fixed options and no Arrow schema or other metadata: same rows -> same bytes, and dictionary-encoded
    # columns read back as their plain value type.
    pq.write_table(table.replace_schema_metadata(None), path, store_schema=False, **PARQUET_OPTIONS)


def _write_jsonl(records: Iterable[dict], path: Path) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps(rec, ensure_ascii=False, default=str) + "\n" for rec in records)


def write_dataset(db: Database, spec: ExportSpec, out_dir: str | Path, *, run_id: int | None = None) -> dict:
    """Write the folder, record the version (or reuse its row), return the manifest.

    The row commits only once the complete folder is in place: a write that fails (a full disk, a folder that
    cannot be replaced) leaves no row pointing at a folder without its files.
    """
    check_output_dir(out_dir)
    files = [data_file(spec, p, f) for p in spec.parts for f in spec.formats]
    if len(set(files)) != len(files):  # two parts of one split would overwrite each other's file
        raise ValueError(
            f"the parts of a {spec.kind} export need distinct splits (files: {', '.join(files)})"
        )
    out = Path(out_dir)
    revision = migrate.current_revision(db.engine) or "base"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _writing(out.parent, lambda: Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent)))
    try:
        row_counts = split_row_counts(spec)
        _writing(tmp, lambda: _write_parts(spec, tmp))
        data_hashes = {
            p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()
        }
        params = spec.recorded_params()
        identity = {"kind": spec.kind, "params": params, "schema_revision": revision, "files": data_hashes}
        version_id = f"{spec.kind}-{params_hash(identity, 12)}"
        _writing(
            tmp / CARD,
            lambda: (tmp / CARD).write_text(
                card_text(spec, version_id, revision, row_counts, data_hashes, tmp), encoding="utf-8"
            ),
        )
        _check_destination(out, version_id)  # before recording: a refused folder must leave no row behind
        with db.engine.begin() as conn:  # committed after _place: the row never outlives a failed write
            created_at = _record(
                conn, version_id, spec.kind, params, revision, row_counts, data_hashes, out, run_id
            )
            manifest = {
                "format": FORMAT,
                "id": version_id,
                "kind": spec.kind,
                "params": params,
                "license": spec.license,
                "schema_revision": revision,
                "row_counts": row_counts,
                "files": data_hashes,
                "card": {CARD: sha256_file(tmp / CARD)},
                "created_at": created_at,
                **spec.extra_manifest,
            }
            _writing(
                tmp / MANIFEST,
                lambda: (tmp / MANIFEST).write_text(
                    json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                    encoding="utf-8",
                ),
            )
            _writing(out, lambda: _place(tmp, out, version_id))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {**manifest, "path": str(out)}


def _write_parts(spec: ExportSpec, tmp: Path) -> None:
    for part in spec.parts:
        for fmt in ("parquet", "jsonl"):
            if fmt not in spec.formats:
                continue
            path = tmp / data_file(spec, part, fmt)
            path.parent.mkdir(parents=True, exist_ok=True)
            if fmt == "parquet":
                _writing(path, lambda path=path, part=part: _write_parquet(part.table, path))
            else:
                _writing(
                    path,
                    lambda path=path, part=part: _write_jsonl(
                        part.records() if part.records else part.table.to_pylist(), path
                    ),
                )
    for writer in spec.extra_files:
        writer(tmp, spec)


def _writing(path: Path, write: Callable[[], Any]) -> Any:
    """write(), with an OS failure (a full disk: ENOSPC, a file size limit: EFBIG, a read-only folder) turned
    into one line naming the file, not a traceback; nothing is recorded."""
    try:
        return write()
    except OSError as e:
        where = e.filename or path
        reason = e.strerror or str(e) or type(e).__name__
        raise ExportWriteFailed(f"cannot write {where}: {reason}; no dataset version was recorded") from None


class ExportWriteFailed(KbError):
    """Writing the export's files failed (disk full, size limit, permissions); nothing was recorded."""


def _record(
    conn: sa.Connection,
    version_id: str,
    kind: str,
    params: dict,
    revision: str,
    row_counts: dict,
    hashes: dict,
    out: Path,
    run_id: int | None,
) -> str:
    """Insert the dataset_version row unless it exists, and the folder OUT among its locations (a version
    written to a second folder keeps the first as `path` and gains a location); the row's created time."""
    conn.execute(
        sa.text(
            "INSERT INTO dataset_version (id, kind, params, schema_revision, row_counts, files, path, run_id) "
            "VALUES (:id, :kind, CAST(:params AS jsonb), :rev, CAST(:rc AS jsonb), CAST(:files AS jsonb), :path, :run) "
            "ON CONFLICT (id) DO NOTHING"
        ),
        {
            "id": version_id,
            "kind": kind,
            "params": canonical_json(params),
            "rev": revision,
            "rc": canonical_json(row_counts),
            "files": canonical_json(hashes),
            "path": str(out.resolve()),
            "run": run_id,
        },
    )
    row = conn.execute(
        sa.text("SELECT files, created_at FROM dataset_version WHERE id = :id"), {"id": version_id}
    ).one()
    if row.files != hashes:
        raise ConflictError(
            f"dataset version {version_id} is recorded with other file hashes; nothing was written"
        )
    conn.execute(
        sa.text(
            "INSERT INTO dataset_location (version_id, path, run_id) VALUES (:id, :path, :run) "
            "ON CONFLICT (version_id, path) DO NOTHING"
        ),
        {"id": version_id, "path": str(out.resolve()), "run": run_id},
    )
    return row.created_at.isoformat()


def check_output_dir(out_dir: str | Path) -> None:
    """Refuse, before any work or any row, a folder that cannot be created: it or a parent is a file, or it is a
    symbolic link (an export replaces its folder whole, which a link cannot be)."""
    out = Path(out_dir)
    if out.is_symlink():
        raise InputError(
            f"{out} is a symbolic link (to {os.readlink(out)}); pass the folder itself", field="--out"
        )
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out else f"is under {path}, which is a file"
                raise InputError(f"{out} {what}, not a folder", field="--out")
            return


def _check_destination(out: Path, version_id: str) -> None:
    """OUT must not exist, be empty, or already hold this very version."""
    if not out.exists():
        return
    existing = out / MANIFEST
    if existing.is_file():
        try:
            other = read_manifest(existing).get("id")
        except VerificationError as e:
            raise ConflictError(f"{e}; choose another --out") from None
        if other != version_id:
            raise ConflictError(
                f"{out} already holds dataset version {other}; versions are immutable, choose another --out"
            )
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
