"""Training reads only verified exports: locate a dataset version, check its files, load its rows.

An export is a directory of Parquet files plus `manifest.json` (sha256 of every file), and a
`dataset_version` row holding the same hashes. Before any training starts, every file named in the manifest
is hashed and compared with the manifest and with the KB row; any mismatch refuses the export, naming the
file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb.db import Database
from kb.errors import InputError, NotFound
from kb.models import DatasetVersion

MANIFEST = "manifest.json"
# Which export kinds each stage accepts, and the columns (TRL's conversational formats) it needs.
STAGE_KINDS = {"sft": ("sft", "templates"), "dpo": ("dpo",)}
STAGE_COLUMNS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected")}


@dataclass(frozen=True)
class VerifiedDataset:
    id: str
    kind: str
    path: Path
    files: dict[str, str]  # file name -> sha256
    row_counts: dict[str, Any]

    @property
    def parquet_files(self) -> list[Path]:
        return [self.path / name for name in sorted(self.files) if name.endswith(".parquet")]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST
    if not path.is_file():
        raise InputError("not a dataset export: no manifest.json", file=str(path))
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON: {e}", file=str(path)) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise InputError("expected an object with a non-empty 'files' mapping", file=str(path), field="files")
    return manifest


def manifest_hashes(manifest: dict[str, Any], source: str) -> dict[str, str]:
    """file name -> sha256, from either {name: sha} or {name: {"sha256": sha, ...}}."""
    out = {}
    for name, entry in manifest["files"].items():
        sha = entry.get("sha256") if isinstance(entry, dict) else entry
        if not isinstance(sha, str) or len(sha) != 64:
            raise InputError("expected a sha256 hex digest", file=source, record=name, field="sha256")
        if Path(name).name != name:
            raise InputError("file names in a manifest must be plain names inside the export",
                             file=source, record=name)
        out[name] = sha
    return out


def verify_export(db: Database, id_or_dir: str, *, stage: str) -> VerifiedDataset:
    """The dataset version named by an id or an export directory, verified file by file; else a KbError."""
    row, directory = _locate(db, id_or_dir)
    manifest = read_manifest(directory)
    source = str(directory / MANIFEST)
    listed = manifest_hashes(manifest, source)
    if manifest.get("id", row.id) != row.id:
        raise InputError(f"manifest is for dataset version {manifest['id']!r}, the KB row is {row.id!r}",
                         file=source, field="id")
    stored = {name: (v.get("sha256") if isinstance(v, dict) else v) for name, v in (row.files or {}).items()}
    for name in sorted(set(stored) | set(listed)):
        if stored.get(name) != listed.get(name):
            raise InputError(
                f"manifest and KB row {row.id} disagree about this file "
                f"(manifest {listed.get(name, 'missing')}, KB {stored.get(name, 'missing')})",
                file=str(directory / name))
    for name, sha in sorted(listed.items()):
        path = directory / name
        if not path.is_file():
            raise InputError(f"listed in the manifest of {row.id} but missing", file=str(path))
        actual = sha256_file(path)
        if actual != sha:
            raise InputError(f"sha256 {actual} does not match the manifest ({sha}): the export was "
                             f"modified after it was written; re-export {row.kind}", file=str(path))
    if row.kind not in STAGE_KINDS[stage]:
        raise InputError(f"dataset version {row.id} is a {row.kind!r} export; {stage} trains on "
                         f"{' or '.join(STAGE_KINDS[stage])} exports", field="kind")
    dataset = VerifiedDataset(id=row.id, kind=row.kind, path=directory, files=listed,
                              row_counts=dict(row.row_counts or {}))
    if not dataset.parquet_files:
        raise InputError("export lists no Parquet file", file=source, field="files")
    return dataset


def _locate(db: Database, id_or_dir: str) -> tuple[DatasetVersion, Path]:
    candidate = Path(id_or_dir).expanduser()
    with db.session() as s:
        if candidate.is_dir():
            manifest = read_manifest(candidate)
            version_id = manifest.get("id") or manifest.get("dataset_version_id")
            if not version_id:
                raise InputError("manifest names no dataset version", file=str(candidate / MANIFEST), field="id")
            row = s.get(DatasetVersion, version_id)
            if row is None:
                raise NotFound(f"dataset version {version_id!r} (from {candidate / MANIFEST}) is not in the KB; "
                               "training reads only exports registered by `reasonflux export`")
            return row, candidate.resolve()
        row = s.get(DatasetVersion, id_or_dir)
        if row is None:
            raise NotFound(f"no dataset version or export directory {id_or_dir!r}; "
                           "list them with `reasonflux datasets list`")
        if not row.path or not Path(row.path).is_dir():
            raise NotFound(f"dataset version {row.id}'s export directory {row.path!r} is missing; re-export it")
        return row, Path(row.path).resolve()


def load_rows(dataset: VerifiedDataset, stage: str, *, completion_only_loss: bool = True):
    """A `datasets.Dataset` in TRL's conversational format for the stage, columns checked per file."""
    import datasets
    import pyarrow.parquet as pq

    tables = []
    for path in dataset.parquet_files:
        table = pq.read_table(path)
        missing = [c for c in STAGE_COLUMNS[stage] if c not in table.column_names]
        if missing:
            raise InputError(f"{stage} needs columns {', '.join(STAGE_COLUMNS[stage])}", file=str(path),
                             field=missing[0])
        tables.append(table.select(list(STAGE_COLUMNS[stage])))
    rows = [r for t in tables for r in t.to_pylist()]
    if not rows:
        raise InputError("the export has no rows", file=str(dataset.path / MANIFEST))
    if stage == "sft":
        rows = [_sft_row(r, dataset, i, completion_only_loss) for i, r in enumerate(rows)]
    else:
        for i, r in enumerate(rows):
            for col in STAGE_COLUMNS["dpo"]:
                _check_messages(r[col], dataset, i, col)
    return datasets.Dataset.from_list(rows)


def _sft_row(row: dict, dataset: VerifiedDataset, index: int, completion_only: bool) -> dict:
    messages = row["messages"]
    _check_messages(messages, dataset, index, "messages")
    if messages[-1]["role"] != "assistant":
        raise InputError("the last message must be the assistant's answer", file=str(dataset.path),
                         record=f"row {index}", field="messages")
    if completion_only:
        # Prompt/completion form makes TRL compute the loss on the answer only.
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"messages": messages}


def _check_messages(messages: Any, dataset: VerifiedDataset, index: int, column: str) -> None:
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise InputError("expected a non-empty list of {role, content} messages", file=str(dataset.path),
                         record=f"row {index}", field=column)
