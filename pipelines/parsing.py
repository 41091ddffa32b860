"""The one reply parser: a JSON object located in model output, validated by a JSON schema.

Model output is never evaluated as code (no eval, no ast.literal_eval); it is read with `json` only, and
the first JSON object in the text (inside a Markdown fence if there is one) is the answer. Anything else
is a ParseError with a reason that names what was wrong: the stages record it with the raw output, and
the solver shows it to the navigator when it asks again. The navigator's replies are parsed by
`pipelines.navigator` on top of this; mined templates by `parse_template` below.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

MAX_OUTPUT_CHARS = 100_000  # bound the work on a runaway generation
MAX_JSON_STARTS = 50  # at most this many '{' tried as the start of the object

TEMPLATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "type", "tags", "description", "scope", "steps", "example"],
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 120},
        "type": {"type": "string", "minLength": 1, "maxLength": 60},
        "tags": {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": 60},
            "minItems": 1,
            "maxItems": 12,
        },
        "description": {"type": "string", "minLength": 10, "maxLength": 4000},
        "scope": {"type": "string", "minLength": 10, "maxLength": 4000},
        "steps": {
            "type": "array",
            "items": {"type": "string", "minLength": 3, "maxLength": 2000},
            "minItems": 1,
            "maxItems": 15,
        },
        "example": {
            "type": "object",
            "additionalProperties": False,
            "required": ["problem", "solution"],
            "properties": {
                "problem": {"type": "string", "minLength": 1},
                "solution": {"type": "string", "minLength": 1},
                "answer": {"type": "string"},
            },
        },
    },
}


class ParseError(ValueError):
    """Output that does not follow the format; `reason` says what is wrong (shown to the model on retry)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def extract_json_object(text: str | None) -> dict[str, Any]:
    """The first JSON object in TEXT (inside a ```json fence if there is one)."""
    if not text or not text.strip():
        raise ParseError("empty output")
    text = text[:MAX_OUTPUT_CHARS]
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        starts = [m.start() for m in re.finditer(r"\{", chunk)][:MAX_JSON_STARTS]
        for start in starts:
            try:
                value, _ = decoder.raw_decode(chunk, start)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    if "{" not in text:
        raise ParseError("no JSON object in the output")
    raise ParseError("invalid JSON: no complete, well-formed object found")


def validate(value: Any, schema: dict[str, Any], what: str = "reply") -> None:
    """VALUE against SCHEMA; the first violation (by path) becomes a ParseError naming where it is."""
    import jsonschema  # 0.2 s to import: not for commands that only show their help

    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ParseError(f"{what}: schema violation at {where}: {e.message[:300]}")


@dataclass
class MinedTemplate:
    name: str
    template_type: str
    tags: list[str]
    description: str
    application_scope: str
    steps: list[str]
    example_problem: str
    example_solution: str
    example_answer: str | None = None

    def content(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "template_type": self.template_type,
            "tags": self.tags,
            "description": self.description,
            "application_scope": self.application_scope,
            "steps": self.steps,
            "example_problem": self.example_problem,
            "example_solution": self.example_solution,
            "example_answer": self.example_answer,
        }


def parse_template(text: str | None) -> MinedTemplate:
    """A mined template in our schema (name, type, tags, description, scope, steps, example)."""
    data = extract_json_object(text)
    validate(data, TEMPLATE_SCHEMA, "template")
    tags = list(dict.fromkeys(t.strip() for t in data["tags"] if t.strip()))
    ex = data["example"]
    return MinedTemplate(
        name=" ".join(data["name"].split()),
        template_type=data["type"].strip(),
        tags=tags,
        description=data["description"].strip(),
        application_scope=data["scope"].strip(),
        steps=[s.strip() for s in data["steps"]],
        example_problem=ex["problem"].strip(),
        example_solution=ex["solution"].strip(),
        example_answer=(ex.get("answer") or "").strip() or None,
    )
