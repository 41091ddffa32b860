"""The ReasonFlux-v1 library layout, mapped to and from TemplateSpec.

The official library is chapter -> section -> list of templates, with all its drift (type spellings,
example shapes, escaped line breaks). `from_v1` normalises the mapped fields and keeps every source
value the mapping does not reproduce exactly verbatim in `extra["reasonflux_v1"]`, so
`to_v1(from_v1(record)) == record` for every record. Reading the file is the import stage's
(pipelines.import_templates.read_reasonflux_v1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from kb import templates as T
from kb.errors import InputError

V1_EXTRA = "reasonflux_v1"  # extra[V1_EXTRA] = {"original": {field: value}, "absent": [field, ...]}
V1_FIELDS = (
    "template_name",
    "template_type",
    "knowledge_tag",
    "description",
    "application_scenario",
    "reason_flow",
    "example_application",
)


TYPE_CANON = {
    "problem solving method": "Problem-Solving Method",
    "solving method": "Problem-Solving Method",
    "solution method": "Problem-Solving Method",
    "property theorem": "Property Theorem",
    "knowledge application": "Knowledge Application",
    "second level conclusion": "Secondary Conclusion",
    "secondary conclusion": "Secondary Conclusion",
}
TYPE_PREFIX_CANON = {"important formula": "Important Formulas and Theorems"}

# example_application dict keys, by role, best first (keys compared lower-case, spaces -> '_')
PROBLEM_KEYS = ("example_problem", "problem", "example_question", "question", "example", "title")
SOLUTION_KEYS = (
    "solution_steps",
    "solution_process",
    "solving_process",
    "solution",
    "application_steps",
    "steps",
    "analysis_process",
    "analysis",
    "explanation",
    "proof",
)
ANSWER_KEYS = ("answer", "final_answer", "result", "conclusion")

# Free-text examples: where the worked solution starts, and the answer line.
# Labels start with a capital: "solution: x=3" inside a worked solution is not a label.
_SOLUTION_LABEL = re.compile(
    r"(?:Solution|Solving|Application|Analysis|Proof)(?:\s+(?:[Ss]teps?|[Pp]rocess|of [Tt]emplate))?"
    r"|Steps? (?:of applying the template|of Template Application|to solve)"
)
_LABEL_END = re.compile(r"\s*[:：]")
_ANSWER_LABEL = re.compile(r"(?:^|(?<=\s)|(?<=\\n))(?:Final\s+)?Answer\s*[:：]", re.IGNORECASE)
_EXAMPLE_LABEL = re.compile(r"^\s*(?:【Example】|Example\b[^:：\n\\]{0,40}?[:：])\s*", re.IGNORECASE)
# The library escapes many line breaks as a literal backslash-n (sometimes two backslashes). A literal
# "\n" before a lowercase letter is left alone: it is LaTeX (\neq, \nu, \nabla, ...), not a break.
_ESCAPED_BREAK = re.compile(r"\\{1,2}n(?![a-z])")
_EDGE = re.compile(r"^(?:\s|\\{1,2}n(?![a-z]))+|(?:\s|\\{1,2}n(?![a-z]))+$")
_MIN_PROBLEM_CHARS = 20


def unescape_breaks(text: str) -> str:
    return _ESCAPED_BREAK.sub("\n", text)


def _trim(text: str) -> str:
    return _EDGE.sub("", text)


def canonical_type(raw: str | None) -> str | None:
    """One spelling per template type ('Problem Solving Method', 'Problem-solving Methods', ... -> one)."""
    if raw is None:
        return None
    norm = re.sub(r"[\s_\-]+", " ", raw.strip().lower())
    norm = re.sub(r"s$", "", norm)
    if norm in TYPE_CANON:
        return TYPE_CANON[norm]
    for prefix, canon in TYPE_PREFIX_CANON.items():
        if norm.startswith(prefix):
            return canon
    return raw.strip() or None


def split_example_text(text: str) -> tuple[str | None, str | None, str | None]:
    """(problem, solution, answer) from a free-text worked example; best effort, never drops text
    from the solution (which runs from the solution label, or the second line, to the end)."""
    start = _solution_start(text)
    if start is None:
        return None, _trim(text) or None, None
    problem = _trim(_EXAMPLE_LABEL.sub("", text[:start], count=1))
    solution = _trim(text[start:])
    answers = list(_ANSWER_LABEL.finditer(text, start))
    answer = _trim(text[answers[0].end() :]) if len(answers) == 1 else None
    return problem or None, solution or None, answer or None


def _solution_start(text: str) -> int | None:
    """Where the worked solution begins: the first solution label with a real problem before it,
    else the first line break after a problem statement."""
    for m in _SOLUTION_LABEL.finditer(text):
        before = text[: m.start()]
        if not _LABEL_END.match(text, m.end()) or (
            before and not re.search(r"(?:\s|\\n|[.:：)】])$", before)
        ):
            continue
        if len(_trim(_EXAMPLE_LABEL.sub("", before, count=1))) >= _MIN_PROBLEM_CHARS:
            return m.start()
    first_break = re.search(r"\n|\\{1,2}n(?![a-z])", text)
    if (
        first_break
        and len(_trim(_EXAMPLE_LABEL.sub("", text[: first_break.start()], count=1))) >= _MIN_PROBLEM_CHARS
    ):
        return first_break.end()
    return None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return json.dumps(value, ensure_ascii=False)


def _example_fields(example: Any) -> tuple[str | None, str | None, str | None]:
    if example is None:
        return None, None, None
    if isinstance(example, str):
        return split_example_text(example)
    if isinstance(example, list):  # several worked examples: the first one is mapped
        return _example_fields(example[0]) if example else (None, None, None)
    by_role = {re.sub(r"[\s\-]+", "_", str(k).strip().lower()): v for k, v in example.items()}

    def pick(keys: Sequence[str]) -> str | None:
        return next((_as_text(by_role[k]) for k in keys if by_role.get(k) not in (None, "", [])), None)

    problem = pick(PROBLEM_KEYS)
    return (
        _EXAMPLE_LABEL.sub("", problem, count=1) or None if problem else None,
        pick(SOLUTION_KEYS),
        pick(ANSWER_KEYS),
    )


def _str_list(value: Any, *, file: str, record: str, name: str, items: str = "strings") -> list:
    """A list field; a lone string is taken as a one-item list (the original stays in extra)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise InputError(
            f"must be a list of {items} (got {type(value).__name__})", file=file, record=record, field=name
        )
    if items == "strings" and not all(isinstance(v, str) for v in value):
        bad = next(i for i, v in enumerate(value) if not isinstance(v, str))
        raise InputError(
            f"item [{bad}] must be a string (got {type(value[bad]).__name__})",
            file=file,
            record=record,
            field=name,
        )
    return value


def _opt_str(raw: dict, name: str, *, file: str, record: str) -> str | None:
    value = raw.get(name)
    if value is not None and not isinstance(value, str):
        raise InputError(
            f"must be a string (got {type(value).__name__})", file=file, record=record, field=name
        )
    return value


def from_v1(raw: Any, *, chapter: str, section: str | None, file: str, record: str) -> T.TemplateSpec:
    """Map one ReasonFlux-v1 template to a TemplateSpec; what the mapping changes is kept in extra."""
    if not isinstance(raw, dict):
        raise InputError(f"must be an object (got {type(raw).__name__})", file=file, record=record)
    name = raw.get("template_name")
    if not isinstance(name, str) or not name.strip():
        raise InputError(
            "is required and must be a non-empty string", file=file, record=record, field="template_name"
        )
    template_type = _opt_str(raw, "template_type", file=file, record=record)
    description = _opt_str(raw, "description", file=file, record=record)
    scope = raw.get("application_scenario")
    if isinstance(scope, list):
        scope = "\n".join(_str_list(scope, file=file, record=record, name="application_scenario"))
    elif scope is not None and not isinstance(scope, str):
        raise InputError(
            f"must be a string or a list of strings (got {type(scope).__name__})",
            file=file,
            record=record,
            field="application_scenario",
        )
    example = raw.get("example_application")
    if example is not None and not isinstance(example, (str, dict, list)):
        raise InputError(
            f"must be text or an object (got {type(example).__name__})",
            file=file,
            record=record,
            field="example_application",
        )
    problem, solution, answer = _example_fields(example)
    steps = _str_list(raw.get("reason_flow"), file=file, record=record, name="reason_flow", items="steps")
    spec = T.TemplateSpec(
        name=name.strip(),
        category=chapter,
        section=section,
        template_type=canonical_type(template_type),
        tags=[
            t.strip()
            for t in _str_list(raw.get("knowledge_tag"), file=file, record=record, name="knowledge_tag")
        ],
        description=unescape_breaks(description or ""),
        application_scope=unescape_breaks(scope or ""),
        steps=[unescape_breaks(s) if isinstance(s, str) else s for s in steps],
        example_problem=_opt_unescape(problem),
        example_solution=_opt_unescape(solution),
        example_answer=_opt_unescape(answer),
    )
    return keep_original(spec, raw)


def _opt_unescape(text: str | None) -> str | None:
    return unescape_breaks(text) if text is not None else None


def keep_original(spec: T.TemplateSpec, raw: dict) -> T.TemplateSpec:
    """Record in extra every source value that to_v1(spec) would not give back exactly."""
    bare = replace(spec, extra={k: v for k, v in spec.extra.items() if k != V1_EXTRA})
    rebuilt = to_v1(bare)
    original = {k: v for k, v in raw.items() if k not in rebuilt or rebuilt[k] != v}
    absent = [k for k in V1_FIELDS if k not in raw]
    spec.extra = (
        {**bare.extra, V1_EXTRA: {"original": original, "absent": absent}}
        if original or absent
        else bare.extra
    )
    return spec


def to_v1(spec: T.TemplateSpec) -> dict[str, Any]:
    """The ReasonFlux-v1 record a spec came from (exactly, for specs made by from_v1)."""
    if spec.example_problem is None and spec.example_answer is None:
        example: Any = spec.example_solution
    else:
        example = {
            k: v
            for k, v in (
                ("example_problem", spec.example_problem),
                ("solution", spec.example_solution),
                ("answer", spec.example_answer),
            )
            if v is not None
        }
    record: dict[str, Any] = {
        "template_name": spec.name,
        "template_type": spec.template_type,
        "knowledge_tag": list(spec.tags),
        "description": spec.description,
        "application_scenario": spec.application_scope,
        "reason_flow": list(spec.steps),
        "example_application": example,
    }
    kept = spec.extra.get(V1_EXTRA) or {}
    record.update(kept.get("original", {}))
    for name in kept.get("absent", []):
        record.pop(name, None)
    return record
