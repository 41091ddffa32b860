"""The app factory: the HTTP service (serve/http/) around one Solver, routes and guard wired together.

`reasonflux serve` runs it; `from serve.app import create_app` is the documented way to embed it
(docs/serving.md). What each route does is in serve/http/__init__.py.
"""

from __future__ import annotations

from fastapi import FastAPI

from kb import __version__
from kb.db import Database
from serve.http.errors import install_error_handlers
from serve.http.guard import Guard
from serve.http.routes import health, openai, solve, templates
from serve.http.service import SolveService
from serve.limits import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_BODY, DEFAULT_MAX_PROBLEM_CHARS
from serve.solver import Solver

MODEL_NAME = "reasonflux"


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
    app.state.solver, app.state.db = solver, db
    app.state.service = SolveService(db, solver, model_name, max_concurrent, max_problem_chars)
    install_error_handlers(app)
    for router in (health.router, solve.router, openai.router, templates.router):
        app.include_router(router)
    app.add_middleware(Guard, token=token, max_bytes=max_body_bytes, body_timeout_s=body_timeout_s)
    return app
