"""The one deterministic backend for tests, demos and benchmarks, registered like any real one.

Responses come from rules: the first rule whose regex matches the conversation answers; a rule's reply is
a string, a list consumed in order (the last one repeats), or a callable(messages) -> str. Without rules
or a default it is the play-along (`PlayAlong`): a navigator that speaks the navigator contract (a fixed
plan, `continue` then `stop` with the answer) and an inference model that writes step results and
`\\boxed{}` answers, so the whole solve path runs without a model. A fixed simulated latency makes
concurrency measurable.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipelines import navigator, prompts
from pipelines.llm.base import ChatRequest, Completion, Message
from pipelines.llm.registry import register_backend

Reply = str | list[str] | Callable[[list[Message]], str]


class ScriptedBackend:
    name = "scripted"

    def __init__(
        self,
        rules: list[tuple[str, Reply]] | None = None,
        default: Reply | None = None,
        latency_s: float = 0.0,
        model: str = "scripted",
        sampling_extras: Sequence[str] = (),
        **_: Any,
    ):
        self.model = model
        self.sampling_extras = tuple(sampling_extras)  # which vLLM extras it claims to apply (for tests)
        self.rules = [(re.compile(p, re.DOTALL), r) for p, r in (rules or [])]
        self.default = default
        self.latency_s = latency_s
        self.calls: list[ChatRequest] = []
        self._counters: dict[int, int] = {}
        self._lock = threading.Lock()

    def _reply(self, idx: int, reply: Reply, messages: list[Message]) -> str:
        if callable(reply):
            return reply(messages)
        if isinstance(reply, list):
            with self._lock:
                n = self._counters.get(idx, 0)
                self._counters[idx] = n + 1
            return reply[min(n, len(reply) - 1)]
        return reply

    def _answer(self, messages: list[Message]) -> str:
        haystack = "\n".join(m.get("content", "") for m in messages)
        for idx, (pattern, reply) in enumerate(self.rules):
            if pattern.search(haystack):
                return self._reply(idx, reply, messages)
        if self.default is None:
            raise LookupError(f"scripted backend has no rule for: {haystack[-200:]!r}")
        return self._reply(-1, self.default, messages)

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        if self.latency_s:
            time.sleep(self.latency_s)  # one batch costs one latency, like a batched server
        out = []
        for req in requests:
            with self._lock:
                self.calls.append(req)
            t0 = time.perf_counter()
            try:
                text, err = self._answer(req.messages), None
            except LookupError as e:
                text, err = "", str(e)
            out.append(
                Completion(
                    text=text,
                    prompt_tokens=sum(len(m.get("content", "").split()) for m in req.messages),
                    completion_tokens=len(text.split()),
                    latency_ms=(time.perf_counter() - t0) * 1000 + self.latency_s * 1000,
                    error=err,
                )
            )
        return out


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


# Without rules the scripted backend is the play-along model above, configured by its options.
@register_backend(
    "scripted", options=ScriptedBackend, also=("answers", "default_answer", "steps", "template_from_problem")
)
def _factory(**options: Any) -> ScriptedBackend:
    if not {"rules", "default"} & set(options):
        return play_along_backend(**options)
    return ScriptedBackend(**options)
