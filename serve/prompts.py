"""Prompts for the two roles of the solver.

The navigator plans (abstraction + template trajectory) and judges each step; the
inference LLM carries out one step with one retrieved template. Every prompt
states the exact reply format the parsers in serve.parsing accept.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from pipelines.llm.base import Message

MAX_TEMPLATE_STEPS = 12
MAX_RESULT_CHARS = 1500  # of each earlier step's result shown again, so prompts stay bounded

NAVIGATOR_SYSTEM = (
    "You are the navigator of a hierarchical math reasoner (ReasonFlux). You never solve the problem "
    "yourself: you abstract it, plan a trajectory of steps, each guided by a thought template from a "
    "template library, and judge the result of each step. You reply with exactly one JSON object and "
    "nothing else."
)

INFERENCE_SYSTEM = (
    "You are a careful mathematician. You carry out exactly one step of a plan, following the thought "
    "template you are given. Show the work of this step concisely. When this step yields the final "
    "answer to the problem, write it as \\boxed{answer}."
)

PLAN_FORMAT = (
    'Reply with one JSON object: {"abstraction": "<the problem in general terms: what is given, what is '
    'asked, which area of mathematics>", "trajectory": [{"step": "<what this step does>", "template": '
    '"<the name of the thought template to use, or a short search phrase for one>"}, ...]} '
    "with between 1 and {max_steps} steps."
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


def plan_messages(problem: str, *, max_steps: int) -> list[Message]:
    return [
        {"role": "system", "content": NAVIGATOR_SYSTEM},
        {
            "role": "user",
            "content": f"Problem:\n{problem}\n\n{PLAN_FORMAT.replace('{max_steps}', str(max_steps))}",
        },
    ]


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


def _clip(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _done_block(done: Sequence[tuple[str, str]]) -> str:
    if not done:
        return "Results so far: none yet."
    parts = [f"Step {i} ({step}):\n{_clip(result)}" for i, (step, result) in enumerate(done, 1)]
    return "Results so far:\n" + "\n\n".join(parts)


def instantiate_messages(
    problem: str, abstraction: str, done: Sequence[tuple[str, str]], step: str, hit: dict[str, Any] | None
) -> list[Message]:
    """Carry out STEP, with DONE = [(step text, result)] of the accepted steps before it."""
    user = (
        f"Problem:\n{problem}\n\nAbstraction: {abstraction}\n\n{_done_block(done)}\n\n"
        f"Your step now: {step}\n\n{format_template(hit)}\n\n"
        "Carry out this step only. If it gives the final answer to the problem, end with \\boxed{answer}."
    )
    return [{"role": "system", "content": INFERENCE_SYSTEM}, {"role": "user", "content": user}]


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
    max_steps: int,
) -> list[Message]:
    """Judge the RESULT of step CURRENT (1-based) of STEPS = [(text, template)]."""
    fmt = EVALUATION_FORMAT.replace("{current}", str(current)).replace("{max_steps}", str(max_steps))
    user = (
        f"Problem:\n{problem}\n\nAbstraction: {abstraction}\n\n"
        f"Trajectory:\n{_trajectory_block(steps, current)}\n\n"
        f"{_done_block(done)}\n\nResult of step {current} (template used: {template_name or 'none'}):\n"
        f"{_clip(result, 4 * MAX_RESULT_CHARS)}\n\n{fmt}"
    )
    return [{"role": "system", "content": NAVIGATOR_SYSTEM}, {"role": "user", "content": user}]


def retry_messages(messages: list[Message], bad_output: str, error: str) -> list[Message]:
    """The conversation so far plus the unparseable reply and what was wrong with it."""
    return [
        *messages,
        {"role": "assistant", "content": _clip(bad_output, 4000)},
        {
            "role": "user",
            "content": f"Your reply could not be used: {error}. Reply again with only the "
            "JSON object in the format asked for.",
        },
    ]


def baseline_messages(problem: str) -> list[Message]:
    """The single-call baseline: the inference model alone, no templates, no navigator."""
    return [
        {"role": "system", "content": "You are a careful mathematician."},
        {
            "role": "user",
            "content": f"Solve the problem. Reason step by step and put the final answer in "
            f"\\boxed{{}}.\n\nProblem:\n{problem}",
        },
    ]
