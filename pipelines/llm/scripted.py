"""The one deterministic backend for tests, demos and benchmarks, registered like any real one.

Responses come from rules: the first rule whose regex matches the conversation answers; a rule's reply is
a string, a list consumed in order (the last one repeats), or a callable(messages) -> str. Without rules
or a default the `scripted` spec is the play-along model (backend `play-along`, `demo.play_along`: a
navigator and inference model that speak the navigator contract), found through the registry by name,
so this module does not import the demo package. A fixed simulated latency makes concurrency measurable.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kb.errors import KbError
from pipelines.llm.base import Backend, ChatRequest, Completion, Message
from pipelines.llm.registry import available_backends, create_backend, register_backend

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


# The `scripted` spec without rules is the play-along model, registered by the demo package (entry point
# `reasonflux.backends`): looked up by name, so production code does not import demo.
PLAY_ALONG = "play-along"


@register_backend(
    "scripted", options=ScriptedBackend, also=("answers", "default_answer", "steps", "template_from_problem")
)
def _factory(**options: Any) -> Backend:
    if not {"rules", "default"} & set(options):
        try:
            return create_backend(PLAY_ALONG, **options)
        except KbError:
            if PLAY_ALONG in available_backends():
                raise
            raise KbError(
                f"the `scripted` backend without rules is the {PLAY_ALONG} model, which the demo package "
                "registers (entry point reasonflux.backends): reinstall reasonflux-kb (pip install -e .)"
            ) from None
    return ScriptedBackend(**options)
