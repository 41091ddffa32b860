"""A deterministic backend for tests and benchmarks, registered like any real one.

Responses come from rules: the first rule whose regex matches the last user
message (or the system prompt) answers; a rule's reply is a string, a list
consumed in order (the last one repeats), or a callable(messages) -> str.
A fixed simulated latency makes concurrency measurable.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import Any

from pipelines.llm.base import ChatRequest, Completion, Message
from pipelines.llm.registry import register_backend

Reply = str | list[str] | Callable[[list[Message]], str]


class ScriptedBackend:
    name = "scripted"

    def __init__(self, rules: list[tuple[str, Reply]] | None = None, default: Reply | None = None,
                 latency_s: float = 0.0, model: str = "scripted", **_: Any):
        self.model = model
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
            out.append(Completion(
                text=text,
                prompt_tokens=sum(len(m.get("content", "").split()) for m in req.messages),
                completion_tokens=len(text.split()),
                latency_ms=(time.perf_counter() - t0) * 1000 + self.latency_s * 1000,
                error=err,
            ))
        return out


# A scripted role without rules is the solver's play-along model (serve/scripted.py), configured by these.
@register_backend("scripted", options=ScriptedBackend,
                  also=("answers", "default_answer", "steps", "template_from_problem"))
def _factory(**options: Any) -> ScriptedBackend:
    return ScriptedBackend(**options)
