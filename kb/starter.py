"""The starter template library that ships inside the package.

A fresh install has no data at hand, so the package carries its own small library
(kb/data/starter_templates.jsonl, written for this project) covering the MATH
subjects. Each line is one template: the fields of TemplateSpec plus "status".
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from kb.errors import InputError
from kb.templates import STATUSES, TemplateSpec

STARTER_FILE = "starter_templates.jsonl"


def starter_library_path() -> Path:
    """Where the packaged starter library lives (inside the installed `kb` package)."""
    return Path(str(resources.files("kb") / "data" / STARTER_FILE))


def load_starter_entries(path: Path | None = None) -> list[tuple[TemplateSpec, str]]:
    """(spec, status) for every template in the library; errors name the file, line and field."""
    path = path or starter_library_path()
    entries: list[tuple[TemplateSpec, str]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = {"file": str(path), "record": f"line {line_no}"}
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON ({e.msg} at column {e.colno})", **where) from None
            if not isinstance(data, dict):
                raise InputError("must be a JSON object", **where)
            status = data.pop("status", "active")
            if status not in STATUSES:
                raise InputError(f"must be one of {', '.join(STATUSES)}", **where, field="status")
            spec = TemplateSpec.from_dict(data, **where)
            # A repeated key would silently turn into a second version of one template.
            if spec.key in seen:
                raise InputError(
                    f"duplicate key {spec.key!r} (first on line {seen[spec.key]})", **where, field="name"
                )
            seen[spec.key] = line_no
            entries.append((spec, status))
    return entries


def load_starter_specs(path: Path | None = None) -> list[TemplateSpec]:
    """The starter library as TemplateSpecs, in file order."""
    return [spec for spec, _ in load_starter_entries(path)]
