"""Dataset versions: immutable exported folders, their manifests, and verification against the KB.

A version folder is laid out as the Hugging Face Hub expects, so `datasets.load_dataset(DIR)` and
`load_dataset("parquet", data_dir=DIR)` both work and the folder can be pushed as a Hub dataset repo:

    README.md           dataset card: YAML front matter (license, language, task_categories,
                        size_categories, tags, configs, dataset_info) and a description
    data/train.parquet  the rows, one file per split (data/train.jsonl with --format jsonl)
    jsonl/KIND.jsonl    the JSONL copy when both formats are written (named so no loader takes
                        it for a split of the Parquet data)
    manifest.json       id, kind, selection, license (and the licences of its sources), revision,
                        row counts per split, sha256 of every data file and of the card; loaders
                        ignore it (it is not under data/)

The version id is derived from the content (kind, selection parameters and license, schema revision,
data file hashes), so exporting the same selection twice yields the same id and byte-identical files;
the second export reuses the recorded row (and its created time), so even the manifest is identical.
The card is documentation: verification reports an edited card as a warning, never as corruption.
Every folder a version is written to is recorded (dataset_location): the version row itself is immutable.
Writing a folder is `kb.dataset_write`, its card `kb.dataset_card`, verification `kb.dataset_verify`,
publishing `kb.dataset_hub`.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.defaults import DATASET_LICENSE as DEFAULT_LICENSE
from kb.errors import InputError, KbError, NotFound

MANIFEST = "manifest.json"
CARD = "README.md"
FORMAT = "reasonflux-dataset/3"  # 3: row_counts keyed by split name
DATA_DIR = "data"
LICENSE_PATTERN = r"[a-z0-9][a-z0-9.+-]*"  # Hub licence identifiers: apache-2.0, cc-by-4.0, mit, other, ...
# No Parquet dictionary pages: hashing every string costs more than zstd saves on these columns.
PARQUET_OPTIONS = {
    "compression": "zstd",
    "compression_level": 3,
    "row_group_size": 131072,
    "use_dictionary": False,
}


def check_license(value: str | None, field: str = "--license") -> str | None:
    """VALUE if it is a Hub licence identifier (or None: not given); else an InputError naming FIELD."""
    if value is not None and not re.fullmatch(LICENSE_PATTERN, value):
        raise InputError(
            f"{value!r} is not a licence identifier like apache-2.0, mit, cc-by-4.0 or other", field=field
        )
    return value


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
    """One logical table of a dataset: written as data/SPLIT.parquet and/or JSONL."""

    name: str
    table: Any  # pyarrow.Table
    records: Callable[[], Iterable[dict]] | None = None  # JSONL records; default: the table's rows
    description: str = ""
    split: str = "train"  # a Hub split name that loaders recognise in a file name


@dataclass
class ExportSpec:
    kind: str
    params: dict[str, Any]
    parts: list[DataPart]
    formats: tuple[str, ...] = ("parquet",)
    card_intro: str = ""
    usage: str = ""
    extra_manifest: dict[str, Any] = field(default_factory=dict)
    license: str = DEFAULT_LICENSE
    license_note: str = ""  # how the licence was chosen, for the card
    task_categories: tuple[str, ...] = ("text-generation",)
    tags: tuple[str, ...] = ()
    # Writers of further files derived from the parts (e.g. the LLaMA-Factory copy), called with the
    # folder being built; what they write is hashed and listed like the data files.
    extra_files: list[Callable[[Path, ExportSpec], None]] = field(default_factory=list)

    def recorded_params(self) -> dict[str, Any]:
        """The selection plus the licence: what the version id, the manifest and the KB row record."""
        return {**self.params, "license": self.license}


def data_file(spec: ExportSpec, part: DataPart, fmt: str) -> str:
    """Where a part's data file goes in the folder (posix path relative to it)."""
    if fmt == "parquet" or "parquet" not in spec.formats:
        return f"{DATA_DIR}/{part.split}.{fmt}"
    # Beside Parquet, JSONL may not sit under data/ or carry a split name: `load_dataset("parquet",
    # data_dir=DIR)` would read it as Parquet.
    return (
        f"jsonl/{spec.kind}.jsonl"
        if len(spec.parts) == 1
        else f"jsonl/{spec.kind}{spec.parts.index(part)}.jsonl"
    )


def split_row_counts(spec: ExportSpec) -> dict[str, int]:
    """Rows per split, keyed by the split names `load_dataset` returns (the manifest's and the KB's
    `row_counts`)."""
    return {p.split: p.table.num_rows for p in spec.parts}


# Before format 3, row_counts were keyed by the part's name: for these kinds the one part was named after
# the kind and written to the `train` split (the other kinds' parts were named after their split).
LEGACY_PART_NAMED = ("templates", "problems")


def normalized_row_counts(kind: str | None, row_counts: dict | None) -> dict[str, Any]:
    """ROW_COUNTS keyed by split name, whether a manifest or KB row wrote them by split (format 3) or by
    part name (earlier): what verification compares."""
    counts = dict(row_counts or {})
    if kind in LEGACY_PART_NAMED and set(counts) == {kind}:
        return {"train": counts[kind]}
    return counts


def read_manifest(path: Path) -> dict[str, Any]:
    """A folder's manifest.json as a dict; anything else is one VerificationError naming the file."""
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise VerificationError(f"{path}: unreadable manifest ({e})") from None
    except OSError as e:
        raise VerificationError(f"{path}: cannot read the manifest ({e.strerror or e})") from None
    if not isinstance(manifest, dict):
        raise VerificationError(
            f"{path}: not a dataset manifest (a JSON {type(manifest).__name__}, not an object)"
        )
    return manifest


# ---- reading and verification --------------------------------------------------------------------------

VERSION_COLUMNS = ("id", "kind", "schema_revision", "row_counts", "paths", "run_id", "created_at")

# Every folder the version was written to, in the order they were written (the first is `path`).
_PATHS = (
    "ARRAY(SELECT l.path FROM dataset_location l WHERE l.version_id = d.id "
    "ORDER BY l.created_at, l.path) AS paths"
)


def list_versions(db: Database, kind: str | None = None) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                f"SELECT id, kind, schema_revision, row_counts, {_PATHS}, run_id, created_at FROM dataset_version d "
                "WHERE CAST(:k AS text) IS NULL OR kind = :k ORDER BY created_at, id"
            ),
            {"k": kind},
        ).mappings()
        return [dict(r) for r in rows]


def get_version(db: Database, ref: str) -> dict[str, Any]:
    """A version by id or unique id prefix, with `paths`: every folder it was written to."""
    with db.engine.connect() as conn:
        rows = (
            conn.execute(
                sa.text(
                    f"SELECT d.*, {_PATHS} FROM dataset_version d WHERE id = :r OR id LIKE :p ORDER BY id"
                ),
                {"r": ref, "p": ref.replace("%", "").replace("_", r"\_") + "%"},
            )
            .mappings()
            .all()
        )
    exact = [r for r in rows if r["id"] == ref]
    if exact:
        return dict(exact[0])
    if not rows:
        raise NotFound(f"no dataset version {ref!r} (see `reasonflux datasets list`)")
    if len(rows) > 1:
        raise NotFound(f"{ref!r} matches several dataset versions: {', '.join(r['id'] for r in rows)}")
    return dict(rows[0])
