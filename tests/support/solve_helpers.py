"""Shared by the solver, sessions, HTTP and eval tests: a few templates in the KB, embedded, and the HTTP
service started on a loopback port."""

from __future__ import annotations

import socket
import threading
import time

from kb.templates import TemplateSpec, create_template

TEMPLATES = [
    (
        "Sequences",
        "Arithmetic",
        "Arithmetic series sum",
        "Sum of an arithmetic sequence with first term and common difference",
        ["Find first term a and difference d", "Use S = n/2 (2a + (n-1) d)"],
        ["sequence"],
    ),
    (
        "Sequences",
        "Arithmetic",
        "Telescoping sum",
        "Cancel consecutive terms of a sum whose terms are differences",
        ["Write each term as f(k+1) - f(k)", "Cancel the middle terms"],
        ["sequence", "sum"],
    ),
    (
        "Algebra",
        "Equations",
        "Quadratic formula",
        "Solve a quadratic equation ax^2+bx+c=0 with the formula",
        ["Compute the discriminant", "Apply x = (-b ± sqrt(D)) / 2a"],
        ["quadratic"],
    ),
    (
        "Algebra",
        "Equations",
        "Vieta's formulas",
        "Relate the roots of a polynomial to its coefficients",
        ["Sum of roots is -b/a", "Product of roots is c/a"],
        ["quadratic", "roots"],
    ),
]


def add_templates(db) -> dict[str, int]:
    from pipelines.embed import embed_templates

    ids = {}
    with db.session() as s:
        for cat, sec, name, desc, steps, tags in TEMPLATES:
            v = create_template(
                s,
                TemplateSpec(
                    name=name,
                    category=cat,
                    section=sec,
                    description=desc,
                    steps=steps,
                    tags=tags,
                    application_scope=desc,
                ),
            )
            ids[name] = v.id
        s.commit()
    embed_templates(db)
    return ids


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

        from serve.app import create_app, header_timeout_protocol
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
