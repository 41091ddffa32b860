"""What PostgreSQL cannot store, checked before anything is written, so bad input gets a located error.

- NUL characters: text and jsonb cannot hold U+0000 (in values or object keys).
- Integers beyond the column's range (our integer columns are 32-bit).
- Nesting deeper than MAX_DEPTH: Python's parser and our own walks recurse; nothing real is that deep.
- Text too long for the generated full-text vector (a tsvector holds at most 1 MB).
"""

from __future__ import annotations

import json
from typing import Any

from kb.errors import InputError

MAX_DEPTH = 64
INT32_MIN, INT32_MAX = -(2 ** 31), 2 ** 31 - 1
# The template's full-text vector is built from these fields; PostgreSQL refuses a tsvector over 1 MB,
# and long real text makes a vector of about a third to a half its size.
MAX_INDEXED_CHARS = 1_000_000


def check_value(value: Any, *, file: str | None = None, record: str | None = None, field: str | None = None) -> None:
    """Refuse a NUL anywhere in VALUE (strings, keys, nested) or nesting deeper than MAX_DEPTH."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        where = {"file": file, "record": record, "field": f"{field or ''}{path}" or None}
        if depth > MAX_DEPTH:
            raise InputError(f"is nested more than {MAX_DEPTH} levels deep", **where)
        if isinstance(item, str):
            if "\x00" in item:
                raise InputError("contains a NUL character (\\u0000), which PostgreSQL cannot store", **where)
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str) and "\x00" in k:
                    raise InputError("has a key with a NUL character (\\u0000), which PostgreSQL cannot store",
                                     **where)
                stack.append((v, f"{path}.{k}", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))


def check_int32(value: int | None, *, file: str | None = None, record: str | None = None,
                field: str | None = None) -> None:
    if value is not None and not INT32_MIN <= value <= INT32_MAX:
        raise InputError(f"{value} is out of range (at most {INT32_MAX})", file=file, record=record, field=field)


def check_indexed_length(values: dict[str, Any], *, file: str | None = None, record: str | None = None) -> None:
    """Fields that feed a full-text vector: refuse any over MAX_INDEXED_CHARS, naming it."""
    for name, value in values.items():
        size = len(value) if isinstance(value, str) else len(json.dumps(value, ensure_ascii=False)) \
            if value is not None else 0
        if size > MAX_INDEXED_CHARS:
            raise InputError(f"is {size:,} characters; at most {MAX_INDEXED_CHARS:,} fit the full-text index",
                             file=file, record=record, field=name)


def too_deep(*, file: str | None = None, record: str | None = None) -> InputError:
    """The parser's RecursionError on absurdly nested input, as a located InputError."""
    return InputError("is nested too deeply to parse", file=file, record=record)
