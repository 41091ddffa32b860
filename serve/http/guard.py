"""The auth-and-limits guard: an ASGI middleware in front of every route (the bearer token, the body's
size, arrival time and storability), and the bearer scheme as the OpenAPI schema shows it."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable
from typing import Any

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kb import storable
from kb.output import dumps
from serve.http.errors import error_body
from serve.limits import DEFAULT_BODY_TIMEOUT_S

PUBLIC_PATHS = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}

_BEARER = HTTPBearer(auto_error=False, description="The token given to `reasonflux serve --token`.")


def documented_bearer(_: HTTPAuthorizationCredentials | None = Depends(_BEARER)) -> None:
    """Puts the bearer scheme in the OpenAPI schema of the routes that need it; checks nothing (Guard does,
    before any route runs)."""


class Guard:
    """Before any handler: the bearer token (when configured), then the body size limit (chunked too) and
    the body's storability.

    The one place the token is checked: here rather than in a dependency so that an unauthenticated request
    learns nothing, not even whether its body would have parsed (the routes' `documented_bearer` only puts
    the scheme in the OpenAPI schema).
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
            problem = check_token(headers.get(b"authorization", b"").decode("latin-1"), self.token)
            if problem:
                return await send_error(
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
                return await send_error(
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
            return await send_error(
                send, 400, "invalid_request_error", code, f"{where} {problem}", param=where
            )
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Callable) -> None:
        await send_error(
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


def check_token(header: str, token: str) -> str | None:
    """What is wrong with an Authorization header, or None when it carries the token."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        # worded so the secret scrubber (which hides what follows "Bearer ") leaves it readable
        return "You didn't provide an API key. Send it in the Authorization header, scheme Bearer."
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return "Incorrect API key provided."
    return None


async def send_error(
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
