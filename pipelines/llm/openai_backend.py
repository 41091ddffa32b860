"""Any OpenAI-compatible chat server (vLLM, sglang, OpenAI): many requests in flight, bounded.

Requests of a batch run on a thread pool of `max_concurrency` workers. Each request is retried on 429,
5xx, timeouts and connection errors with exponential backoff (honouring Retry-After), up to
`max_retries`; a request that still fails comes back as Completion.error. The API key is read from the
environment variable named by `api_key_env` and kept out of every log and row.

With `structured_output`, a request's JSON schema (its decoding form, `pipelines.llm.structured`) goes as
`response_format` in the dialect configured, or with `true` in the server's own: `json_schema` first,
and once a server refuses that (an answer naming `response_format`), `json_object`, which the backend
then keeps (`dialect`, logged once and recorded with every call). A refused dialect is never retried as
if the failure were transient.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import httpx

from kb.errors import KbError
from kb.secrets import register_secret, scrub
from pipelines.llm.base import SAMPLING_EXTRAS, ChatRequest, Completion
from pipelines.llm.registry import register_backend
from pipelines.llm.structured import (
    AUTO,
    DIALECTS,
    decoding_schema,
    refuses_response_format,
    response_format,
    structured_mode,
)

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # when neither the role nor OPENAI_BASE_URL gives one


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str | None = None,
        max_concurrency: int = 16,
        timeout_s: float = 120.0,
        max_retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        extra_body: dict | None = None,
        structured_output: bool | str = False,
        sampling_extras: bool = True,
        **_: Any,
    ):
        if "api_key" in _:
            raise KbError(
                "openai backend: pass the key through an environment variable (api_key_env), "
                "never as an option"
            )
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.max_concurrency = max(1, int(max_concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.extra_body = dict(extra_body or {})
        # vLLM, sglang and llama.cpp's server take top_k/min_p/repetition_penalty; OpenAI's refuses them
        self.sampling_extras = SAMPLING_EXTRAS if sampling_extras else ()
        # A request's JSON schema goes as response_format: None (never), AUTO or a dialect (structured.py).
        self.structured = structured_mode(structured_output, where="openai backend: structured_output")
        # The dialect the server takes: as configured, or (AUTO) learnt from its first answers.
        self.dialect: str | None = None if self.structured == AUTO else self.structured
        self._refused: set[str] = set()
        self._dialect_lock = threading.Lock()
        headers = {"Content-Type": "application/json"}
        if api_key_env:
            key = os.environ.get(api_key_env)
            if not key:
                raise KbError(f"openai backend: environment variable {api_key_env} (the API key) is not set")
            register_secret(key)
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(
                max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
            ),
        )
        self._pool = _DaemonPool(self.max_concurrency)

    def __repr__(self) -> str:  # never show headers (the key)
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def _body(self, req: ChatRequest, dialect: str | None) -> dict[str, Any]:
        p = req.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": req.messages,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        body.update({k: v for k, v in p.extras().items() if k in self.sampling_extras})
        if dialect is not None:
            body["response_format"] = response_format(dialect, decoding_schema(req.response_schema))
        body.update(self.extra_body)
        return body

    def _dialect_for(self, req: ChatRequest) -> str | None:
        """The dialect this request is sent in: None without a schema or the setting."""
        if self.structured is None or req.response_schema is None:
            return None
        with self._dialect_lock:
            return self.dialect or next((d for d in DIALECTS if d not in self._refused), DIALECTS[-1])

    def _refusal(self, dialect: str) -> str | None:
        """After the server refused DIALECT: the dialect to try next (AUTO, once), or None (give up)."""
        with self._dialect_lock:
            if self.structured != AUTO or self.dialect is not None:
                return None
            self._refused.add(dialect)
            return next((d for d in DIALECTS if d not in self._refused), None)

    def _accepted(self, dialect: str) -> None:
        with self._dialect_lock:
            if self.dialect is None:
                self.dialect = dialect
                log.warning(
                    "openai backend %s: structured output as response_format %r%s",
                    self.base_url,
                    dialect,
                    f" (the server refused {', '.join(sorted(self._refused))})" if self._refused else "",
                )

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            retry_after = response.headers.get("retry-after")
            if retry_after:
                try:
                    return min(float(retry_after), self.max_backoff_s)
                except ValueError:
                    pass
        base = min(self.backoff_s * (2**attempt), self.max_backoff_s)
        return base * (0.5 + random.random() / 2)  # jitter so many clients do not retry in lockstep

    def _one(self, req: ChatRequest) -> Completion:
        t0 = time.perf_counter()
        dialect = self._dialect_for(req)
        body = self._body(req, dialect)
        error, attempt = "no attempt made", 0
        while True:
            response = None
            try:
                response = self._client.post(f"{self.base_url}/chat/completions", json=body)
                if response.status_code == 200:
                    if dialect is not None:
                        self._accepted(dialect)
                    return _completion(response.json(), (time.perf_counter() - t0) * 1000, dialect)
                error = scrub(f"HTTP {response.status_code}: {response.text[:300]}")  # servers echo headers
                if dialect is not None and refuses_response_format(response.status_code, response.text):
                    dialect = self._refusal(dialect)
                    if dialect is None:  # not transient: the same body would be refused again
                        error = self._refused_error(error)
                        break
                    body = self._body(req, dialect)
                    continue  # another dialect is a new request, not a retry
                if response.status_code not in RETRY_STATUS:
                    break
            except (httpx.TimeoutException, httpx.TransportError) as e:
                error = f"{type(e).__name__}: {e}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                error = f"malformed response: {type(e).__name__}: {e}"
                break
            if attempt >= self.max_retries:
                break
            time.sleep(self._delay(attempt, response))
            attempt += 1
        return Completion(
            text="",
            latency_ms=(time.perf_counter() - t0) * 1000,
            error=scrub(f"{error} (after {attempt + 1} attempts)"),
        )

    def _refused_error(self, error: str) -> str:
        tried = ", ".join(sorted(self._refused)) if self.structured == AUTO else self.structured
        others = " or ".join(f'"{d}"' for d in DIALECTS if d != self.structured)
        hint = (
            f"set structured_output = {others}"
            if self.structured != AUTO
            else "set structured_output = false"
        ) + " for this role"
        return f"the server refused response_format ({tried}): {error}; {hint}"

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        if len(requests) == 1:
            return [self._one(requests[0])]
        return list(self._pool.map(self._one, requests))

    def close(self) -> None:
        self._pool.shutdown()
        self._client.close()


class _DaemonPool:
    """Up to N requests in flight on daemon threads. ThreadPoolExecutor's threads are joined at exit, so a
    command stopped by Ctrl-C or SIGTERM would wait out every request in flight (up to timeout_s)."""

    def __init__(self, n: int):
        self.n = n
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, arg = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(arg))
                except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
                    future.set_exception(e)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        with self._lock:
            while len(self._threads) < min(self.n, len(items)):
                t = threading.Thread(target=self._work, daemon=True, name=f"openai-{len(self._threads)}")
                t.start()
                self._threads.append(t)
        futures = []
        for item in items:
            futures.append(Future())
            self._queue.put((futures[-1], fn, item))
        return [f.result() for f in futures]

    def shutdown(self) -> None:
        with self._lock:
            for _ in self._threads:
                self._queue.put(None)
            self._threads = []  # a later map() starts fresh threads


def _completion(data: dict[str, Any], latency_ms: float, dialect: str | None = None) -> Completion:
    choice = data["choices"][0]
    text = choice["message"]["content"] or ""
    usage = data.get("usage") or {}
    return Completion(
        text=text,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        latency_ms=latency_ms,
        structured=dialect,
    )


@register_backend("openai", options=OpenAIBackend)
def _factory(**options: Any) -> OpenAIBackend:
    return OpenAIBackend(**options)
