"""What PostgreSQL cannot store, checked before anything is written, so bad input gets a located error.

- NUL characters: text and jsonb cannot hold U+0000 (in values or object keys).
- Lone surrogates (JSON's "\ud800" without its pair): not Unicode text, so not UTF-8 either.
- Integers beyond the column's range (our integer columns are 32-bit).
- Nesting deeper than MAX_DEPTH: Python's parser and our own walks recurse; nothing real is that deep.
- Text too long for the generated full-text vector (a tsvector holds at most 1 MB): measured in the bytes
  the database stores (UTF-8), over each field and over all the fields the one vector is built from.
"""

from __future__ import annotations

import json
from typing import Any

from kb.errors import InputError

MAX_DEPTH = 64
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
# The template's full-text vector is built from these fields; PostgreSQL refuses a tsvector over 1 MB
# (bytes: "string is too long for tsvector"), and long real text makes a vector of about a third to a half
# its UTF-8 size. Characters are no measure: one can take four bytes.
MAX_INDEXED_BYTES = 1_000_000


def check_value(
    value: Any, *, file: str | None = None, record: str | None = None, field: str | None = None
) -> None:
    """Refuse a NUL anywhere in VALUE (strings, keys, nested) or nesting deeper than MAX_DEPTH."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        where = {"file": file, "record": record, "field": f"{field or ''}{path}" or None}
        if depth > MAX_DEPTH:
            raise InputError(f"is nested more than {MAX_DEPTH} levels deep", **where)
        if isinstance(item, str):
            _check_text(item, "contains", where)
        elif isinstance(item, dict):
            for k, v in item.items():
                if isinstance(k, str):
                    _check_text(k, "has a key with", where)
                stack.append((v, f"{path}.{k}", depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))


def text_problem(text: str) -> str | None:
    """What PostgreSQL cannot store in this string (a NUL, a lone surrogate), or None."""
    if "\x00" in text:
        return "a NUL character (\\u0000), which PostgreSQL cannot store"
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (
            f"a lone surrogate (\\u{ord(text[e.start]):04x} at character {e.start + 1}), which is not "
            "Unicode text; a character outside the BMP is written as a surrogate pair"
        )
    return None


def _check_text(text: str, what: str, where: dict[str, str | None]) -> None:
    problem = text_problem(text)
    if problem:
        raise InputError(f"{what} {problem}", **where)


def check_int32(
    value: int | None, *, file: str | None = None, record: str | None = None, field: str | None = None
) -> None:
    if value is not None and not INT32_MIN <= value <= INT32_MAX:
        raise InputError(
            f"{value} is out of range (at most {INT32_MAX})", file=file, record=record, field=field
        )


def check_indexed_length(
    values: dict[str, Any], *, file: str | None = None, record: str | None = None
) -> None:
    """Fields that feed one full-text vector: refuse any over MAX_INDEXED_BYTES as stored (UTF-8), or all of
    them together over it, naming the (largest) field."""
    sizes = {name: _stored_bytes(value) for name, value in values.items()}
    for name, size in sizes.items():
        if size > MAX_INDEXED_BYTES:
            raise InputError(
                f"is {size:,} bytes as UTF-8; at most {MAX_INDEXED_BYTES:,} fit the full-text index",
                file=file,
                record=record,
                field=name,
            )
    total = sum(sizes.values())
    if total > MAX_INDEXED_BYTES:
        largest = max(sizes, key=lambda n: sizes[n])
        raise InputError(
            f"with {', '.join(n for n in sizes if n != largest)} makes {total:,} bytes of indexed text "
            f"as UTF-8; at most {MAX_INDEXED_BYTES:,} fit the full-text index",
            file=file,
            record=record,
            field=largest,
        )


def _stored_bytes(value: Any) -> int:
    if value is None:
        return 0
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class _Duplicated(dict):
    """An object of the input that named a key more than once (json.loads keeps the last silently)."""

    duplicate: str = ""


def parse_json(text: str | bytes) -> Any:
    """json.loads, refusing an object that names a key twice: ValueError naming the key and where it is
    (`steps[0].text`), which the readers report as malformed JSON with their file and record."""
    seen = False

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal seen
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out and not seen:
                seen = True
                twice = _Duplicated(items)
                twice.duplicate = key
                return twice
            out[key] = value
        return out

    data = json.loads(text, object_pairs_hook=pairs)
    if seen:
        path, key = _find_duplicate(data)
        raise ValueError(
            f"duplicate key {key!r}{f' in {path}' if path else ''}; each key may appear once in "
            "an object (the last one would silently win)"
        )
    return data


def _find_duplicate(data: Any) -> tuple[str, str]:
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _Duplicated):
            return path, value.duplicate
        if isinstance(value, dict):
            stack.extend((v, f"{path}.{k}".lstrip(".")) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(value))
    return "", ""


def too_deep(*, file: str | None = None, record: str | None = None) -> InputError:
    """The parser's RecursionError on absurdly nested input, as a located InputError."""
    return InputError("is nested too deeply to parse", file=file, record=record)
