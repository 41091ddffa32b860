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
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.defaults import DATASET_LICENSE as DEFAULT_LICENSE
from kb.errors import ConflictError, InputError, KbError, NotFound

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


def _size_category(n: int) -> str:
    """The Hub's size_categories label: n<1K, 1K<n<10K, ..., 100B<n<1T, n>1T."""
    units = ["", "K", "M", "B", "T"]
    labels = [f"{10 ** (e % 3)}{units[e // 3]}" for e in range(3, 13)]  # 1K, 10K, 100K, 1M, ..., 1T
    if n < 1000:
        return "n<1K"
    for low, high, bound in zip(labels, labels[1:], range(4, 13)):
        if n < 10**bound:
            return f"{low}<n<{high}"
    return "n>1T"


def hub_feature(name: str, t) -> dict[str, Any]:
    """An Arrow field as the Hub's YAML `dataset_info.features` entry (the `datasets` library's form)."""
    return {"name": name, **_hub_type(_plain(t))}


def _hub_type(t) -> dict[str, Any]:
    import pyarrow as pa

    if pa.types.is_struct(t):
        return {"struct": [hub_feature(f.name, f.type) for f in t]}
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = _hub_type(t.value_type)
        return {"list": inner["dtype"] if "dtype" in inner else inner.get("struct", inner)}
    if pa.types.is_floating(t):
        return {"dtype": f"float{t.bit_width}"}
    return {"dtype": str(t)}  # int64, bool, string, ...


def front_matter(spec: ExportSpec, version_id: str, row_counts: dict, folder: Path) -> dict:
    """The card's YAML metadata: what the Hub shows and what `load_dataset(DIR)` reads (FOLDER holds the
    written data files, whose sizes `dataset_info` states)."""
    from huggingface_hub import DatasetCardData

    by_format: dict[str, list[dict]] = {}
    for part in spec.parts:
        for fmt in ("parquet", "jsonl"):
            if fmt in spec.formats:
                by_format.setdefault(fmt, []).append(
                    {"split": part.split, "path": data_file(spec, part, fmt)}
                )
    # One config: the Hub builds every config of a repo with one loader, so the JSONL copy beside
    # Parquet is a plain file (`load_dataset("json", data_files=...)`), not a second config.
    main = "parquet" if "parquet" in by_format else "jsonl"
    total = sum(row_counts.values())
    extra: dict[str, Any] = {}
    if main == "parquet":  # JSONL records may hold free-form JSON (templates' steps): let the loader infer
        extra["dataset_info"] = dataset_info(spec, row_counts, folder)
    card = DatasetCardData(
        pretty_name=f"reasonflux {spec.kind} {version_id}",
        license=spec.license,
        language=["en"],
        task_categories=list(spec.task_categories),
        size_categories=[_size_category(total)],
        tags=["reasonflux", "math", "reasoning", "thought-templates", *spec.tags],
        configs=[{"config_name": "default", "data_files": by_format[main]}],
        **extra,
    )
    return card.to_dict()


def dataset_info(spec: ExportSpec, row_counts: dict, folder: Path) -> dict[str, Any]:
    """`dataset_info` as the `datasets` library writes it when it pushes a dataset (`DatasetInfo`'s YAML
    form): features, and per split the rows and the bytes of its Arrow table (`num_bytes`, what loading
    prepares); `download_size` is the Parquet files' bytes, `dataset_size` the splits' total."""
    import pyarrow.parquet as pq

    splits = []
    for part in spec.parts:
        path = folder / data_file(spec, part, "parquet")
        # The table as readers get it back (plain types, no dictionaries), not the one in memory here.
        splits.append(
            {
                "name": part.split,
                "num_bytes": pq.read_table(path).nbytes,
                "num_examples": row_counts[part.split],
            }
        )
    download = sum((folder / data_file(spec, p, "parquet")).stat().st_size for p in spec.parts)
    return {
        "config_name": "default",
        "features": [hub_feature(f.name, f.type) for f in spec.parts[0].table.schema],
        "splits": splits,
        "download_size": download,
        "dataset_size": sum(s["num_bytes"] for s in splits),
    }


def _card(
    spec: ExportSpec, version_id: str, revision: str, row_counts: dict, hashes: dict, folder: Path
) -> str:
    import yaml

    meta = yaml.safe_dump(
        front_matter(spec, version_id, row_counts, folder), sort_keys=False, allow_unicode=True, width=1000
    )
    lines = [
        "---",
        meta.rstrip("\n"),
        "---",
        "",
        f"# {version_id}",
        "",
        spec.card_intro.strip(),
        "",
        f"- kind: `{spec.kind}`",
        f"- licence: `{spec.license}` {spec.license_note}".rstrip(),
        f"- schema revision: `{revision}`",
        f"- selection: `{canonical_json(spec.params)}`",
        "",
    ]
    for part in spec.parts:
        lines += [
            f"## {part.name} ({row_counts[part.split]} rows)",
            "",
            part.description.strip(),
            "",
            "| column | type |",
            "| --- | --- |",
        ]
        lines += [f"| `{f.name}` | `{_plain(f.type)}` |" for f in part.table.schema]
        lines.append("")
    if spec.usage:
        lines += ["## Usage", "", spec.usage.strip(), ""]
    lines += [
        "## Loading",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'ds = load_dataset("path/to/this/folder")  # or the Hub repo it was pushed to',
        "```",
        "",
    ]
    lines += ["## Files", "", "| file | sha256 |", "| --- | --- |"]
    lines += [f"| `{name}` | `{digest}` |" for name, digest in sorted(hashes.items())]
    lines += [
        "",
        (
            "Check them with `reasonflux datasets verify DIR` (this card may be edited freely: "
            "verification then warns, the data stays verified)."
        ),
        "",
    ]
    return "\n".join(lines)


def write_dataset(db: Database, spec: ExportSpec, out_dir: str | Path, *, run_id: int | None = None) -> dict:
    """Write the folder, record the version (or reuse its row), return the manifest.

    The row commits only once the complete folder is in place: a write that fails (a full disk, a folder that
    cannot be replaced) leaves no row pointing at a folder without its files.
    """
    from kb import migrate

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
                _card(spec, version_id, revision, row_counts, data_hashes, tmp), encoding="utf-8"
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


def verify(db: Database | None, folder: str | Path) -> dict[str, Any]:
    """Re-hash every data file; compare with manifest.json and with the KB's row. Raises VerificationError.

    A changed, missing or unlisted data file is an error. The card (README.md) is documentation that
    people edit: a changed or missing card, and unlisted files outside the data folders, come back
    as `warnings` in the result.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise VerificationError(f"{manifest_path}: no manifest; not a dataset version folder")
    manifest = read_manifest(manifest_path)
    files = dict(manifest.get("files") or {})
    card = dict(manifest.get("card") or {})
    if CARD in files:  # format 1 listed the card among the files
        card[CARD] = files.pop(CARD)
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise VerificationError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise VerificationError(f"{path}: sha256 {actual} does not match the manifest ({digest})")
    card_warnings = _card_warnings(folder, card)
    warnings = card_warnings + _unlisted(folder, set(files) | set(card))
    result = {
        "id": manifest.get("id"),
        "kind": manifest.get("kind"),
        "files": len(files),
        "manifest": "ok",
        "card": "edited" if card_warnings else "ok",
        "warnings": warnings,
    }
    if db is not None:
        _check_against_kb(db, folder, manifest_path, manifest, files)
        result["kb"] = "ok"
    return result


def _card_warnings(folder: Path, card: dict[str, str]) -> list[str]:
    out = []
    for name, digest in sorted(card.items()):
        path = folder / name
        if not path.is_file():
            out.append(f"{path}: the dataset card is missing (the data files are intact)")
        elif sha256_file(path) != digest:
            out.append(f"{path}: the dataset card was edited since the export (the data files are intact)")
    return out


def _unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Files the manifest does not list: an error inside a data folder (loaders would read them as
    data), a warning elsewhere (one per top-level entry, e.g. a .git folder of a Hub clone)."""
    data_dirs = {Path(n).parts[0] for n in listed if len(Path(n).parts) > 1}
    warned, out = set(), []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel in listed or rel == MANIFEST:
            continue
        top = rel.split("/")[0]
        if top in data_dirs:
            raise VerificationError(f"{path}: not listed in the manifest (loaders would read it as data)")
        if top not in warned:
            warned.add(top)
            out.append(f"{folder / top}: not listed in the manifest (not part of the dataset)")
    return out


def _check_against_kb(db: Database, folder: Path, manifest_path: Path, manifest: dict, files: dict) -> None:
    try:
        row = get_version(db, str(manifest.get("id")))
    except NotFound:
        raise VerificationError(
            f"{manifest_path}: dataset version {manifest.get('id')} is not recorded in this knowledge base"
        ) from None
    if row["id"] != manifest.get("id"):
        raise VerificationError(
            f"{manifest_path}: id {manifest.get('id')} is not recorded in this knowledge base"
        )
    for key in ("kind", "params", "schema_revision", "row_counts"):
        recorded, stated = row[key], manifest.get(key)
        if key == "row_counts":  # the same counts, whichever vocabulary wrote them
            recorded, stated = (
                normalized_row_counts(row["kind"], recorded),
                normalized_row_counts(row["kind"], stated),
            )
        if recorded != stated:
            raise VerificationError(
                f"{manifest_path}: {key} differs from the knowledge base's record of {row['id']}"
            )
    recorded = {k: v for k, v in (row["files"] or {}).items() if k != CARD}
    if set(recorded) != set(files):
        raise VerificationError(
            f"{manifest_path}: files differ from the knowledge base's record of {row['id']}"
        )
    for name, digest in sorted(recorded.items()):
        if files.get(name) != digest:
            raise VerificationError(f"{folder / name}: hash differs from the knowledge base's record")


# ---- publishing ------------------------------------------------------------------------------------------


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    endpoint: str | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Upload a verified dataset version folder to the Hub dataset repo REPO_ID (created if needed).

    Needs a token (`hf auth login`, or HF_TOKEN); HF_ENDPOINT (read now, not at import) points it at
    another Hub-compatible server.
    """
    import huggingface_hub

    folder = Path(folder)
    checked = verify(None, folder)
    token = token or huggingface_hub.get_token()
    if not token:
        raise KbError(
            "no Hugging Face token: run `hf auth login` or set HF_TOKEN, then "
            f"`reasonflux datasets push {folder} {repo_id}`"
        )
    api = huggingface_hub.HfApi(endpoint=endpoint or os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="dataset",
            commit_message=f"reasonflux dataset version {checked['id']}",
        )
    except (huggingface_hub.errors.HfHubHTTPError, OSError, ValueError) as e:
        raise KbError(f"pushing {folder} to {repo_id} failed: {e}") from None
    return {"id": checked["id"], "repo": repo_id, "commit": commit.oid, "url": commit.commit_url}
