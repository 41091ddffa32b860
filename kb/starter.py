"""The starter template library that ships inside the package.

A fresh install has no data at hand, so the package carries its own small library
(kb/data/starter_templates.jsonl, written for this project) covering the MATH
subjects. Each line is one template: the fields of TemplateSpec plus "status".
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from kb.template_jsonl import read_template_jsonl
from kb.templates import TemplateSpec

STARTER_FILE = "starter_templates.jsonl"


def starter_library_path() -> Path:
    """Where the packaged starter library lives (inside the installed `kb` package)."""
    return Path(str(resources.files("kb") / "data" / STARTER_FILE))


def load_starter_entries(path: Path | None = None) -> list[tuple[TemplateSpec, str]]:
    """(spec, status) for every template in the library; errors name the file, line and field.
    Read by the one template JSONL reader (kb.template_jsonl); a line without a status is active."""
    return [(t.spec, t.status or "active") for t in read_template_jsonl(path or starter_library_path())]


def load_starter_specs(path: Path | None = None) -> list[TemplateSpec]:
    """The starter library as TemplateSpecs, in file order."""
    return [spec for spec, _ in load_starter_entries(path)]
