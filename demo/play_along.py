"""The play-along model: the `scripted` backend spec without rules (backend `play-along`).

A navigator that speaks the navigator contract (a fixed plan, `continue` then `stop` with the answer) and
an inference model that writes step results and `\\boxed{}` answers, so the whole solve path runs without a
model: for the demo, the tests, the benchmarks and `--navigator scripted`. Registered through the
`reasonflux.backends` entry point, so the registry finds it by name and production code never imports it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pipelines import navigator, prompts
from pipelines.llm.base import Message
from pipelines.llm.registry import register_backend
from pipelines.llm.scripted import PLAY_ALONG, ScriptedBackend

DEFAULT_STEPS = (
    ("Identify what the problem asks and which quantities are known", "problem analysis"),
    ("Apply the method of the template to compute the requested quantity", "direct computation"),
)

_PROBLEM = re.compile(r"Problem:\n(.*?)\n\n", re.DOTALL)
_STEP_NO = re.compile(r"Result of step (\d+) ")
_N_STEPS = re.compile(r"^(\d+)\. \[", re.MULTILINE)


class PlayAlong:
    """callable(messages) -> reply for both solver roles and the baseline; stateless, so shareable.

    Answers come from a mapping of problem text to answer (anything else gets DEFAULT_ANSWER), so an eval
    over problems with known answers grades as expected. STEPS are the plan's (step, template phrase); with
    TEMPLATE_FROM_PROBLEM the last phrase is the problem's first words, so retrieval is on topic."""

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
        kind = navigator.request_kind(messages)
        if kind == "plan":
            templates = [t for _, t in self.steps]
            if self.template_from_problem:
                templates[-1] = " ".join(_problem(messages).split()[:24]) or templates[-1]
            return navigator.render_plan(
                "Find the requested quantity from the given conditions.",
                [(s, t) for (s, _), t in zip(self.steps, templates)],
            )
        if kind == "evaluation":
            user = next(m.get("content", "") for m in messages if m.get("role") == "user")
            step = int(m.group(1)) if (m := _STEP_NO.search(user)) else 1
            if step < (len(_N_STEPS.findall(user)) or 1):
                return navigator.render_evaluation("continue", "the step is correct and complete")
            return navigator.render_evaluation(
                "stop", "the last step gives the answer", answer=self.answer_for(messages)
            )
        user = next((m.get("content", "") for m in messages if m.get("role") == "user"), "")
        if prompts.FORMAT_ASK in user:  # the answer restated as JSON (the serving API's response_format)
            return json.dumps({"answer": self.answer_for(messages)})
        if "Your step now:" in user:
            if user.count("\nStep ") + 1 >= len(self.steps):
                return f"Carrying out the step with the template. The result is \\boxed{{{self.answer_for(messages)}}}."
            return "Carrying out the step with the template: the known quantities are identified."
        # The single-call baseline, a rollout, anything else: a direct answer.
        return f"Reasoning step by step. The final answer is \\boxed{{{self.answer_for(messages)}}}."


def _user_text(messages: list[Message]) -> str:
    return "\n".join(m.get("content", "") for m in messages if m.get("role") == "user") + "\n"


def _problem(messages: list[Message]) -> str:
    m = _PROBLEM.search(_user_text(messages) + "\n")
    return m.group(1).strip() if m else ""


def play_along_backend(
    answers: Mapping[str, str] | None = None,
    *,
    latency_s: float = 0.0,
    default_answer: str = "0",
    model: str = "scripted-solver",
    steps: Sequence[tuple[str, str]] | None = None,
    template_from_problem: bool = True,
    sampling_extras: Sequence[str] = (),
) -> ScriptedBackend:
    """A ScriptedBackend that plays navigator and inference (and the baseline) for any problem."""
    script = PlayAlong(
        answers,
        default_answer=default_answer,
        steps=steps or DEFAULT_STEPS,
        template_from_problem=template_from_problem,
    )
    return ScriptedBackend(default=script, latency_s=latency_s, model=model, sampling_extras=sampling_extras)


@register_backend(
    PLAY_ALONG, options=ScriptedBackend, also=("answers", "default_answer", "steps", "template_from_problem")
)
def _factory(**options: Any) -> ScriptedBackend:
    return play_along_backend(**options)
