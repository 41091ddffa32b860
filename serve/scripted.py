"""A scripted model that plays both solver roles, for demos, benchmarks and tests without a real model.

It reads which prompt it was given (plan, step, evaluation, baseline) and answers in the
format the solver expects: a fixed two-step plan, a short step result, `continue` for
every step but the last and `stop` with the answer on the last. Answers come from a
mapping of problem text to answer (anything else gets `default_answer`), so an eval
over problems with known answers grades as expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.llm.base import Message
from pipelines.llm.scripted import ScriptedBackend

DEFAULT_STEPS = (
    ("Identify what the problem asks and which quantities are known", "problem analysis"),
    ("Apply the method of the template to compute the requested quantity", "direct computation"),
)

_PROBLEM = re.compile(r"Problem:\n(.*?)\n\n", re.DOTALL)
_STEP_NO = re.compile(r"Result of step (\d+) ")
_N_STEPS = re.compile(r"^(\d+)\. \[", re.MULTILINE)


class SolverScript:
    """callable(messages) -> reply; stateless, so any number of sessions may share it."""

    def __init__(
        self,
        answers: Mapping[str, str] | None = None,
        *,
        default_answer: str = "0",
        steps: Sequence[tuple[str, str]] = DEFAULT_STEPS,
        template_from_problem: bool = True,
    ):
        self.template_from_problem = template_from_problem
        self.answers = {k.strip(): v for k, v in (answers or {}).items()}
        self._by_length = sorted(self.answers.items(), key=lambda kv: -len(kv[0]))
        self.default_answer = default_answer
        self.steps = list(steps)

    def answer_for(self, messages: list[Message]) -> str:
        text = _user_text(messages)
        # Problems may contain blank lines, so look the known ones up rather than cut the prompt apart.
        return next((a for p, a in self._by_length if f"Problem:\n{p}\n" in text), self.default_answer)

    def __call__(self, messages: list[Message]) -> str:
        last = messages[-1].get("content", "")
        user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        if "Your reply could not be used" in last:
            user = last  # a retry: fall through to the evaluation or plan reply below
        if '"trajectory"' in user and "Result of step" not in user:
            problem = _problem(messages)
            # The last step asks for the template closest to the problem itself, so retrieval is on topic.
            templates = [t for _, t in self.steps]
            if self.template_from_problem:
                templates[-1] = " ".join(problem.split()[:24]) or templates[-1]
            return json.dumps(
                {
                    "abstraction": "Find the requested quantity from the given conditions.",
                    "trajectory": [{"step": s, "template": t} for (s, _), t in zip(self.steps, templates)],
                }
            )
        if '"verdict"' in user:
            step = int(_STEP_NO.search(user).group(1)) if _STEP_NO.search(user) else 1
            n = len(_N_STEPS.findall(user)) or 1
            if step < n:
                return json.dumps({"verdict": "continue", "reason": "the step is correct and complete"})
            return json.dumps(
                {
                    "verdict": "stop",
                    "reason": "the last step gives the answer",
                    "answer": self.answer_for(messages),
                }
            )
        if "Your step now:" in user:
            if "end with \\boxed" in user and _is_last_step(user, len(self.steps)):
                answer = self.answer_for(messages)
                return f"Carrying out the step with the template. The result is \\boxed{{{answer}}}."
            return "Carrying out the step with the template: the known quantities are identified."
        # The single-call baseline and anything else: a direct answer.
        return f"Reasoning step by step. The final answer is \\boxed{{{self.answer_for(messages)}}}."


def _user_text(messages: list[Message]) -> str:
    return "\n".join(m.get("content", "") for m in messages if m.get("role") == "user") + "\n"


def _problem(messages: list[Message]) -> str:
    m = _PROBLEM.search(_user_text(messages) + "\n")
    return m.group(1).strip() if m else ""


def _is_last_step(user: str, n_steps: int) -> bool:
    return user.count("\nStep ") + 1 >= n_steps


def scripted_solver_backend(
    answers: Mapping[str, str] | None = None,
    *,
    latency_s: float = 0.0,
    default_answer: str = "0",
    model: str = "scripted-solver",
    steps: Sequence[tuple[str, str]] | None = None,
    template_from_problem: bool = True,
    **_: Any,
) -> ScriptedBackend:
    """A ScriptedBackend that plays navigator and inference (and the baseline) for any problem.

    STEPS: the plan's (step, template phrase) pairs; by default the last step's phrase is the problem
    itself (TEMPLATE_FROM_PROBLEM), so retrieval finds the template closest to the problem.
    """
    script = SolverScript(
        answers,
        default_answer=default_answer,
        steps=steps or DEFAULT_STEPS,
        template_from_problem=template_from_problem,
    )
    return ScriptedBackend(default=script, latency_s=latency_s, model=model)
