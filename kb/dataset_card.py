"""A dataset version's card (README.md): the Hub's YAML front matter (licence, task categories, size category,
the data files as the default config, `dataset_info` as the `datasets` library writes it) and the description,
columns, usage and file hashes below it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from huggingface_hub import DatasetCardData

from kb.datasets import (
    ExportSpec,
    canonical_json,
    data_file,
)


def _plain(t):
    """A type as readers of the Parquet file see it (dictionary encoding is storage, not type)."""
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


def card_text(
    spec: ExportSpec, version_id: str, revision: str, row_counts: dict, hashes: dict, folder: Path
) -> str:
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
