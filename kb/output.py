"""The one output helper: tables for people, JSON / JSONL / CSV for scripts.

Every command that prints records calls `emit`; `output_options` adds the
matching flags, so `--json` means the same thing everywhere. Text meant for a terminal goes through
`terminal_safe`: stored text is data, and a control character in it (ESC starts sequences that set the
window title or clear the screen) must not act on the user's terminal.
"""

from __future__ import annotations

import csv
import datetime as _dt
import decimal
import json
import re
import sys
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import click

from kb.secrets import scrub

FORMATS = ("table", "json", "jsonl", "csv")
# C0 controls but tab and newline, DEL and the C1 controls (U+0080-U+009F; U+009B is a one-character CSI).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """text with every control character a terminal would act on shown as a visible escape (\\x1b)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def output_options(fn=None, *, csv_ok: bool = True):
    """Click decorator adding --json/--jsonl(/--csv); the command receives `fmt`."""

    def decorate(f):
        choices = FORMATS if csv_ok else FORMATS[:3]
        f = click.option(
            "--format",
            "fmt",
            type=click.Choice(choices),
            default="table",
            show_default=True,
            help="Output format.",
        )(f)
        flags = [("--json", "json"), ("--jsonl", "jsonl")] + ([("--csv", "csv")] if csv_ok else [])
        for flag, value in reversed(flags):
            f = click.option(flag, "fmt", flag_value=value, help=f"Same as --format {value}.")(f)
        return f

    return decorate(fn) if fn is not None else decorate


def to_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if hasattr(value, "model_dump"):
        return to_jsonable(value.model_dump())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    return value


def dumps(value: Any, *, indent: int | None = None) -> str:
    return json.dumps(to_jsonable(value), ensure_ascii=False, indent=indent, sort_keys=False)


def emit(
    rows: Iterable[Mapping[str, Any]] | Mapping[str, Any],
    fmt: str = "table",
    *,
    columns: Sequence[str] | None = None,
    title: str | None = None,
    file=None,
) -> None:
    """Print records. A single mapping prints as one object (json) or a key/value table."""
    out = file or sys.stdout
    single = isinstance(rows, Mapping)
    records = [scrub(dict(rows))] if single else [scrub(dict(r)) for r in rows]  # nothing printed leaks a key
    if fmt == "json":
        out.write(dumps(records[0] if single else records, indent=2) + "\n")
        return
    if fmt == "jsonl":
        for r in records:
            out.write(dumps(r) + "\n")
        return
    cols = list(columns) if columns else _columns(records)
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        tty = _isatty(out)  # CSV into a file keeps the data exact; on a terminal it is read, not parsed
        writer.writerow([terminal_safe(c) if tty else c for c in cols])
        for r in records:
            writer.writerow([_cell(r.get(c), csv_mode=True, safe=tty) for c in cols])
        return
    if single:
        _table([{"field": c, "value": records[0].get(c)} for c in cols], ["field", "value"], title, out)
    else:
        _table(records, cols, title, out)


def _columns(records: list[dict]) -> list[str]:
    cols: list[str] = []
    for r in records:
        for k in r:
            if k not in cols:
                cols.append(k)
    return cols


def _isatty(out) -> bool:
    return bool(getattr(out, "isatty", None) and out.isatty())


def _cell(value: Any, csv_mode: bool = False, width: int = 80, safe: bool = True) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if not csv_mode else repr(value)
    if isinstance(value, (dict, list, tuple)):
        text = dumps(value)
    else:
        text = str(to_jsonable(value))
    if safe:
        text = terminal_safe(text)
    if not csv_mode and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def _table(records: list[dict], cols: list[str], title: str | None, out) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=Text(terminal_safe(title)) if title else None, show_lines=False, header_style="bold")
    for c in cols:
        table.add_column(Text(terminal_safe(str(c))), overflow="fold")
    for r in records:
        table.add_row(*[Text(_cell(r.get(c))) for c in cols])  # Text: '[a,b]' is data, not rich markup
    console = Console(file=out, width=None if _isatty(out) else 200)
    if not records:
        console.print(Text(f"{terminal_safe(title) + ': ' if title else ''}no rows", style="dim"))
        return
    console.print(table)
