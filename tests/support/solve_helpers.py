"""Shared by the solver, sessions, HTTP and eval tests: the HTTP service started on a loopback port (the few
templates they solve with: demo.solve_templates)."""

from __future__ import annotations

import socket
import threading
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """The app around a Solver of NAVIGATOR (and INFERENCE), served by uvicorn on a thread; close() stops it."""

    def __init__(
        self,
        db,
        navigator,
        inference=None,
        *,
        header_timeout_s=None,
        max_per_client=None,
        limit_concurrency=None,
        **app_kw,
    ):
        import uvicorn

        from serve.app import create_app
        from serve.http.protocol import header_timeout_protocol
        from serve.solver import Solver, SolverConfig

        self.solver = Solver(
            db, navigator, inference or navigator, SolverConfig(max_rounds=6, token_budget=20_000)
        )
        app = create_app(db, self.solver, max_body_bytes=4096, **app_kw)
        port = _free_port()
        extra = (
            {"http": header_timeout_protocol(header_timeout_s, *([max_per_client] if max_per_client else []))}
            if header_timeout_s
            else {}
        )
        if limit_concurrency:
            extra["limit_concurrency"] = limit_concurrency
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **extra)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        self.port, self.url = port, f"http://127.0.0.1:{port}"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.solver.close()
