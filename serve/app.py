"""The HTTP service: solve over HTTP (plain and OpenAI-compatible), sessions, template search, health.

    POST /v1/solve                 {"problem": ...} -> answer + session id (stream: SSE per round)
    POST /v1/chat/completions      OpenAI chat API, model "reasonflux" -> the solver's answer (stream too)
    GET  /v1/models                the one model, for OpenAI clients that list first
    GET  /v1/sessions/{id}         a stored trace (?render=true adds the readable text)
    GET  /v1/templates/search      live KB retrieval
    GET  /healthz                  liveness and database reachability (never needs the token)

Sessions run on worker threads (at most `max_concurrent` at once); their LLM calls meet in the
solver's micro-batchers, so a batched backend sees concurrent sessions together. With a token
configured every route but /healthz and the schema needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any, Literal

import anyio
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from kb import __version__
from kb.db import Database
from kb.errors import ConflictError, KbError, NotFound
from kb.output import dumps, to_jsonable
from serve.solver import Solver, SolveResult
from serve.traces import get_session, render_trace

MODEL_NAME = "reasonflux"
DEFAULT_MAX_BODY = 64 * 1024
DEFAULT_MAX_PROBLEM_CHARS = 16_000
PUBLIC_PATHS = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class ApiError(Exception):
    def __init__(
        self, status: int, message: str, *, code: str = "invalid_request", kind: str = "invalid_request_error"
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


# ------------------------------------------------------------------ request and response bodies


class SolveRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    problem: str = Field(min_length=1, description="The problem statement.")
    reference: str | None = Field(
        None, description="A known answer: the session records whether it was right."
    )
    problem_id: int | None = Field(None, description="The KB problem this is, if any.")
    max_rounds: int | None = Field(None, ge=1, description="At most the server's round limit.")
    max_tokens: int | None = Field(None, ge=1, description="At most the server's token limit.")
    stream: bool = Field(False, description="Stream server-sent events: session, one per round, done.")


class SolveResponse(BaseModel):
    session_id: int
    status: str
    answer: str | None
    correct: bool | None
    reason: str | None
    rounds: int
    total_tokens: int
    tokens: dict[str, Any]
    latency_ms: float
    templates: list[int]
    llm_calls: int


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")  # OpenAI clients send fields the solver has no use for

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)


# ------------------------------------------------------------------ the app


class _Guard:
    """Before any handler: the bearer token (when configured), then the body size limit (chunked too).

    Checked here rather than in a dependency so that an unauthenticated request learns nothing,
    not even whether its body would have parsed.
    """

    def __init__(self, app: Any, token: str | None, max_bytes: int):
        self.app, self.token, self.max_bytes = app, token, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.token is not None and scope.get("path") not in PUBLIC_PATHS:
            problem = _check_token(headers.get(b"authorization", b"").decode("latin-1"), self.token)
            if problem:
                return await _send(
                    send,
                    401,
                    "authentication_error",
                    "invalid_api_key",
                    problem,
                    [(b"www-authenticate", b"Bearer")],
                )
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._too_large(send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable) -> None:
        await _send(
            send,
            413,
            "invalid_request_error",
            "request_too_large",
            f"request body larger than {self.max_bytes} bytes",
        )


def _check_token(header: str, token: str) -> str | None:
    """What is wrong with an Authorization header, or None when it carries the token."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return "missing bearer token (Authorization: Bearer <token>)"
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "invalid bearer token"
    return None


async def _send(
    send: Callable,
    status: int,
    kind: str,
    code: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    payload = dumps({"error": {"message": message, "type": kind, "code": code}, "detail": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *(extra_headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _error(
    status: int,
    message: str,
    code: str,
    kind: str = "invalid_request_error",
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # OpenAI's error shape, which OpenAI clients turn into typed exceptions; `detail` for everyone else.
    return JSONResponse(
        {"error": {"message": message, "type": kind, "code": code}, "detail": message},
        status_code=status,
        headers=headers,
    )


def create_app(
    db: Database,
    solver: Solver,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_concurrent: int = 32,
    max_problem_chars: int = DEFAULT_MAX_PROBLEM_CHARS,
) -> FastAPI:
    """The service around one Solver; its config caps what a request may ask for (rounds, tokens)."""
    app = FastAPI(
        title="reasonflux",
        version=__version__,
        description="Multi-round solving with thought templates from the live knowledge base.",
    )
    limiter = anyio.CapacityLimiter(max_concurrent)
    bearer = HTTPBearer(auto_error=False, description="The token given to `reasonflux serve --token`.")
    app.state.solver, app.state.db = solver, db

    def authorize(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        """The Guard middleware enforces the token; this also puts the scheme in the OpenAPI schema."""
        if token is not None:
            problem = _check_token(f"{creds.scheme} {creds.credentials}" if creds else "", token)
            if problem:
                raise ApiError(401, problem, code="invalid_api_key", kind="authentication_error")

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return _error(e.status, e.message, e.code, e.kind, headers)

    @app.exception_handler(KbError)
    async def _kb_error(_: Request, e: KbError) -> JSONResponse:
        status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, ConflictError) else 400
        return _error(status, str(e), type(e).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in e.errors()
        )
        return _error(422, f"invalid request: {problems}", "invalid_request")

    def _limits(problem: str, max_rounds: int | None, max_tokens: int | None) -> dict[str, Any]:
        cfg = solver.config
        if len(problem) > max_problem_chars:
            raise ApiError(
                413, f"problem longer than {max_problem_chars} characters", code="problem_too_long"
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
                f"max_tokens {max_tokens} exceeds this server's limit of {cfg.token_budget}",
                code="max_tokens_too_large",
            )
        return {"config": cfg.with_overrides(max_rounds=max_rounds, token_budget=max_tokens)}

    async def _solve(problem: str, on_event: Callable | None = None, **kw: Any) -> SolveResult:
        return await anyio.to_thread.run_sync(
            partial(solver.solve, problem, on_event=on_event, **kw), limiter=limiter
        )

    async def _events(problem: str, **kw: Any) -> AsyncIterator[dict[str, Any]]:
        """The session's events as they happen; a solver error ends the stream with an error event."""
        queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def push(event: dict | None) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, event)

        def run() -> SolveResult:
            try:
                return solver.solve(problem, on_event=push, **kw)
            finally:
                push(None)

        task = asyncio.ensure_future(anyio.to_thread.run_sync(run, limiter=limiter))
        while (event := await queue.get()) is not None:
            yield event
        try:
            await task
        except Exception as e:  # noqa: BLE001 - reported in-band: the response has already started
            yield {"event": "error", "message": f"{type(e).__name__}: {e}"}

    @app.get("/healthz", tags=["service"])
    async def healthz() -> JSONResponse:
        def ping() -> bool:
            with db.engine.connect() as conn:
                return conn.execute(sa.text("SELECT 1")).scalar() == 1

        try:
            ok = await anyio.to_thread.run_sync(ping)
        except Exception as e:  # noqa: BLE001
            return JSONResponse(
                {"status": "error", "database": False, "error": type(e).__name__}, status_code=503
            )
        return JSONResponse(
            {"status": "ok", "database": ok, "version": __version__, **solver.describe_backends()}
        )

    @app.post(
        "/v1/solve",
        tags=["solve"],
        response_model=SolveResponse,
        dependencies=[Depends(authorize)],
        responses={200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE with stream"}},
    )
    async def solve(body: SolveRequest):
        kw = _limits(body.problem, body.max_rounds, body.max_tokens)
        kw.update(problem_id=body.problem_id, reference=body.reference)
        if body.stream:

            async def sse() -> AsyncIterator[str]:
                async for event in _events(body.problem, **kw):
                    yield f"event: {event['event']}\ndata: {dumps(event)}\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream")
        result = await _solve(body.problem, **kw)
        return JSONResponse(to_jsonable(_solve_response(result)))

    @app.get("/v1/models", tags=["openai"], dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": MODEL_NAME, "object": "model", "created": 0, "owned_by": "reasonflux"}],
        }

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=[Depends(authorize)])
    async def chat_completions(body: ChatCompletionRequest):
        if body.model != MODEL_NAME:
            raise ApiError(
                404,
                f"model {body.model!r} does not exist; this server serves {MODEL_NAME!r}",
                code="model_not_found",
            )
        problem = _problem_from_messages(body.messages)
        kw = _limits(problem, None, None)
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.stream:
            return StreamingResponse(
                _chat_stream(_events(problem, **kw), cid, created), media_type="text/event-stream"
            )
        result = await _solve(problem, **kw)
        return JSONResponse(_chat_response(result, cid, created))

    @app.get("/v1/sessions/{session_id}", tags=["sessions"], dependencies=[Depends(authorize)])
    async def session(
        session_id: int, render: bool = Query(False, description="Add the readable trace text.")
    ):
        data = await anyio.to_thread.run_sync(get_session, db, session_id)
        if render:
            data["trace"] = render_trace(data)
        return JSONResponse(to_jsonable(data))

    @app.get("/v1/templates/search", tags=["templates"], dependencies=[Depends(authorize)])
    async def templates_search(
        q: str = Query(..., min_length=1, max_length=2000),
        k: int = Query(5, ge=1, le=50),
        mode: str = Query("hybrid"),
        category: str | None = None,
        tags: list[str] | None = Query(None),
    ):
        from kb.retrieval import search_templates

        hits = await anyio.to_thread.run_sync(
            partial(search_templates, db, q, k=k, mode=mode, category=category, tags=tags)
        )
        return JSONResponse(to_jsonable({"query": q, "mode": mode, "hits": [h.to_dict() for h in hits]}))

    app.add_middleware(_Guard, token=token, max_bytes=max_body_bytes)
    return app


def _solve_response(r: SolveResult) -> dict[str, Any]:
    return {k: v for k, v in r.to_dict().items() if k in SolveResponse.model_fields}


def _problem_from_messages(messages: list[ChatMessage]) -> str:
    """The last user message's text (text parts of a multi-part message joined)."""
    for m in reversed(messages):
        if m.role != "user":
            continue
        if isinstance(m.content, str):
            return m.content
        parts = [p.get("text", "") for p in (m.content or []) if p.get("type") == "text"]
        return "\n".join(parts)
    raise ApiError(400, "messages must contain a user message with the problem", code="no_user_message")


def _answer_text(r: SolveResult) -> str:
    if r.answer is None:
        return f"No answer ({r.status}: {r.reason or 'no final answer'})."
    solution = (r.solution or "").strip()
    return (solution + "\n\n" if solution else "") + f"Final answer: \\boxed{{{r.answer}}}"


def _usage(r: SolveResult) -> dict[str, int]:
    prompt = sum(int(t.get("prompt", 0)) for t in r.tokens.values())
    completion = sum(int(t.get("completion", 0)) for t in r.tokens.values())
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _chat_response(r: SolveResult, cid: str, created: int) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": MODEL_NAME,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _answer_text(r)},
                "finish_reason": "stop" if r.status == "solved" else "length",
                "logprobs": None,
            }
        ],
        "usage": _usage(r),
        "reasonflux": to_jsonable(_solve_response(r)),
    }


def _round_line(event: dict[str, Any]) -> str | None:
    adj = event.get("adjustment") or {}
    if event.get("kind") == "plan" and adj.get("trajectory"):
        return (
            f"[plan] {len(adj['trajectory'])} steps: "
            + "; ".join(s["text"] for s in adj["trajectory"])
            + "\n"
        )
    if event.get("kind") == "step":
        tpl = (adj.get("template") or {}).get("name", "no template")
        return (
            f"[round {event.get('round_no')}] step {adj.get('step_no')}/{adj.get('n_steps')} with {tpl}: "
            f"{adj.get('verdict') or 'ended'}\n"
        )
    return None


async def _chat_stream(events: AsyncIterator[dict[str, Any]], cid: str, created: int) -> AsyncIterator[str]:
    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        body = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL_NAME,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            **extra,
        }
        return f"data: {dumps(body)}\n\n"

    yield chunk({"role": "assistant", "content": ""})
    async for event in events:
        if event["event"] == "round" and (line := _round_line(event)):
            yield chunk({"content": line})
        elif event["event"] == "done":
            r = SolveResult(**{k: v for k, v in event.items() if k in SolveResult.__dataclass_fields__})
            yield chunk({"content": "\n" + _answer_text(r)})
            yield chunk(
                {},
                "stop" if r.status == "solved" else "length",
                usage=_usage(r),
                reasonflux=to_jsonable(_solve_response(r)),
            )
        elif event["event"] == "error":
            yield chunk({"content": f"\nerror: {event['message']}"})
            yield chunk({}, "stop")
    yield "data: [DONE]\n\n"
