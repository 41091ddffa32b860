"""The API's errors: every error, 4xx or 5xx, unknown routes included, in OpenAI's shape
(`{"error": {message, type, code, param}}`), which OpenAI clients turn into typed exceptions.

A body that does not validate is one 400 `invalid_request_error` naming the first bad field in `param`; a
session whose backend is down is a 502 (503 when unreachable), never a 200 whose answer is the error.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kb.errors import ConflictError, KbError, NotFound
from kb.secrets import scrub
from serve.solve_events import SolveResult

SESSION_HEADER = "X-Reasonflux-Session-Id"


class ApiError(Exception):
    """An error answered in OpenAI's shape with STATUS."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str = "invalid_request",
        kind: str = "invalid_request_error",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind
        self.param, self.headers = param, headers


def error_body(message: str, kind: str, code: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape, which OpenAI clients turn into typed exceptions (scrubbed: backend errors may
    echo a key)."""
    return {"error": {"message": scrub(message), "type": kind, "code": code, "param": param}}


def validation_error(errors: list[dict[str, Any]]) -> ApiError:
    """A request's validation errors (FastAPI's RequestValidationError.errors()) as one 400 naming the first
    bad field, as OpenAI and vLLM answer a body they cannot take."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ())]
    param = ".".join(loc[1:] if loc[:1] in (["body"], ["query"], ["path"]) else loc) or None
    kind = first.get("type", "")
    if kind == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "malformed")
        return ApiError(400, f"the request body is not valid JSON: {reason}", code="invalid_json")
    # worded as OpenAI's API words them
    if kind == "extra_forbidden":
        return ApiError(400, f"Unknown parameter: '{param}'.", code="unknown_parameter", param=param)
    if kind == "missing" and param is not None:
        return ApiError(
            400, f"Missing required parameter: '{param}'.", code="missing_required_parameter", param=param
        )
    if param is None:  # the body as a whole: absent, or not a JSON object (or sent without its content type)
        return ApiError(
            400,
            "the request body must be a JSON object (Content-Type: application/json)",
            code="invalid_json",
        )
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'body'}: {e.get('msg')}" for e in errors
    )
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) or kind == "missing" else "invalid_value"
    return ApiError(400, f"invalid request: {problems}", code=code, param=param)


def error_response(
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


def backend_down(r: SolveResult) -> ApiError | None:
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


async def _api_error(_: Request, e: ApiError) -> JSONResponse:
    headers = {**({"WWW-Authenticate": "Bearer"} if e.status == 401 else {}), **(e.headers or {})}
    return error_response(e.status, e.message, e.code, e.kind, headers or None, e.param)


async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
    message = f"no route {request.method} {request.url.path}" if e.status_code == 404 else str(e.detail)
    return error_response(
        e.status_code,
        message,
        _HTTP_CODES.get(e.status_code, "http_error"),
        "invalid_request_error" if e.status_code < 500 else "api_error",
        e.headers,
    )


async def _internal(_: Request, e: Exception) -> JSONResponse:
    return error_response(500, f"internal error: {type(e).__name__}", "internal_error", "api_error")


async def _kb_error(_: Request, e: KbError) -> JSONResponse:
    status = 404 if isinstance(e, NotFound) else 409 if isinstance(e, ConflictError) else 400
    return error_response(status, str(e), type(e).__name__)


async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
    return await _api_error(request, validation_error(list(e.errors())))


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can raise, answered in OpenAI's shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(KbError, _kb_error)
    app.add_exception_handler(RequestValidationError, _invalid)
