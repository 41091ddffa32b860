"""Micro-batching in front of a backend, so concurrent sessions reach the model together.

Each solver session asks for one completion at a time. A `Batcher` collects the
requests of concurrent sessions and sends them as one `generate` call. It waits
for more only while some active session could still submit (one that is neither
in this batch nor waiting on a batch in flight), and never longer than a short
window, so a lone session pays no batching delay. Several batches may be in
flight at once, so a slow batch never holds up the next. A batched server (vLLM, an OpenAI-compatible one,
the transformers backend) then sees the sessions' calls side by side.

The same backend instance gets the same batcher (`batchers_for`), so a model that
plays both navigator and inference batches both roles' calls together.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipelines.llm.base import Backend, ChatRequest, Completion

DEFAULT_WINDOW_MS = 10.0
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_INFLIGHT = 8
# In-process models run one generate at a time: more batches in flight would only queue at the
# model's lock, while requests left in the batcher join the next (bigger) batch.
SERIAL_BACKENDS = ("transformers", "vllm")


class Batcher:
    """Backend wrapper: `submit` returns a Future per request; `generate` blocks like any backend."""

    def __init__(
        self,
        backend: Backend,
        *,
        window_ms: float = DEFAULT_WINDOW_MS,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_inflight: int | None = None,
    ):
        self.backend = backend
        if max_inflight is None:
            max_inflight = 1 if backend.name in SERIAL_BACKENDS else DEFAULT_MAX_INFLIGHT
        self.name, self.model = backend.name, backend.model
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[ChatRequest, Future] | None] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix=f"batch-{backend.name}")
        self._inflight = threading.BoundedSemaphore(max_inflight)
        self._state = threading.Lock()
        self._active = 0  # sessions registered with `session()`
        self._waiting = 0  # requests handed to the backend and not yet answered
        self.batches = 0  # statistics: how many generate calls and requests went out
        self.requests = 0
        self._closed = False
        self._thread = threading.Thread(target=self._collect, name=f"batcher-{backend.name}", daemon=True)
        self._thread.start()

    def submit(self, request: ChatRequest) -> Future:
        if self._closed:
            raise RuntimeError("batcher is closed")
        fut: Future = Future()
        self._queue.put((request, fut))
        return fut

    def generate(self, requests: list[ChatRequest]) -> list[Completion]:
        return [f.result() for f in [self.submit(r) for r in requests]]

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Marks a session as active: while it may still submit, a batch waits (a little) for it."""
        with self._state:
            self._active += 1
        try:
            yield
        finally:
            with self._state:
                self._active -= 1

    def _others(self, batch_len: int) -> int:
        """Active sessions that could still add to this batch."""
        with self._state:
            return self._active - self._waiting - batch_len

    def _collect(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                try:  # whatever is already queued joins at once
                    item = self._queue.get_nowait()
                except queue.Empty:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._others(len(batch)) <= 0:
                        break
                    try:
                        item = self._queue.get(timeout=min(remaining, 0.001))
                    except queue.Empty:
                        continue
                if item is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(item)
            with self._state:  # from now on these sessions wait on the backend and cannot add more
                self._waiting += len(batch)
            self._inflight.acquire()  # back-pressure: at most max_inflight batches at the backend
            self._pool.submit(self._run, batch)

    def _run(self, batch: list[tuple[ChatRequest, Future]]) -> None:
        live = [(r, f) for r, f in batch if f.set_running_or_notify_cancel()]  # a timed-out session cancelled
        completions: list[Completion] = []
        error: BaseException | None = None
        try:
            if live:
                with self._state:
                    self.batches += 1
                    self.requests += len(live)
                completions = self.backend.generate([r for r, _ in live])
                if len(completions) != len(live):
                    raise RuntimeError(
                        f"backend returned {len(completions)} completions for {len(live)} requests"
                    )
        except BaseException as e:  # noqa: BLE001 - delivered to every waiting session
            error = e
        finally:
            with self._state:
                self._waiting -= len(batch)
            self._inflight.release()
        for i, (_, f) in enumerate(live):
            if error is not None:
                f.set_exception(error)
            else:
                f.set_result(completions[i])

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def stats(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "requests": self.requests,
            "mean_batch": (self.requests / self.batches) if self.batches else 0.0,
        }


def batchers_for(*backends: Backend, **options: Any) -> list[Batcher]:
    """One batcher per distinct backend instance, in order: the same instance twice shares one."""
    made: dict[int, Batcher] = {}
    out = []
    for b in backends:
        if isinstance(b, Batcher):
            out.append(b)
            continue
        if id(b) not in made:
            made[id(b)] = Batcher(b, **options)
        out.append(made[id(b)])
    return out
