"""Every LLM call is logged to llm_call (prompt, response, tokens, latency, run, session) for SQL audits.

`LoggedBackend` wraps any backend; each `generate` batch becomes one multi-row INSERT. Secrets read by
backends (API keys) are registered with `kb.secrets` and scrubbed from everything written, as a second
line of defence: no code path puts them into messages or params in the first place.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.models import LlmCall
from kb.secrets import scrub
from pipelines.llm.base import Backend, ChatRequest, Completion

# The llm_call columns a call row fills (call_rows); the solver's trace writer inserts the same rows.
CALL_COLUMNS = (
    "run_id",
    "session_id",
    "stage",
    "backend",
    "model",
    "messages",
    "params",
    "response",
    "error",
    "prompt_tokens",
    "completion_tokens",
    "latency_ms",
)


def call_rows(
    backend: Backend,
    requests: list[ChatRequest],
    completions: list[Completion],
    *,
    run_id: int | None,
    stage: str | None,
    session_id: int | None = None,
) -> list[dict[str, Any]]:
    rows = []
    for req, comp in zip(requests, completions):
        params = req.params.to_dict()
        if req.tags:
            params["tags"] = req.tags
        if (
            comp.structured
        ):  # how decoding was constrained (for a server: the response_format dialect it took)
            params["structured_output"] = comp.structured
        rows.append(
            {
                "run_id": run_id,
                "session_id": session_id,
                "stage": stage,
                "backend": backend.name,
                "model": backend.model,
                "messages": scrub(req.messages),
                "params": scrub(params),
                "response": scrub(comp.text),
                "error": scrub(comp.error),
                "prompt_tokens": comp.prompt_tokens,
                "completion_tokens": comp.completion_tokens,
                "latency_ms": comp.latency_ms,
            }
        )
    return rows


def log_calls(conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(sa.insert(LlmCall.__table__), rows)


class LoggedBackend:
    """A backend whose every call lands in llm_call, tagged with the run (and solve session)."""

    def __init__(
        self,
        backend: Backend,
        db: Database,
        run_id: int | None,
        stage: str | None,
        session_id: int | None = None,
    ):
        self.inner, self.db = backend, db
        self.run_id, self.stage, self.session_id = run_id, stage, session_id
        self.name, self.model = backend.name, backend.model

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        completions = self.inner.generate(requests)
        rows = call_rows(
            self.inner,
            requests,
            completions,
            run_id=self.run_id,
            stage=self.stage,
            session_id=self.session_id,
        )
        # Logged in its own transaction: the audit keeps calls whose unit later failed or was killed.
        with self.db.engine.begin() as conn:
            log_calls(conn, rows)
        return completions

    def with_session(self, session_id: int | None) -> LoggedBackend:
        return LoggedBackend(self.inner, self.db, self.run_id, self.stage, session_id)
