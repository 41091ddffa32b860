"""The LLaMA-Factory copy of an SFT or DPO export: data files plus the `dataset_info.json` entry.

LLaMA-Factory (which the ReasonFlux v1 release trains with) reads a dataset folder through
`dataset_info.json`: `llamafactory-cli train --dataset_dir DIR --dataset NAME --stage sft|dpo`.
Both kinds use its `sharegpt` format with OpenAI-style role/content messages mapped by `tags`:

- sft: `{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}`;
- dpo (`"ranking": true`): `{"messages": [system, user], "chosen": {assistant message},
  "rejected": {assistant message}}`. The system message is taken as the system prompt (`system_tag`),
  the rest must alternate user/assistant and end with the user for a ranking row.

The rows are converted from the Arrow tables the export already built (the same rows as its
Parquet data), so the two copies cannot disagree. Files land in llamafactory/, outside data/, so
the Hub loaders never mistake them for the Parquet split.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kb.datasets import ExportSpec
from kb.errors import InputError

FOLDER = "llamafactory"
DATASET_INFO = "dataset_info.json"
KINDS = ("sft", "dpo")
TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}


def dataset_name(kind: str) -> str:
    """The NAME given to `llamafactory-cli train --dataset NAME`."""
    return f"reasonflux_{kind}"


def dataset_info(kind: str) -> dict[str, Any]:
    """The `dataset_info.json` content for KIND (one entry, named by dataset_name)."""
    entry: dict[str, Any] = {"file_name": f"{FOLDER}/{dataset_name(kind)}.jsonl", "formatting": "sharegpt"}
    if kind == "dpo":
        entry |= {
            "ranking": True,
            "columns": {"messages": "messages", "chosen": "chosen", "rejected": "rejected"},
        }
    else:
        entry["columns"] = {"messages": "messages"}
    entry["tags"] = dict(TAGS)
    return {dataset_name(kind): entry}


def rows(kind: str, table) -> list[dict[str, Any]]:
    """LLaMA-Factory rows from an export's Arrow table (sft: `messages`; dpo: `prompt`/`chosen`/`rejected`)."""
    if kind == "sft":
        return [{"messages": _messages(m)} for m in table.column("messages").to_pylist()]
    prompts, chosen, rejected = (table.column(c).to_pylist() for c in ("prompt", "chosen", "rejected"))
    out = []
    for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected)):
        if len(c) != 1 or len(r) != 1:
            raise InputError(
                "chosen and rejected must hold one assistant message each",
                record=f"row {i}",
                field="chosen" if len(c) != 1 else "rejected",
            )
        out.append({"messages": _messages(p), "chosen": _messages(c)[0], "rejected": _messages(r)[0]})
    return out


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def writer(folder: Path, spec: ExportSpec) -> None:
    """kb.datasets extra-file writer: the JSONL rows and dataset_info.json, beside the Parquet data."""
    if spec.kind not in KINDS:
        raise InputError(f"the llamafactory format is for {' and '.join(KINDS)} exports", field="--format")
    path = folder / FOLDER / f"{dataset_name(spec.kind)}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for part in spec.parts:
            f.writelines(
                json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows(spec.kind, part.table)
            )
    (folder / DATASET_INFO).write_text(
        json.dumps(dataset_info(spec.kind), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
