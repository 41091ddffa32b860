"""Solve traces, stored: writing a session's rounds as they happen and reading them back (rendering them
for people is serve.traces.render).

Each round is one statement (one round trip, one commit): its solve_round row, the LLM
calls it made (llm_call, with the session id), any unparseable navigator output
(failure), the template version the step used (solve_step_template, with the verdict)
and the session's running totals. A crash mid-session leaves every finished
round readable.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import InputError, NotFound
from kb.models import LlmCall, SolveRound, SolveSession
from kb.models._common import utcnow
from kb.output import dumps
from pipelines.llm.calls import CALL_COLUMNS
from serve.solve_events import total_tokens

FAILURE_STAGE = "solve"


def create_session(
    db: Database,
    problem_text: str,
    config: dict[str, Any],
    *,
    problem_id: int | None = None,
    reference: str | None = None,
    run_id: int | None = None,
) -> int:
    if problem_id is not None:
        with db.engine.connect() as conn:
            if (
                conn.execute(sa.text("SELECT 1 FROM problem WHERE id = :i"), {"i": problem_id}).first()
                is None
            ):
                raise InputError(f"no problem with id {problem_id}", field="problem_id")
    with db.engine.begin() as conn:
        conn.execute(_ASYNC_COMMIT)  # made durable by the session's final, synchronous commit
        return conn.execute(
            sa.insert(SolveSession)
            .values(
                problem_text=problem_text,
                config=config,
                problem_id=problem_id,
                reference_answer=reference,
                run_id=run_id,
                status="running",
                tokens={},
                started_at=utcnow(),
            )
            .returning(SolveSession.id)
        ).scalar_one()


_ROUND_COLUMNS = (
    "session_id",
    "round_no",
    "kind",
    "step_text",
    "navigator_prompt",
    "navigator_output",
    "retrieved",
    "instantiation",
    "evaluation",
    "adjustment",
    "tokens",
    "latency_ms",
)
_ROUND_DEFAULTS = {"navigator_prompt": [], "retrieved": [], "adjustment": {}, "tokens": {}, "latency_ms": 0.0}
_FAILURE_COLUMNS = ("run_id", "stage", "unit_key", "attempt", "reason", "raw_output")
_FINISH_COLUMNS = ("status", "reason", "final_answer", "correct", "latency_ms")
_USAGE_COLUMNS = ("session_id", "round_no", "version_id", "step_no", "score", "outcome", "accepted")


def _insert_from_json(table: str, columns: tuple[str, ...], param: str, many: bool) -> str:
    cols = ", ".join(columns)
    fn = "jsonb_populate_recordset" if many else "jsonb_populate_record"
    return f"INSERT INTO {table} ({cols}) SELECT {cols} FROM {fn}(NULL::{table}, CAST(:{param} AS jsonb))"


def _write_sql(finish: bool) -> sa.TextClause:
    end = (
        ", " + ", ".join(f"{c} = x.{c}" for c in _FINISH_COLUMNS) + ", finished_at = now()" if finish else ""
    )
    return sa.text(
        f"WITH r AS ({_insert_from_json('solve_round', _ROUND_COLUMNS, 'round', False)}), "
        f"c AS ({_insert_from_json('llm_call', CALL_COLUMNS, 'calls', True)}), "
        f"f AS ({_insert_from_json('failure', _FAILURE_COLUMNS, 'failures', True)}), "
        f"u AS ({_insert_from_json('solve_step_template', _USAGE_COLUMNS, 'usage', True)}) "
        f"UPDATE solve_session s SET rounds = :rounds, tokens = CAST(:tokens AS jsonb){end} "
        "FROM jsonb_populate_record(NULL::solve_session, CAST(:finish AS jsonb)) x WHERE s.id = :sid"
    )


_WRITE = {False: _write_sql(False), True: _write_sql(True)}
_ASYNC_COMMIT = sa.text("SET LOCAL synchronous_commit = off")


def _usage(session_id: int, round_row: dict[str, Any]) -> list[dict[str, Any]]:
    """The template version a step round gave the inference model, as a solve_step_template row."""
    adj = round_row.get("adjustment") or {}
    used = adj.get("template") or {}
    if round_row.get("kind", "step") != "step" or used.get("version_id") is None:
        return []
    outcome = adj.get("outcome")
    return [
        {
            "session_id": session_id,
            "round_no": round_row["round_no"],
            "version_id": used["version_id"],
            "step_no": adj.get("step_no"),
            "score": used.get("score"),
            "outcome": outcome,
            "accepted": None if outcome is None else outcome == "accepted",
        }
    ]


def _json(value: Any) -> str:
    """JSON for a jsonb parameter; NUL characters (which PostgreSQL text refuses) become U+FFFD."""
    text = dumps(value)
    return text if "\\u0000" not in text else dumps(_no_nul(value))


def _no_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: _no_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nul(v) for v in value]
    return value


def write_round(
    db: Database,
    session_id: int,
    round_row: dict[str, Any],
    calls: list[dict[str, Any]],
    failures: list[dict[str, Any]],
    *,
    rounds: int,
    tokens: dict[str, Any],
    run_id: int | None = None,
    finish: dict[str, Any] | None = None,
) -> None:
    """One round, its calls and parse failures, and the session's running totals: one statement.

    FINISH (status, reason, final_answer, correct, latency_ms) ends the session in the same statement.
    Rounds before the last commit without waiting for the disk (a commit's flush costs ~10x the
    write): a crash may lose the last moments of an unfinished session, never corrupt it, and the
    final round's synchronous commit makes all of the session's earlier writes durable too.
    """
    unit = f"session:{session_id}"
    params = {
        "sid": session_id,
        "rounds": rounds,
        "tokens": _json(tokens),
        "finish": _json(finish or {}),
        "round": _json({**_ROUND_DEFAULTS, **round_row, "session_id": session_id}),
        "calls": _json([{**c, "session_id": session_id, "run_id": run_id} for c in calls]),
        "failures": _json(
            [{**f, "run_id": run_id, "stage": FAILURE_STAGE, "unit_key": unit} for f in failures]
        ),
        "usage": _json(_usage(session_id, round_row)),
    }
    with db.engine.begin() as conn:
        if finish is None:
            conn.execute(_ASYNC_COMMIT)
        conn.execute(_WRITE[finish is not None], params)


def finish_session(
    db: Database,
    session_id: int,
    *,
    status: str,
    reason: str | None,
    final_answer: str | None,
    correct: bool | None,
    rounds: int,
    tokens: dict[str, Any],
    latency_ms: float,
) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(SolveSession)
            .where(SolveSession.id == session_id)
            .values(
                status=status,
                reason=reason,
                final_answer=final_answer,
                correct=correct,
                rounds=rounds,
                tokens=tokens,
                latency_ms=latency_ms,
                finished_at=utcnow(),
            )
        )


# ------------------------------------------------------------------ reading

_SESSION_COLS = (
    "id",
    "problem_id",
    "problem_text",
    "config",
    "status",
    "reason",
    "final_answer",
    "reference_answer",
    "correct",
    "rounds",
    "tokens",
    "latency_ms",
    "run_id",
    "started_at",
    "finished_at",
)
# What a round reads back: what was written, less the session key, plus when.
_ROUND_COLS = (*_ROUND_COLUMNS[1:], "created_at")


def get_session(db: Database, session_id: int, *, with_rounds: bool = True) -> dict[str, Any]:
    """A session with its rounds (in order) and its LLM call count per stage."""
    with db.engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(*[getattr(SolveSession, c) for c in _SESSION_COLS]).where(
                    SolveSession.id == session_id
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"no solve session {session_id}")
        out = dict(row)
        out["total_tokens"] = total_tokens(out["tokens"])
        out["llm_calls"] = dict(
            conn.execute(
                sa.select(LlmCall.stage, sa.func.count())
                .where(LlmCall.session_id == session_id)
                .group_by(LlmCall.stage)
            ).all()
        )
        if with_rounds:
            out["rounds_detail"] = [
                dict(r)
                for r in conn.execute(
                    sa.select(*[getattr(SolveRound, c) for c in _ROUND_COLS])
                    .where(SolveRound.session_id == session_id)
                    .order_by(SolveRound.round_no)
                ).mappings()
            ]
    return out


def list_sessions(
    db: Database,
    *,
    limit: int = 20,
    status: str | None = None,
    problem_id: int | None = None,
    run_id: int | None = None,
) -> list[dict[str, Any]]:
    """The newest sessions first, one summary line each."""
    s = SolveSession
    stmt = sa.select(
        s.id,
        s.status,
        s.rounds,
        s.final_answer,
        s.correct,
        s.tokens,
        s.latency_ms,
        s.problem_id,
        s.started_at,
        sa.func.left(s.problem_text, 80).label("problem"),
    )
    for col, value in ((s.status, status), (s.problem_id, problem_id), (s.run_id, run_id)):
        if value is not None:
            stmt = stmt.where(col == value)
    stmt = stmt.order_by(s.id.desc()).limit(limit)
    with db.engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(stmt).mappings()]
    for r in rows:
        r["tokens"] = total_tokens(r.pop("tokens"))
        r["seconds"] = round((r.pop("latency_ms") or 0.0) / 1000, 2)
    return rows
