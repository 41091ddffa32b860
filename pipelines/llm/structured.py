"""Structured output: how a request's JSON schema constrains decoding, for every backend.

Two concerns live here, once:

- `decoding_schema(schema)`: the schema a backend hands to its decoder. Grammar engines expand bounded
  repetition into the grammar itself: `maxLength: 4000` becomes four thousand nested optional characters,
  which llama.cpp's grammar parser refuses ("number of rules ... exceeds sane defaults"; llama-cpp-python's
  server dies of it) and other engines compile slowly. So string bounds larger than SMALL_BOUND, patterns
  and formats, and item bounds larger than SMALL_BOUND are dropped for decoding; the parsers
  (`pipelines.navigator.parse_plan`, `parsing.parse_template`) still validate every reply against the
  full schema, so nothing the contract forbids gets through.
- the role option `structured_output` (`structured_mode`): `false` (no constraint), `true` (the backend's
  own way; an OpenAI-compatible server gets `json_schema` first and `json_object` once if it refuses that),
  `"json_schema"` (OpenAI, vLLM, sglang: `{"type": "json_schema", "json_schema": {"schema": ...}}`) or
  `"json_object"` (llama-cpp-python: `{"type": "json_object", "schema": ...}`). In-process backends
  (transformers, vllm) constrain by the schema whichever true value is given.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from kb.errors import InputError

DIALECTS = ("json_schema", "json_object")
AUTO = "auto"
SMALL_BOUND = 16  # repetition bounds up to this stay in the grammar (a non-blank string, at most 8 steps)

_DROPPED = ("pattern", "format")
_SMALL_ONLY = ("minLength", "maxLength", "minItems", "maxItems")


def structured_mode(value: Any, *, where: str = "structured_output") -> str | None:
    """None (off), AUTO (the backend's own way) or a dialect; anything else is an InputError."""
    if value is None or value is False:
        return None
    if value is True:
        return AUTO
    if isinstance(value, str) and value in DIALECTS:
        return value
    raise InputError(
        f"{where} must be true, false, {' or '.join(repr(d) for d in DIALECTS)}; got {value!r}",
        field="structured_output",
    )


def response_format(dialect: str, schema: dict[str, Any]) -> dict[str, Any]:
    """The `response_format` body field of DIALECT carrying SCHEMA (already a decoding schema)."""
    if dialect == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}
    if dialect == "json_object":
        return {"type": "json_object", "schema": schema}
    raise ValueError(f"unknown structured output dialect {dialect!r}")


def decoding_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """SCHEMA as decoders get it: no patterns or formats, no repetition bound above SMALL_BOUND."""
    return json.loads(_decoding_json(json.dumps(schema, sort_keys=True)))


@functools.lru_cache(maxsize=64)
def _decoding_json(schema_json: str) -> str:
    return json.dumps(_strip(json.loads(schema_json)), sort_keys=True)


def _strip(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in _DROPPED and isinstance(value, str):
            continue
        if key in _SMALL_ONLY and isinstance(value, int) and value > SMALL_BOUND:
            continue
        # `properties` maps names to schemas: a property called "pattern" is kept, its schema stripped.
        out[key] = {k: _strip(v) for k, v in value.items()} if key == "properties" else _strip(value)
    return out


def refuses_response_format(status: int, body: str) -> bool:
    """A server's answer that says it does not take this `response_format` (not a transient failure).

    llama-cpp-python answers a json_schema request with HTTP 500 and a validation message naming
    `response_format`; OpenAI and others answer 400/422 naming it."""
    return 400 <= status < 600 and status not in (408, 429, 502, 503, 504) and "response_format" in body
