"""The template interchange format: JSONL, one `template_record` per line (TemplateSpec.to_dict() plus
"status"). `reasonflux export templates` writes it; the import stage and the packaged starter library
read it through `read_template_jsonl`, the one reader, so both refuse the same bad lines the same way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kb.errors import InputError
from kb.models import Template, TemplateVersion
from kb.storable import parse_json, too_deep
from kb.template_fields import STATUSES
from kb.templates import TemplateSpec, check_storable, spec_of


@dataclass
class TemplateLine:
    """One template read from a JSONL file."""

    spec: TemplateSpec
    status: str | None  # None: the line names none (an import then leaves an existing status alone)
    line: int  # 1-based, for messages and provenance


def template_record(template: Template, version: TemplateVersion) -> dict[str, Any]:
    """One JSONL line of the template interchange format: TemplateSpec.to_dict() plus "status"."""
    return {**spec_of(template, version).to_dict(), "status": template.status}


def read_template_jsonl(path: str | Path) -> list[TemplateLine]:
    """Every template in the file, validated; errors name the file, the line and the field."""
    file = str(path)
    lines: list[TemplateLine] = []
    first_line: dict[str, int] = {}
    for lineno, line in _numbered_lines(path):
        where = f"line {lineno}"
        data = _parse_line(line, file=file, where=where)
        status = data.pop("status", None)
        if status is not None and status not in STATUSES:
            raise InputError(f"must be one of {', '.join(STATUSES)}", file=file, record=where, field="status")
        key = data.get("key")
        spec = TemplateSpec.from_dict(data, file=file, record=where)
        if key is not None and key != spec.key:
            raise InputError(
                f"{key!r} does not match category/section/name ({spec.key!r})",
                file=file,
                record=where,
                field="key",
            )
        # A repeated key would silently turn into a second version of one template.
        if spec.key in first_line:
            raise InputError(
                f"template {spec.key!r} already appears on line {first_line[spec.key]}",
                file=file,
                record=where,
                field="key",
            )
        first_line[spec.key] = lineno
        check_storable(spec, file=file, record=where)
        lines.append(TemplateLine(spec, status, lineno))
    return lines


def _parse_line(line: str, *, file: str, where: str) -> dict[str, Any]:
    try:
        data = parse_json(line)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg} (column {e.colno})", file=file, record=where) from None
    except RecursionError:
        raise too_deep(file=file, record=where) from None
    except ValueError as e:
        raise InputError(f"malformed JSON: {e}", file=file, record=where) from None
    if not isinstance(data, dict):
        raise InputError(f"must be a JSON object (got {type(data).__name__})", file=file, record=where)
    return data


def _numbered_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their 1-based numbers; unreadable files and bad UTF-8 are InputErrors."""
    file, lineno = str(path), 0
    try:
        with Path(path).open(encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, start=1):
                if line.strip():
                    yield lineno, line
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=file) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", file=file, record=f"line {lineno + 1}") from None
