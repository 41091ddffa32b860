"""Training reads only verified exports: locate a dataset version, check its files, load its rows.

An export (`reasonflux export sft|dpo`, kb/datasets.py) is a directory of Parquet files plus
`manifest.json` (sha256 of every file), and a `dataset_version` row holding the same hashes. Before any
training starts, every file is re-hashed and compared with the manifest and with the KB row; any mismatch
refuses the export, naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from kb.dataset_verify import verify
from kb.datasets import get_version, sha256_file
from kb.db import Database
from kb.errors import InputError, NotFound

MANIFEST = "manifest.json"
# Which export kinds each stage accepts, and the columns (TRL's conversational formats) it needs.
STAGE_KINDS = {"sft": ("sft",), "dpo": ("dpo",)}
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


def verify_export(db: Database, id_or_dir: str, *, stage: str) -> VerifiedDataset:
    """The dataset version named by an id (or unique prefix) or an export directory, its files re-hashed and
    checked against its manifest and the KB row (`kb.dataset_verify.verify`); else a KbError naming the file."""

    candidate = Path(id_or_dir).expanduser()
    if candidate.is_dir():
        directory = candidate.resolve()
    else:
        row = get_version(db, id_or_dir)
        # The first recorded folder that is still there (a version may have been written to several).
        found = [p for p in row["paths"] or [row["path"]] if p and Path(p).is_dir()]
        if not found:
            raise NotFound(
                f"dataset version {row['id']}'s export directories are missing "
                f"({', '.join(row['paths'] or [str(row['path'])])}); re-export it"
            )
        directory = Path(found[0]).resolve()
    result = verify(db, directory)
    row = get_version(db, result["id"])
    if row["kind"] not in STAGE_KINDS[stage]:
        raise InputError(
            f"dataset version {row['id']} is a {row['kind']!r} export; {stage} trains on "
            f"{' or '.join(STAGE_KINDS[stage])} exports (`reasonflux export {stage}`)",
            field="kind",
        )
    dataset = VerifiedDataset(
        id=row["id"],
        kind=row["kind"],
        path=directory,
        files=dict(row["files"]),
        row_counts=dict(row["row_counts"] or {}),
    )
    if not dataset.parquet_files:
        raise InputError("export lists no Parquet file", file=str(directory / MANIFEST), field="files")
    return dataset


def check_files(dataset: VerifiedDataset) -> None:
    """Re-hash the data files against the verified hashes (a worker reads them after the launcher checked)."""

    for path in dataset.parquet_files:
        expected = dataset.files[path.relative_to(dataset.path).as_posix()]  # data/train.parquet
        actual = sha256_file(path)
        if actual != expected:
            raise InputError(
                f"sha256 {actual} changed since the export was verified ({expected})", file=str(path)
            )


def load_rows(dataset: VerifiedDataset, stage: str, *, completion_only_loss: bool = True):
    """A `datasets.Dataset` in TRL's conversational format for the stage, columns checked per file."""
    import datasets

    tables = []
    for path in dataset.parquet_files:
        table = pq.read_table(path)
        missing = [c for c in STAGE_COLUMNS[stage] if c not in table.column_names]
        if missing:
            raise InputError(
                f"{stage} needs columns {', '.join(STAGE_COLUMNS[stage])}", file=str(path), field=missing[0]
            )
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
        raise InputError(
            "the last message must be the assistant's answer",
            file=str(dataset.path),
            record=f"row {index}",
            field="messages",
        )
    if completion_only:
        # Prompt/completion form makes TRL compute the loss on the answer only.
        return {"prompt": messages[:-1], "completion": messages[-1:]}
    return {"messages": messages}


def _check_messages(messages: Any, dataset: VerifiedDataset, index: int, column: str) -> None:
    if (
        not isinstance(messages, list)
        or not messages
        or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
    ):
        raise InputError(
            "expected a non-empty list of {role, content} messages",
            file=str(dataset.path),
            record=f"row {index}",
            field=column,
        )
