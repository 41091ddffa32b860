"""The navigator contract: the one definition of what the navigator is asked and what it answers.

ReasonFlux's navigator plans a trajectory of thought templates and judges each step's result. Every
stage that talks to a navigator or trains one uses this module and nothing else:

- sampling (`pipelines.sample`) sends `plan_messages` and parses replies with `parse_plan`;
- the DPO and SFT exports (`pipelines.export`) rebuild, for a stored trajectory, the exact `plan_messages`
  it was sampled with and `render_plan` as the reply, so a navigator trained on them is asked at solve
  time exactly what it was trained to answer;
- the solver, the HTTP service and eval (`serve.solver`) send `plan_messages` / `evaluation_messages`
  and parse with `parse_plan` / `parse_evaluation`, re-asking with `retry_messages`;
- backends that support structured output receive `plan_schema` / `evaluation_schema` with the request.

`CONTRACT_HASH` identifies this contract's texts and schemas; sampling records it as each trajectory's
`sampling.prompt_hash`, and exports refuse to mix trajectories of different contracts unless asked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from json.encoder import encode_basestring as _json_string
from typing import Any

from pipelines.llm.base import Message
from pipelines.parsing import ParseError, extract_json_object, validate

MAX_STEPS = 8  # the default bound on a trajectory, shown in the plan prompt
HINT_SCOPE_CHARS = 200  # of a hinted template's application scope shown in the plan prompt
MAX_RESULT_CHARS = 1500  # of each earlier step's result shown again, so prompts stay bounded
MAX_TEXT = 4000
MAX_TEMPLATE = 300

SYSTEM = (
    "You are the navigator of a hierarchical math reasoner (ReasonFlux). You never solve the problem "
    "yourself: you abstract it, plan a trajectory of steps, each guided by a thought template from a "
    "template library, and judge the result of each step. You reply with exactly one JSON object and "
    "nothing else."
)

PLAN_FORMAT = (
    'Reply with one JSON object: {"abstraction": "<the problem in general terms: what is given, what is '
    'asked, which area of mathematics>", "trajectory": [{"step": "<what this step does>", "template": '
    '"<the name of the thought template to use>"}, ...]} with between 1 and {max_steps} steps.'
)

EVALUATION_FORMAT = (
    'Reply with one JSON object: {"verdict": "continue" | "adjust" | "stop", "reason": "<why>", '
    '"changes": [...], "answer": "<final answer>"}.\n'
    '- "continue": the step is right; go on with the next step. No changes.\n'
    '- "stop": the problem is solved; give the final answer in "answer". No changes.\n'
    '- "adjust": change the plan with one or more changes, step numbers as shown above, steps before '
    "step {current} are done and cannot change:\n"
    '  {"op": "change", "step": k, "template": "<another template or search phrase>", "text": "<new '
    'step text, optional>"} (changing step {current} redoes it with another template);\n'
    '  {"op": "insert", "step": k, "text": "<new step>", "template": "<template>"} (inserted after step k);\n'
    '  {"op": "remove", "step": k}.\n'
    "The trajectory may have at most {max_steps} steps."
)

HINTS_HEADING = "Thought templates that may help:"
RETRY = (
    "Your reply could not be used: {error}. Reply again with only the JSON object in the format asked for."
)

VERDICTS = ("continue", "adjust", "stop")
OPS = ("change", "insert", "remove")


def _contract_hash() -> str:
    texts = [
        SYSTEM,
        PLAN_FORMAT,
        EVALUATION_FORMAT,
        HINTS_HEADING,
        RETRY,
        str(HINT_SCOPE_CHARS),
        json.dumps(plan_schema(MAX_STEPS), sort_keys=True),
    ]
    return "nav-" + hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:12]


# ---- the plan -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hint:
    """A template shown to the navigator before it plans: its version (what a trajectory records), name
    and application scope."""

    version_id: int | None
    name: str
    scope: str = ""

    @classmethod
    def from_hit(cls, hit: Any) -> Hint:
        get = hit.get if isinstance(hit, dict) else lambda k: getattr(hit, k, None)
        return cls(get("version_id"), get("name"), get("application_scope") or get("description") or "")


@dataclass
class PlanStep:
    text: str  # what this step does
    template: str  # the template's name (or a search phrase for one)

    @property
    def query(self) -> str:
        """What retrieval looks for: the named template, then what the step does."""
        return f"{self.template}. {self.text}"


@dataclass
class Plan:
    abstraction: str
    steps: list[PlanStep] = field(default_factory=list)


def plan_schema(max_steps: int = MAX_STEPS) -> dict[str, Any]:
    """The JSON schema of a plan reply (validated here; passed to backends that enforce it)."""
    step = {
        "type": "object",
        "additionalProperties": False,
        "required": ["step", "template"],
        "properties": {
            "step": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "template": {"type": "string", "minLength": 1, "maxLength": MAX_TEMPLATE},
        },
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["abstraction", "trajectory"],
        "properties": {
            "abstraction": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT},
            "trajectory": {"type": "array", "minItems": 1, "maxItems": max_steps, "items": step},
        },
    }


def format_hints(hints: Sequence[Hint]) -> str:
    if not hints:
        return ""
    lines = [f"- {h.name}: {' '.join((h.scope or '').split())[:HINT_SCOPE_CHARS]}" for h in hints]
    return HINTS_HEADING + "\n" + "\n".join(lines) + "\n\n"


def plan_messages(problem: str, *, hints: Sequence[Hint] = (), max_steps: int = MAX_STEPS) -> list[Message]:
    """What the navigator is sent to plan PROBLEM, optionally with retrieved templates as HINTS."""
    user = (
        f"Problem:\n{problem.strip()}\n\n{format_hints(hints)}"
        f"{PLAN_FORMAT.replace('{max_steps}', str(max_steps))}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def parse_plan(text: str | None, *, max_steps: int = MAX_STEPS) -> Plan:
    """{"abstraction": str, "trajectory": [{"step": str, "template": str}, ...]} with 1..MAX_STEPS steps."""
    obj = extract_json_object(text)
    steps = obj.get("trajectory")
    if isinstance(steps, list) and len(steps) > max_steps:
        raise ParseError(f"plan: the trajectory has {len(steps)} steps; at most {max_steps} are allowed")
    validate(obj, plan_schema(max_steps), "plan")
    plan = Plan(
        abstraction=obj["abstraction"].strip(),
        steps=[PlanStep(text=s["step"].strip(), template=" ".join(s["template"].split())) for s in steps],
    )
    if not plan.abstraction or any(not s.text or not s.template for s in plan.steps):
        raise ParseError("plan: abstraction, step and template must not be blank")
    return plan


def recorded(hints: Sequence[Hint] = (), max_steps: int = MAX_STEPS) -> dict[str, Any]:
    """What a trajectory's `sampling` records of the request it answers, so exports rebuild it exactly:
    the contract hash, the hinted template versions and the step bound."""
    return {"prompt_hash": CONTRACT_HASH, "hints": [h.version_id for h in hints], "max_steps": max_steps}


def render_plan(abstraction: str, steps: Iterable[tuple[str, str]]) -> str:
    """The reply that stands for a plan: what `parse_plan` reads back into the same plan.

    STEPS are (step text, template name). Exports render stored trajectories with it, so a DPO `chosen`
    or an SFT plan example is exactly a reply the solver accepts.

    The text is `json.dumps(..., ensure_ascii=False)` of {"abstraction", "trajectory": [{"step", "template"}]},
    assembled around json's own string encoder: a 10^6-pair DPO export renders half a million replies, and
    json.dumps spends most of its time building an encoder per call. Anything but strings goes to json.dumps.
    """
    steps = list(steps)
    try:
        body = ", ".join(
            ['{"step": ' + _json_string(t) + ', "template": ' + _json_string(n) + "}" for t, n in steps]
        )
        return '{"abstraction": ' + _json_string(abstraction) + ', "trajectory": [' + body + "]}"
    except TypeError:
        return json.dumps(
            {"abstraction": abstraction, "trajectory": [{"step": t, "template": n} for t, n in steps]},
            ensure_ascii=False,
        )


# ---- evaluation of a step --------------------------------------------------------------------------------


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


def evaluation_schema(max_steps: int = MAX_STEPS) -> dict[str, Any]:
    """The JSON schema of an evaluation reply; step ranges and verdict rules are checked by the parser."""
    text = {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}
    template = {"type": "string", "minLength": 1, "maxLength": MAX_TEMPLATE}
    step_no = {"type": "integer", "minimum": 1, "maximum": max_steps}
    change = {
        "anyOf": [
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["op", "step", "template"],
                "properties": {
                    "op": {"const": "change"},
                    "step": step_no,
                    "template": template,
                    "text": text,
                },
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["op", "step", "text", "template"],
                "properties": {
                    "op": {"const": "insert"},
                    "step": step_no,
                    "template": template,
                    "text": text,
                },
            },
            {
                "type": "object",
                "additionalProperties": False,
                "required": ["op", "step"],
                "properties": {"op": {"const": "remove"}, "step": step_no},
            },
        ]
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["verdict", "reason"],
        "properties": {
            "verdict": {"enum": list(VERDICTS)},
            "reason": text,
            "changes": {"type": "array", "items": change, "maxItems": max_steps},
            "answer": {"type": "string", "maxLength": 1000},
        },
    }


def _clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def done_block(done: Sequence[tuple[str, str]]) -> str:
    """The accepted steps so far, (step text, result), as both roles see them."""
    if not done:
        return "Results so far: none yet."
    parts = [f"Step {i} ({step}):\n{_clip(result)}" for i, (step, result) in enumerate(done, 1)]
    return "Results so far:\n" + "\n\n".join(parts)


def _trajectory_block(steps: Sequence[tuple[str, str]], current: int) -> str:
    lines = []
    for i, (text, template) in enumerate(steps, 1):
        mark = "done" if i < current else ("current" if i == current else "planned")
        lines.append(f"{i}. [{mark}] {text} (template: {template})")
    return "\n".join(lines)


def evaluation_messages(
    problem: str,
    abstraction: str,
    steps: Sequence[tuple[str, str]],
    current: int,
    template_name: str | None,
    result: str,
    done: Sequence[tuple[str, str]],
    *,
    max_steps: int = MAX_STEPS,
) -> list[Message]:
    """Judge the RESULT of step CURRENT (1-based) of STEPS = [(text, template)]."""
    fmt = EVALUATION_FORMAT.replace("{current}", str(current)).replace("{max_steps}", str(max_steps))
    user = (
        f"Problem:\n{problem}\n\nAbstraction: {abstraction}\n\n"
        f"Trajectory:\n{_trajectory_block(steps, current)}\n\n"
        f"{done_block(done)}\n\nResult of step {current} (template used: {template_name or 'none'}):\n"
        f"{_clip(result, 4 * MAX_RESULT_CHARS)}\n\n{fmt}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _change(obj: dict[str, Any], where: str, *, current: int, n_steps: int) -> Change:
    step = obj["step"]
    if not current <= step <= n_steps:
        done = f"; steps before {current} are done and cannot change" if current > 1 else ""
        raise ParseError(f"{where}: step {step} is out of range {current}..{n_steps}{done}")
    text, template = obj.get("text"), obj.get("template")
    return Change(
        obj["op"],
        step,
        text=text.strip() if text else None,
        template=" ".join(template.split()) if template else None,
    )


def parse_evaluation(
    text: str | None, *, current: int, n_steps: int, max_steps: int = MAX_STEPS
) -> Evaluation:
    """The navigator's judgement of step CURRENT (1-based) of an N_STEPS trajectory (see EVALUATION_FORMAT)."""
    obj = extract_json_object(text)
    if obj.get("verdict") not in VERDICTS:
        raise ParseError(f"evaluation: field 'verdict' must be one of {', '.join(VERDICTS)}")
    validate(obj, evaluation_schema(max_steps), "evaluation")
    verdict, raw_changes = obj["verdict"], obj.get("changes", [])
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
    answer = (obj.get("answer") or "").strip() or None
    if verdict != "stop" and answer:
        raise ParseError("evaluation: field 'answer' is only allowed with verdict 'stop'")
    reason = obj["reason"].strip()
    if not reason:
        raise ParseError("evaluation: field 'reason' must not be blank")
    return Evaluation(verdict=verdict, reason=reason, changes=changes, answer=answer)


def render_evaluation(
    verdict: str, reason: str, *, changes: Sequence[Change] = (), answer: str | None = None
) -> str:
    """The reply that stands for an evaluation (what `parse_evaluation` reads back)."""
    obj: dict[str, Any] = {"verdict": verdict, "reason": reason}
    if changes:
        obj["changes"] = [c.to_dict() for c in changes]
    if answer is not None:
        obj["answer"] = answer
    return json.dumps(obj, ensure_ascii=False)


def retry_messages(messages: list[Message], bad_output: str, error: str) -> list[Message]:
    """The conversation so far plus the unusable reply and what was wrong with it (the prompt stays bounded:
    MESSAGES is always the original request, never an earlier retry)."""
    return [
        *messages,
        {"role": "assistant", "content": _clip(bad_output or "", 4000)},
        {"role": "user", "content": RETRY.format(error=error)},
    ]


def request_kind(messages: Sequence[Message]) -> str | None:
    """'plan' or 'evaluation' for a request built here (None otherwise): lets a scripted navigator answer."""
    if not messages or messages[0].get("content") != SYSTEM:
        return None
    user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
    return "evaluation" if "\nTrajectory:\n" in user else "plan"


CONTRACT_HASH = _contract_hash()
