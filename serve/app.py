"""The HTTP service: solve over HTTP (plain and OpenAI-compatible), sessions, template search, health.

    POST /v1/solve                 {"problem": ...} -> answer + session id (stream: SSE per round)
    POST /v1/chat/completions      OpenAI chat API -> the solver's answer (serve/openai_compat.py: as vLLM's)
    GET  /v1/models[/{id}]         the one model ("reasonflux" or --served-model-name)
    GET  /v1/sessions/{id}         a stored trace (?render=true adds the readable text)
    GET  /v1/templates/search      live KB retrieval
    GET  /healthz                  database and each role's backend, really asked (never needs the token)

Every error, 4xx or 5xx, unknown routes included, has OpenAI's shape ({"error": {message, type, code,
param}}; a body that does not validate is a 400 invalid_request_error); a session whose backend is down is a 502 (or 503 when unreachable), never a 200 whose answer
is the error. Each solve's session id is in the `X-Reasonflux-Session-Id` header and in the body.

Sessions run on worker threads (at most `max_concurrent` at once); their LLM calls meet in the
solver's micro-batchers, so a batched backend sees concurrent sessions together. With a token
configured every route but /healthz and the schema needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from functools import partial
from typing import Any

import anyio
import sqlalchemy as sa
from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb import __version__, storable
from kb.db import Database
from kb.errors import ConflictError, KbError, NotFound
from kb.output import dumps, to_jsonable
from kb.secrets import scrub
from pipelines.llm.base import ChatRequest, SamplingParams
from serve import openai_compat as oa
from serve.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_PROBLEM_CHARS,
)
from serve.openai_compat import ApiError, error_body
from serve.solver import Solver, SolveResult
from serve.traces import get_session, render_trace

MODEL_NAME = "reasonflux"
PUBLIC_PATHS = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
SESSION_HEADER = "X-Reasonflux-Session-Id"
HEALTH_TTL_S = 10.0  # backend probes are cached this long, so frequent health checks cost no LLM calls
MAX_ID = 2**63 - 1


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


# ------------------------------------------------------------------ the app


class _Guard:
    """Before any handler: the bearer token (when configured), then the body size limit (chunked too).

    Checked here rather than in a dependency so that an unauthenticated request learns nothing,
    not even whether its body would have parsed.
    """

    def __init__(
        self, app: Any, token: str | None, max_bytes: int, body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S
    ):
        self.app, self.token, self.max_bytes, self.body_timeout_s = app, token, max_bytes, body_timeout_s

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
        deadline = asyncio.get_running_loop().time() + self.body_timeout_s
        while more:
            try:  # a client trickling its body cannot hold a worker forever
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except TimeoutError:
                return await _send(
                    send,
                    408,
                    "invalid_request_error",
                    "request_timeout",
                    f"request body not received within {self.body_timeout_s:g} s",
                )
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._too_large(send)
        found = _unstorable_in(scope.get("query_string", b""), body)
        if found:  # bad input, refused here as a 400 naming the field, not deep down as a 500
            where, code, problem = found
            return await _send(send, 400, "invalid_request_error", code, f"{where} {problem}", param=where)
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


def _unstorable_in(query: bytes, body: bytes) -> tuple[str, str, str] | None:
    """(where, code, what) for what the handlers cannot take in the query string or the JSON body: a NUL
    (PostgreSQL text cannot hold it), a lone surrogate ("\\ud800": no Unicode text), nesting deeper than
    kb.storable.MAX_DEPTH (the parser and the validators recurse); else None."""
    if b"%00" in query or b"\x00" in query:
        return "query string", "nul_character", "contains a NUL character"
    if b"\x00" in body:
        return "body", "nul_character", "contains a NUL character"
    lowered = body.lower()
    if (
        b"u0000" not in lowered
        and b"\\ud" not in lowered
        and body.count(b"[") + body.count(b"{") <= storable.MAX_DEPTH
    ):
        return None  # the common case, without parsing the body twice
    try:
        data = json.loads(body)
    except RecursionError:
        return "body", "nested_too_deeply", f"is nested more than {storable.MAX_DEPTH} levels deep"
    except ValueError:
        return None  # not JSON: the handler's validation says so
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:  # iterative: the body may be nested far deeper than Python recurses
        value, path, depth = stack.pop()
        if depth > storable.MAX_DEPTH:
            return (
                path or "body",
                "nested_too_deeply",
                f"is nested more than {storable.MAX_DEPTH} levels deep",
            )
        if isinstance(value, str):
            if problem := storable.text_problem(value):
                return path or "body", _text_code(problem), f"contains {problem}"
            continue
        items = (
            value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        )
        for key, item in items:
            if isinstance(key, str) and (problem := storable.text_problem(key)):
                return f"{path}.{key!r}".lstrip("."), _text_code(problem), f"has {problem}"
            stack.append((item, f"{path}.{key}".lstrip("."), depth + 1))
    return None


def _text_code(problem: str) -> str:
    return "nul_character" if "NUL" in problem else "invalid_unicode"


def _check_token(header: str, token: str) -> str | None:
    """What is wrong with an Authorization header, or None when it carries the token."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        # worded so the secret scrubber (which hides what follows "Bearer ") leaves it readable
        return "You didn't provide an API key. Send it in the Authorization header, scheme Bearer."
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "Incorrect API key provided."
    return None


async def _send(
    send: Callable,
    status: int,
    kind: str,
    code: str,
    message: str,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
    param: str | None = None,
) -> None:
    payload = dumps(error_body(message, kind, code, param)).encode()
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
    param: str | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, kind, code, param), status_code=status, headers=headers)


_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    415: "unsupported_media_type",
}
_BACKEND_ERROR = re.compile(r"^(navigator|inference) backend error: (.*)", re.DOTALL)
_UNREACHABLE = ("ConnectError", "ConnectTimeout", "Connection refused", "Name or service not known")


def _backend_down(r: SolveResult) -> ApiError | None:
    """A session that failed because a backend errored is the server's failure, not an answer: 502, or
    503 when the backend could not be reached at all."""
    m = _BACKEND_ERROR.match(r.reason or "") if r.status == "failed" else None
    if m is None:
        return None
    unreachable = any(marker in m.group(2) for marker in _UNREACHABLE)
    return ApiError(
        503 if unreachable else 502,
        f"session {r.session_id}: the {m.group(1)} backend {'is unreachable' if unreachable else 'failed'}: "
        f"{m.group(2)}",
        code="backend_unavailable" if unreachable else "backend_error",
        kind="api_error",
        headers={SESSION_HEADER: str(r.session_id)},
    )


def create_app(
    db: Database,
    solver: Solver,
    *,
    token: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    max_concurrent: int = 32,
    max_problem_chars: int = DEFAULT_MAX_PROBLEM_CHARS,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    model_name: str = MODEL_NAME,
) -> FastAPI:
    """The service around one Solver; its config caps what a request may ask for (rounds, tokens).
    MODEL_NAME is the model id OpenAI clients ask for (`--served-model-name`)."""
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
        headers = {**({"WWW-Authenticate": "Bearer"} if e.status == 401 else {}), **(e.headers or {})}
        return _error(e.status, e.message, e.code, e.kind, headers or None, e.param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
        return _error(
            e.status_code,
            message,
            _HTTP_CODES.get(e.status_code, "http_error"),
            "invalid_request_error" if e.status_code < 500 else "api_error",
            e.headers,
        )

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception) -> JSONResponse:
        return _error(500, f"internal error: {type(e).__name__}", "internal_error", "api_error")

    @app.exception_handler(KbError)
    async def _kb_error(_: Request, e: KbError) -> JSONResponse:
        status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, ConflictError) else 400
        return _error(status, str(e), type(e).__name__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return await _api_error(request, oa.validation_error(list(e.errors())))

    def _limits(
        problem: str, max_rounds: int | None, max_tokens: int | None, budget_name: str = "max_tokens"
    ) -> dict[str, Any]:
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
                f"{budget_name} {max_tokens} exceeds this server's limit of {cfg.token_budget}",
                code="max_tokens_too_large",
                param=budget_name,
            )
        return {"config": cfg.with_overrides(max_rounds=max_rounds, token_budget=max_tokens)}

    def _sampling(config: Any, extras: dict[str, dict[str, Any]] | None = None, **changes: Any) -> Any:
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

    async def _started(problem: str, **kw: Any) -> tuple[list[dict[str, Any]], AsyncIterator[dict[str, Any]]]:
        """Start a streamed session and hold its events until its first round (or its end), so that a
        backend that is down is answered with a 5xx and not with a 200 stream carrying the error."""
        events = _events(problem, **kw)
        held: list[dict[str, Any]] = []
        async for event in events:
            held.append(event)
            # a failed plan round and the final round come before `done`: wait for it to see why
            pending = event["event"] == "round" and (
                event.get("kind") == "final" or (event.get("adjustment") or {}).get("error")
            )
            if event["event"] in ("round", "done", "error") and not pending:
                break
        last = held[-1] if held else {"event": "error", "message": "the session produced no events"}
        if last["event"] == "done":
            r = SolveResult(**{k: v for k, v in last.items() if k in SolveResult.__dataclass_fields__})
            if (down := _backend_down(r)) is not None:
                raise down
        if last["event"] == "error":
            raise ApiError(500, f"internal error: {last['message']}", code="internal_error", kind="api_error")
        return held, events

    async def _replay(held: list[dict[str, Any]], rest: AsyncIterator[dict[str, Any]]):
        for event in held:
            yield event
        async for event in rest:
            yield event

    health_cache: dict[str, Any] = {}

    def _probe_backends() -> dict[str, dict[str, Any]]:
        """One one-token request to each distinct backend (a shared one is asked once)."""
        out, seen = {}, {}
        for role, backend in solver.backends.items():
            if id(backend) not in seen:
                t0 = time.perf_counter()
                try:
                    [c] = backend.generate(
                        [
                            ChatRequest(
                                [{"role": "user", "content": "Reply OK."}],
                                SamplingParams(max_tokens=1),
                                tags={"health": role},
                            )
                        ]
                    )
                    error = c.error
                except Exception as e:  # noqa: BLE001 - a backend that raises is what health reports
                    error = f"{type(e).__name__}: {e}"
                seen[id(backend)] = {
                    "ok": error is None,
                    "error": scrub(error),
                    "latency_ms": round((time.perf_counter() - t0) * 1000, 1),
                }
            out[role] = {"backend": backend.name, "model": backend.model, **seen[id(backend)]}
        return out

    @app.get("/healthz", tags=["service"])
    async def healthz(
        backends: bool = Query(True, description="Also ask each role's backend (cached a few seconds)."),
    ) -> JSONResponse:
        def ping() -> bool:
            with db.engine.connect() as conn:
                return conn.execute(sa.text("SELECT 1")).scalar() == 1

        body: dict[str, Any] = {"status": "ok", "version": __version__}
        try:
            body["database"] = await anyio.to_thread.run_sync(ping)
        except Exception as e:  # noqa: BLE001
            body.update(status="error", database=False, error=type(e).__name__)
        if backends:
            if health_cache.get("at", -HEALTH_TTL_S) + HEALTH_TTL_S < time.monotonic():
                health_cache.update(
                    roles=await anyio.to_thread.run_sync(_probe_backends), at=time.monotonic()
                )
            body["roles"] = health_cache["roles"]
            if not all(r["ok"] for r in body["roles"].values()):
                body["status"] = "error"
        else:
            body["roles"] = solver.describe_backends()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

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
            held, rest = await _started(body.problem, **kw)

            async def sse() -> AsyncIterator[str]:
                async for event in _replay(held, rest):
                    yield f"event: {event['event']}\ndata: {dumps(scrub(event))}\n\n"

            return StreamingResponse(sse(), media_type="text/event-stream", headers=_session_header(held))
        result = await _solve(body.problem, **kw)
        if (down := _backend_down(result)) is not None:
            raise down
        return JSONResponse(
            scrub(to_jsonable(_solve_response(result))), headers={SESSION_HEADER: str(result.session_id)}
        )

    model_card = {
        "id": model_name,
        "object": "model",
        "created": 0,
        "owned_by": "reasonflux",
        "root": model_name,
        "parent": None,
    }

    @app.get("/v1/models", tags=["openai"], dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}", tags=["openai"], dependencies=[Depends(authorize)])
    async def model(model_id: str) -> dict[str, Any]:
        if model_id != model_name:
            raise ApiError(
                404,
                f"the model {model_id!r} does not exist; this server serves {model_name!r}",
                code="model_not_found",
                param="model",
            )
        return model_card

    @app.post("/v1/chat/completions", tags=["openai"], dependencies=[Depends(authorize)])
    async def chat_completions(body: oa.ChatCompletionRequest):
        if body.model != model_name:
            raise ApiError(
                404,
                f"the model {body.model!r} does not exist; this server serves {model_name!r}",
                code="model_not_found",
                param="model",
            )
        if (refused := oa.refused(body)) is not None:
            raise ApiError(
                400,
                f"{refused[0]} is not supported: {refused[1]}",
                code="unsupported_parameter",
                param=refused[0],
            )
        if body.n > max_concurrent:
            raise ApiError(
                400,
                f"n {body.n} exceeds this server's {max_concurrent} concurrent sessions",
                code="invalid_value",
                param="n",
            )
        problem = oa.problem_from_messages(body.messages)
        schema = oa.answer_schema(body.response_format)
        kw = _limits(
            problem, body.reasonflux.max_rounds, body.reasonflux.token_budget, "reasonflux.token_budget"
        )
        extras, ignored = oa.sampling_extras(body, solver.backends)
        headers = oa.warning(ignored)
        # n independent sessions: with a seed, each its own (seed, seed+1, ...)
        kws = [
            {
                **kw,
                "answer_schema": schema,
                "config": _sampling(
                    kw["config"],
                    extras,
                    temperature=body.temperature,
                    top_p=body.top_p,
                    seed=None if body.seed is None else body.seed + i,
                ),
            }
            for i in range(body.n)
        ]
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        shown = {"structured": schema is not None, "limit": body.completion_cap}
        if body.stream:
            started = await asyncio.gather(*(_started(problem, **k) for k in kws))
            events = oa.merged([_replay(held, rest) for held, rest in started])
            sids = [_session_header(held) for held, _ in started]
            return StreamingResponse(
                oa.chat_stream(
                    events,
                    body.n,
                    cid,
                    created,
                    model_name,
                    progress=body.progress,
                    include_usage=body.include_usage,
                    **shown,
                ),
                media_type="text/event-stream",
                headers={**headers, **_joined(sids)},
            )
        results = await asyncio.gather(*(_solve(problem, **k) for k in kws))
        for r in results:
            if (down := _backend_down(r)) is not None:
                raise down
        return JSONResponse(
            scrub(oa.chat_response(list(results), cid, created, model_name, **shown)),
            headers={**headers, SESSION_HEADER: ", ".join(str(r.session_id) for r in results)},
        )

    @app.get("/v1/sessions/{session_id}", tags=["sessions"], dependencies=[Depends(authorize)])
    async def session(
        session_id: int = Path(ge=1, le=MAX_ID),
        render: bool = Query(False, description="Add the readable trace text."),
    ):
        data = await anyio.to_thread.run_sync(get_session, db, session_id)
        if render:
            data["trace"] = render_trace(data)
        return JSONResponse(scrub(to_jsonable(data)))

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

    app.add_middleware(_Guard, token=token, max_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    return app


def _joined(headers: list[dict[str, str]]) -> dict[str, str]:
    """One session header naming every session of a request (n of them), in choice order."""
    ids = [h[SESSION_HEADER] for h in headers if SESSION_HEADER in h]
    return {SESSION_HEADER: ", ".join(ids)} if ids else {}


def _session_header(held: list[dict[str, Any]]) -> dict[str, str]:
    sid = next((e.get("session_id") for e in held if e.get("session_id")), None)
    return {SESSION_HEADER: str(sid)} if sid else {}


def _solve_response(r: SolveResult) -> dict[str, Any]:
    return {k: v for k, v in r.to_dict().items() if k in SolveResponse.model_fields}


def header_timeout_protocol(
    timeout_s: float, max_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT
) -> type:
    """uvicorn's h11 protocol, closing a connection whose request headers are not complete within
    timeout_s (uvicorn has no such limit: a client sending a header a minute would hold it forever).

    Idle connections (no request under way) do not crowd out new ones: a client address holding more than
    max_per_client connections, or a server at uvicorn's limit_concurrency, has its longest-idle connection
    closed to make room. Hundreds of idle sockets would otherwise fill the limit, and every client,
    /healthz included, would get 503 until their header timeouts ran out. Only when every connection is
    busy is the new one refused (503, as uvicorn refuses over its limit).
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeaderTimeoutH11(H11Protocol):
        def connection_made(self, transport) -> None:  # type: ignore[override]
            peer = transport.get_extra_info("peername")
            self.client_host = peer[0] if isinstance(peer, tuple) and peer else None
            super().connection_made(transport)
            self.idle_since = self.loop.time()
            self._make_room()
            self._arm_header_timeout()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self.idle_since = self.loop.time()
            self._arm_header_timeout()

        def _idle(self) -> bool:
            return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

        def _make_room(self) -> None:
            others = [c for c in self.connections if c is not self and isinstance(c, HeaderTimeoutH11)]
            mine = [c for c in others if c.client_host == self.client_host]
            for crowd, cap in ((mine, max_per_client), (others, self.limit_concurrency)):
                if cap is None:
                    continue
                open_ = [c for c in crowd if not c.transport.is_closing()]
                excess = len(open_) + 1 - cap
                for c in sorted((c for c in open_ if c._idle()), key=lambda c: c.idle_since)[
                    : max(0, excess)
                ]:
                    c.transport.close()

        def _arm_header_timeout(self) -> None:
            self.loop.call_later(timeout_s, self._header_deadline, self.cycle)

        def _header_deadline(self, cycle_when_armed) -> None:
            if self.cycle is cycle_when_armed and not self.transport.is_closing():  # no new request began
                self.transport.close()

    return HeaderTimeoutH11
