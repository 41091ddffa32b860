"""Strict parsers for the navigator's two outputs: the plan and the evaluation of a step.

The navigator answers with one JSON object (bare, or in one ```json fence). Anything
else is a ParseError whose message says exactly what is wrong, so the solver can show
it to the navigator and ask again a bounded number of times. Nothing is ever evaluated.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_OUTPUT_CHARS = 40_000
VERDICTS = ("continue", "adjust", "stop")
OPS = ("change", "insert", "remove")

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


class ParseError(ValueError):
    """The output does not follow the format; the message is shown to the model on retry."""


@dataclass
class PlannedStep:
    text: str
    template: str  # the template name or search phrase the navigator asked for


@dataclass
class Plan:
    abstraction: str
    steps: list[PlannedStep]


@dataclass
class Change:
    op: str  # change | insert | remove
    step: int  # 1-based step number in the trajectory as shown; for insert, the step it goes after
    text: str | None = None
    template: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            k: v
            for k, v in {
                "op": self.op,
                "step": self.step,
                "text": self.text,
                "template": self.template,
            }.items()
            if v is not None
        }


@dataclass
class Evaluation:
    verdict: str
    reason: str
    changes: list[Change] = field(default_factory=list)
    answer: str | None = None


def extract_json_object(text: str | None) -> dict[str, Any]:
    """The one JSON object in TEXT: the whole text, or the single fenced block."""
    if text is None or not text.strip():
        raise ParseError("the reply is empty")
    if len(text) > MAX_OUTPUT_CHARS:
        raise ParseError(f"the reply is longer than {MAX_OUTPUT_CHARS} characters")
    body = text.strip()
    fences = _FENCE.findall(body)
    if len(fences) > 1:
        raise ParseError("the reply has more than one code block; give exactly one JSON object")
    if fences:
        body = fences[0].strip()
    try:
        value = json.loads(body)
    except json.JSONDecodeError as e:
        raise ParseError(
            f"the reply is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(value, dict):
        raise ParseError(f"the reply must be a JSON object, not {type(value).__name__}")
    return value


def _string(obj: dict, name: str, where: str, *, required: bool = True, max_len: int = 4000) -> str | None:
    value = obj.get(name)
    if value is None:
        if required:
            raise ParseError(f"{where}: field {name!r} is required")
        return None
    if not isinstance(value, str):
        raise ParseError(f"{where}: field {name!r} must be a string")
    value = value.strip()
    if required and not value:
        raise ParseError(f"{where}: field {name!r} must not be empty")
    if len(value) > max_len:
        raise ParseError(f"{where}: field {name!r} is longer than {max_len} characters")
    return value


def _no_unknown(obj: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        raise ParseError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")


def _step(obj: Any, where: str) -> PlannedStep:
    if not isinstance(obj, dict):
        raise ParseError(f"{where} must be an object with 'step' and 'template'")
    _no_unknown(obj, {"step", "template"}, where)
    return PlannedStep(
        text=_string(obj, "step", where), template=_string(obj, "template", where, max_len=300)
    )


def parse_plan(text: str | None, *, max_steps: int) -> Plan:
    """{"abstraction": str, "trajectory": [{"step": str, "template": str}, ...]} with 1..max_steps steps."""
    obj = extract_json_object(text)
    _no_unknown(obj, {"abstraction", "trajectory"}, "plan")
    abstraction = _string(obj, "abstraction", "plan")
    steps = obj.get("trajectory")
    if not isinstance(steps, list) or not steps:
        raise ParseError("plan: field 'trajectory' must be a non-empty list of steps")
    if len(steps) > max_steps:
        raise ParseError(f"plan: the trajectory has {len(steps)} steps; at most {max_steps} are allowed")
    return Plan(
        abstraction=abstraction, steps=[_step(s, f"trajectory[{i + 1}]") for i, s in enumerate(steps)]
    )


def _change(obj: Any, where: str, *, current: int, n_steps: int) -> Change:
    if not isinstance(obj, dict):
        raise ParseError(f"{where} must be an object")
    op = obj.get("op")
    if op not in OPS:
        raise ParseError(f"{where}: field 'op' must be one of {', '.join(OPS)}")
    step = obj.get("step")
    if not isinstance(step, int) or isinstance(step, bool):
        raise ParseError(f"{where}: field 'step' must be a step number")
    if not current <= step <= n_steps:
        done = f"; steps before {current} are done and cannot change" if current > 1 else ""
        raise ParseError(f"{where}: step {step} is out of range {current}..{n_steps}{done}")
    if op == "remove":
        _no_unknown(obj, {"op", "step"}, where)
        return Change(op, step)
    if op == "change":
        _no_unknown(obj, {"op", "step", "template", "text"}, where)
        return Change(
            op,
            step,
            text=_string(obj, "text", where, required=False),
            template=_string(obj, "template", where, max_len=300),
        )
    _no_unknown(obj, {"op", "step", "template", "text"}, where)
    return Change(
        op, step, text=_string(obj, "text", where), template=_string(obj, "template", where, max_len=300)
    )


def parse_evaluation(text: str | None, *, current: int, n_steps: int, max_steps: int) -> Evaluation:
    """The navigator's judgement of step CURRENT (1-based) of an N_STEPS trajectory.

    {"verdict": "continue" | "adjust" | "stop", "reason": str,
     "changes": [{"op": "change", "step": k, "template": str, "text"?: str} |
                 {"op": "insert", "step": k, "text": str, "template": str} |   # inserted after step k
                 {"op": "remove", "step": k}],                                  # only with "adjust"
     "answer": str}                                                             # optional, with "stop"
    Step numbers refer to the trajectory as shown; done steps (before CURRENT) cannot change.
    """
    obj = extract_json_object(text)
    _no_unknown(obj, {"verdict", "reason", "changes", "answer"}, "evaluation")
    verdict = obj.get("verdict")
    if verdict not in VERDICTS:
        raise ParseError(f"evaluation: field 'verdict' must be one of {', '.join(VERDICTS)}")
    reason = _string(obj, "reason", "evaluation")
    raw_changes = obj.get("changes", [])
    if not isinstance(raw_changes, list):
        raise ParseError("evaluation: field 'changes' must be a list")
    if verdict == "adjust" and not raw_changes:
        raise ParseError("evaluation: verdict 'adjust' needs at least one change")
    if verdict != "adjust" and raw_changes:
        raise ParseError(f"evaluation: verdict {verdict!r} takes no changes; use 'adjust'")
    changes = [
        _change(c, f"changes[{i + 1}]", current=current, n_steps=n_steps) for i, c in enumerate(raw_changes)
    ]
    touched = [c.step for c in changes if c.op in ("change", "remove")]
    if len(touched) != len(set(touched)):
        raise ParseError("evaluation: a step is changed or removed more than once")
    removed = {c.step for c in changes if c.op == "remove"}
    if any(c.op == "insert" and c.step in removed and c.step != current for c in changes):
        raise ParseError("evaluation: cannot insert after a step that is removed")
    final_len = n_steps + sum(c.op == "insert" for c in changes) - len(removed)
    if final_len > max_steps:
        raise ParseError(
            f"evaluation: the trajectory would have {final_len} steps; at most {max_steps} are allowed"
        )
    answer = _string(obj, "answer", "evaluation", required=False, max_len=1000) if verdict == "stop" else None
    if verdict != "stop" and obj.get("answer") not in (None, ""):
        raise ParseError("evaluation: field 'answer' is only allowed with verdict 'stop'")
    return Evaluation(verdict=verdict, reason=reason, changes=changes, answer=answer or None)
