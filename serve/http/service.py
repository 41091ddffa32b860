"""The solve service behind the routes: one Solver, its sessions run on worker threads (at most
max_concurrent at once), a request's limits checked against the server's, and a streamed session held
until its first round so that a backend that is down is answered with a 5xx, not a 200 stream.

Sessions' LLM calls meet in the solver's micro-batchers, so a batched backend sees concurrent sessions
together. Routes reach the one instance through `get_service` (it lives on app.state).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import anyio
from fastapi import Request

from kb.db import Database
from serve.http.errors import SESSION_HEADER, ApiError, backend_down
from serve.solve_events import SessionDone, SessionError, SolveEvent, SolveResult
from serve.solver import Solver
from serve.solver_config import SolverConfig


@dataclass
class SolveService:
    db: Database
    solver: Solver
    model_name: str
    max_concurrent: int
    max_problem_chars: int
    limiter: anyio.CapacityLimiter = field(init=False)
    health_cache: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.limiter = anyio.CapacityLimiter(self.max_concurrent)

    def limits(
        self, problem: str, max_rounds: int | None, max_tokens: int | None, budget_name: str = "max_tokens"
    ) -> dict[str, Any]:
        """The session's solve() arguments for a request's limits; a 4xx when they exceed the server's."""
        cfg = self.solver.config
        if len(problem) > self.max_problem_chars:
            raise ApiError(
                413, f"problem longer than {self.max_problem_chars} characters", code="problem_too_long"
            )
        if not problem.strip():
            raise ApiError(400, "problem is empty", code="empty_problem")
        if max_rounds is not None and max_rounds > cfg.max_rounds:
            raise ApiError(
                400,
                f"max_rounds {max_rounds} exceeds this server's limit of {cfg.max_rounds}",
                code="max_rounds_too_large",
            )
        if max_tokens is not None and max_tokens > cfg.token_budget:
            raise ApiError(
                400,
                f"{budget_name} {max_tokens} exceeds this server's limit of {cfg.token_budget}",
                code="max_tokens_too_large",
                param=budget_name,
            )
        return {"config": cfg.with_overrides(max_rounds=max_rounds, token_budget=max_tokens)}

    async def solve(self, problem: str, **kw: Any) -> SolveResult:
        return await anyio.to_thread.run_sync(partial(self.solver.solve, problem, **kw), limiter=self.limiter)

    async def events(self, problem: str, **kw: Any) -> AsyncIterator[SolveEvent]:
        """The session's events as they happen; a solver error ends the stream with a SessionError."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def push(event: SolveEvent | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def run() -> SolveResult:
            try:
                return self.solver.solve(problem, on_event=push, **kw)
            finally:
                push(None)

        task = asyncio.ensure_future(anyio.to_thread.run_sync(run, limiter=self.limiter))
        while (event := await queue.get()) is not None:
            yield event
        try:
            await task
        except Exception as e:  # noqa: BLE001 - reported in-band: the response has already started
            yield SessionError(f"{type(e).__name__}: {e}")

    async def started(self, problem: str, **kw: Any) -> tuple[list[SolveEvent], AsyncIterator[SolveEvent]]:
        """Start a streamed session and hold its events until its first round (or its end), so that a
        backend that is down is answered with a 5xx and not with a 200 stream carrying the error."""
        events = self.events(problem, **kw)
        held: list[SolveEvent] = []
        async for event in events:
            held.append(event)
            if isinstance(event, SessionDone | SessionError):
                break
            # a failed plan round and the final round come before `done`: wait for it to see why
            if event.event == "round" and not event.ends_session:
                break
        last = held[-1] if held else SessionError("the session produced no events")
        if isinstance(last, SessionDone) and (down := backend_down(last.result)) is not None:
            raise down
        if isinstance(last, SessionError):
            raise ApiError(500, f"internal error: {last.message}", code="internal_error", kind="api_error")
        return held, events


def get_service(request: Request) -> SolveService:
    """The app's SolveService (a route dependency)."""
    return request.app.state.service


def with_sampling(
    config: SolverConfig, extras: dict[str, dict[str, Any]] | None = None, **changes: Any
) -> SolverConfig:
    """The request's temperature/top_p/seed for both roles' calls of this session, and EXTRAS
    ({role: vLLM sampling extras}) for the roles whose backend takes them."""
    changes = {k: v for k, v in changes.items() if v is not None}
    extras = extras or {}
    if not changes and not any(extras.values()):
        return config
    return config.with_overrides(
        navigator_params=replace(config.navigator_params, **changes, **extras.get("navigator", {})),
        inference_params=replace(config.inference_params, **changes, **extras.get("inference", {})),
    )


async def replay(held: list[SolveEvent], rest: AsyncIterator[SolveEvent]) -> AsyncIterator[SolveEvent]:
    for event in held:
        yield event
    async for event in rest:
        yield event


def session_header(held: list[SolveEvent]) -> dict[str, str]:
    sid = next((e.session_id for e in held if e.session_id), None)
    return {SESSION_HEADER: str(sid)} if sid else {}


def joined(headers: list[dict[str, str]]) -> dict[str, str]:
    """One session header naming every session of a request (n of them), in choice order."""
    ids = [h[SESSION_HEADER] for h in headers if SESSION_HEADER in h]
    return {SESSION_HEADER: ", ".join(ids)} if ids else {}
