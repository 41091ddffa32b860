"""The prompts of every role but the navigator (whose requests are the navigator contract,
`pipelines.navigator`): mining, rollouts of a whole trajectory, one solver step, the single-call baseline,
and a solved problem's answer restated as JSON (the serving API's `response_format`).

The stage prompts (mine, inference) are a system text and a user text with `$placeholders`
(string.Template: JSON braces in a prompt need no escaping). A prompts directory (`[prompts] dir` in the
LLM config) may override them with files `<name>.system.txt` / `<name>.user.txt`; what a run used is
recorded as `prompt_hash`. The navigator contract is not overridable: it is what navigators are trained on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from string import Template
from typing import Any

from pipelines.llm.base import Message
from pipelines.navigator import done_block

BUILTIN: dict[str, dict[str, str]] = {
    "mine": {
        "system": (
            "You distil reusable thought templates from solved competition math problems. A thought template "
            "is a general, high-level method that applies to a whole family of problems, not this problem's "
            "specific numbers. Reply with ONE JSON object and nothing else."
        ),
        "user": (
            "Problem:\n$problem\n\nReference solution:\n$solution\n\nFinal answer: $answer\n\n"
            "Write the thought template this solution uses, as a JSON object with exactly these keys:\n"
            '{"name": "short name of the method", "type": "technique | theorem | formula | strategy", '
            '"tags": ["topic", "..."], "description": "what the method is and why it works", '
            '"scope": "when to apply it: the features of a problem that call for it", '
            '"steps": ["general step 1", "general step 2", "..."], '
            '"example": {"problem": "...", "solution": "...", "answer": "..."}}'
        ),
        "repair": (
            "Your reply could not be used: $error\nReply again with ONE JSON object with exactly the keys "
            "name, type, tags, description, scope, steps, example (problem, solution, answer), and nothing else."
        ),
    },
    "inference": {
        "system": (
            "You solve competition math problems by following a given plan step by step. Show your work "
            "briefly and put the final answer in \\boxed{}."
        ),
        "user": (
            "Problem:\n$problem\n\nPlan (problem type: $abstraction):\n$steps\n\n"
            "Follow the plan to solve the problem. End with the final answer in \\boxed{}."
        ),
    },
}


class Prompts:
    def __init__(self, directory: str | Path | None = None):
        self.texts = {name: dict(parts) for name, parts in BUILTIN.items()}
        if directory:
            for path in sorted(Path(directory).glob("*.txt")):
                name, _, part = path.stem.partition(".")
                if name in self.texts and part:
                    self.texts[name][part] = path.read_text()

    def hash(self, name: str) -> str:
        return hashlib.sha256(json.dumps(self.texts[name], sort_keys=True).encode()).hexdigest()[:12]

    def render(self, name: str, part: str, **values: Any) -> str:
        return Template(self.texts[name][part]).safe_substitute({k: str(v) for k, v in values.items()})

    def messages(self, name: str, **values: Any) -> list[Message]:
        return [
            {"role": "system", "content": self.render(name, "system", **values)},
            {"role": "user", "content": self.render(name, "user", **values)},
        ]

    def repair(self, name: str, messages: list[Message], raw_output: str, error: str) -> list[Message]:
        """The conversation so far plus the bad reply and what was wrong with it."""
        return [
            *messages,
            {"role": "assistant", "content": raw_output[:4000]},
            {"role": "user", "content": self.render(name, "repair", error=error)},
        ]


def format_steps(steps: list[dict[str, Any]]) -> str:
    """Trajectory steps with the content of the template each one is linked to."""
    out = []
    for i, s in enumerate(steps, 1):
        line = f"{i}. {s['text']}"
        if s.get("template_name"):
            line += f"\n   Template: {s['template_name']}"
            if s.get("template_steps"):
                line += "\n   " + "\n   ".join(f"- {t}" for t in s["template_steps"][:8])
        out.append(line)
    return "\n".join(out)


# ---- one solver step and the baseline ----------------------------------------------------------------------

MAX_TEMPLATE_STEPS = 12

STEP_SYSTEM = (
    "You are a careful mathematician. You carry out exactly one step of a plan, following the thought "
    "template you are given. Show the work of this step concisely. When this step yields the final "
    "answer to the problem, write it as \\boxed{answer}."
)


def format_template(hit: dict[str, Any] | None) -> str:
    if hit is None:
        return "No template in the library matches this step; use your own method."
    lines = [f"Template: {hit['name']}"]
    for label, key in (("Description", "description"), ("Applies when", "application_scope")):
        if hit.get(key):
            lines.append(f"{label}: {hit[key]}")
    steps = [
        s if isinstance(s, str) else json.dumps(s, ensure_ascii=False)
        for s in (hit.get("steps") or [])[:MAX_TEMPLATE_STEPS]
    ]
    if steps:
        lines.append("Reasoning flow:")
        lines.extend(f"  {i}. {s}" for i, s in enumerate(steps, 1))
    return "\n".join(lines)


def step_messages(
    problem: str, abstraction: str, done: list[tuple[str, str]], step: str, hit: dict[str, Any] | None
) -> list[Message]:
    """Carry out STEP with the template HIT, given DONE = [(step text, result)] of the accepted steps."""
    user = (
        f"Problem:\n{problem}\n\nAbstraction: {abstraction}\n\n{done_block(done)}\n\n"
        f"Your step now: {step}\n\n{format_template(hit)}\n\n"
        "Carry out this step only. If it gives the final answer to the problem, end with \\boxed{answer}."
    )
    return [{"role": "system", "content": STEP_SYSTEM}, {"role": "user", "content": user}]


FORMAT_SYSTEM = (
    "You restate the result of a solved math problem as one JSON object. Reply with the JSON object "
    "and nothing else."
)
FORMAT_ASK = "Reply with one JSON object that follows this JSON schema and carries the final answer:"


def format_messages(problem: str, steps: list[str], answer: str, schema: dict[str, Any]) -> list[Message]:
    """Restate a solved problem's ANSWER (reached through STEPS) as JSON following SCHEMA (the serving API's
    `response_format`)."""
    work = "\n\n".join(steps) or "(no written steps)"
    user = (
        f"Problem:\n{problem}\n\nSolution:\n{work}\n\nFinal answer: {answer}\n\n"
        f"{FORMAT_ASK}\n{json.dumps(schema, ensure_ascii=False)}"
    )
    return [{"role": "system", "content": FORMAT_SYSTEM}, {"role": "user", "content": user}]


def baseline_messages(problem: str) -> list[Message]:
    """The single-call baseline: the inference model alone, no templates, no navigator."""
    return [
        {"role": "system", "content": "You are a careful mathematician."},
        {
            "role": "user",
            "content": "Solve the problem. Reason step by step and put the final answer in "
            f"\\boxed{{}}.\n\nProblem:\n{problem}",
        },
    ]
