"""A session's LLM calls: through the solver's micro-batchers, within the session's wall time and token
budget, accounted per role and per round, recorded for the trace, and (for JSON replies) parsed strictly
and re-asked at most `parse_retries` times."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from pipelines import navigator
from pipelines.llm.base import ChatRequest, Completion, Message
from pipelines.llm.calls import call_rows
from pipelines.parsing import ParseError
from serve.solve_events import total_tokens
from serve.solver_config import SolverConfig
from serve.trajectory import NavigatorUnparseable, SessionEnd

if TYPE_CHECKING:
    from serve.solver import Solver

STAGES = {"navigator": "solve:navigator", "inference": "solve:inference"}


class SessionCalls:
    """The LLM-call half of a session's state (serve.solver's _Run is the other)."""

    def __init__(self, solver: Solver, config: SolverConfig):
        self.s, self.cfg = solver, config
        self.t0 = time.monotonic()
        self.deadline = self.t0 + config.max_seconds
        self.session_id = 0
        self.tokens: dict[str, dict[str, float]] = {}
        self.calls = 0
        self._pending_calls: list[dict[str, Any]] = []
        self._pending_failures: list[dict[str, Any]] = []
        self._round_tokens: dict[str, dict[str, float]] = {}

    def _account(self, role: str, c: Completion, waited_ms: float) -> None:
        for bucket in (self.tokens, self._round_tokens):
            t = bucket.setdefault(role, {"prompt": 0, "completion": 0, "calls": 0, "latency_ms": 0.0})
            t["prompt"] += c.prompt_tokens
            t["completion"] += c.completion_tokens
            t["calls"] += 1
            t["latency_ms"] = round(t["latency_ms"] + waited_ms, 3)
        self.calls += 1

    def _check_budget(self) -> None:
        if time.monotonic() >= self.deadline:
            raise SessionEnd("limit", f"wall time limit of {self.cfg.max_seconds:g} s reached")
        used = total_tokens(self.tokens)
        if used >= self.cfg.token_budget:
            raise SessionEnd("limit", f"token budget of {self.cfg.token_budget} reached ({used} used)")

    def call(self, role: str, messages: list[Message], schema: dict[str, Any] | None = None) -> Completion:
        self._check_budget()
        params = self.cfg.navigator_params if role == "navigator" else self.cfg.inference_params
        req = ChatRequest(
            messages=messages,
            params=params,
            tags={"role": role, "session_id": self.session_id},
            response_schema=schema,
        )
        batcher = self.s.batchers[role]
        t0 = time.monotonic()
        future = batcher.submit(req)
        try:
            c = future.result(timeout=max(0.0, self.deadline - t0))
        except FutureTimeout:
            future.cancel()
            c = Completion(
                text="",
                error="no reply before the session's wall time limit",
                latency_ms=(time.monotonic() - t0) * 1000,
            )
            self._record_call(role, req, c)
            raise SessionEnd(
                "limit", f"wall time limit of {self.cfg.max_seconds:g} s reached while waiting for the {role}"
            ) from None
        except Exception as e:  # noqa: BLE001 - the backend raised instead of returning an error
            c = Completion(
                text="", error=f"{type(e).__name__}: {e}", latency_ms=(time.monotonic() - t0) * 1000
            )
            self._record_call(role, req, c)
            raise SessionEnd("failed", f"{role} backend error: {c.error}") from None
        waited = (time.monotonic() - t0) * 1000
        self._record_call(role, req, c, waited)
        if c.error:
            raise SessionEnd("failed", f"{role} backend error: {c.error}")
        used = total_tokens(self.tokens)
        if used > self.cfg.token_budget:
            raise SessionEnd("limit", f"token budget of {self.cfg.token_budget} reached ({used} used)")
        return c

    def _record_call(
        self, role: str, req: ChatRequest, c: Completion, waited_ms: float | None = None
    ) -> None:
        if not c.latency_ms and waited_ms:
            c = replace(c, latency_ms=waited_ms)
        self._account(role, c, waited_ms if waited_ms is not None else c.latency_ms)
        self._pending_calls += call_rows(
            self.s.batchers[role].backend,
            [req],
            [c],
            run_id=self.s.run_id,
            stage=STAGES[role],
            session_id=self.session_id,
        )

    def navigate(
        self,
        messages: list[Message],
        parse: Callable[[str], Any],
        schema: dict[str, Any],
        role: str = "navigator",
    ) -> tuple[Any, list[Message], str, list[str]]:
        """(parsed, the messages of the attempt that parsed, its raw text, the errors of earlier attempts).

        An unparseable reply is shown back to the ROLE with what is wrong, at most
        parse_retries times; the retry prompt is the original plus the last bad reply, so it stays bounded.
        """
        attempt_msgs = messages
        errors: list[str] = []
        for attempt in range(self.cfg.parse_retries + 1):
            c = self.call(role, attempt_msgs, schema)
            try:
                return parse(c.text), attempt_msgs, c.text, errors
            except ParseError as e:
                errors.append(str(e))
                self._pending_failures.append(
                    {"attempt": attempt, "reason": f"unparseable {role} output: {e}", "raw_output": c.text}
                )
                last_msgs, last_raw = attempt_msgs, c.text
                attempt_msgs = navigator.retry_messages(messages, c.text, str(e))
        raise NavigatorUnparseable(errors, last_msgs, last_raw, role)
