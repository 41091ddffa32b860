"""`reasonflux serve`: the HTTP service (FastAPI on uvicorn)."""

from __future__ import annotations

import ipaddress
from typing import Any

import click

from kb.cli.context import AppContext, pass_app
from serve.app import DEFAULT_MAX_BODY, DEFAULT_MAX_PROBLEM_CHARS, create_app
from serve.commands.common import build_solver, pop_solver_kwargs, solver_options


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--token",
    envvar="REASONFLUX_API_TOKEN",
    default=None,
    show_envvar=True,
    help="Require `Authorization: Bearer TOKEN` on every route but /healthz.",
)
@click.option(
    "--max-concurrent",
    type=click.IntRange(1),
    default=32,
    show_default=True,
    help="Sessions solved at once; more requests wait.",
)
@click.option("--max-body-bytes", type=click.IntRange(256), default=DEFAULT_MAX_BODY, show_default=True)
@click.option(
    "--max-problem-chars", type=click.IntRange(1), default=DEFAULT_MAX_PROBLEM_CHARS, show_default=True
)
@solver_options
@pass_app
def serve_cmd(
    app: AppContext,
    host: str,
    port: int,
    token: str | None,
    max_concurrent: int,
    max_body_bytes: int,
    max_problem_chars: int,
    **kwargs: Any,
) -> None:
    """Serve the solver over HTTP: POST /v1/solve, POST /v1/chat/completions (model "reasonflux"),
    GET /v1/sessions/ID, GET /v1/templates/search, GET /healthz; schema at /openapi.json.

    --max-rounds and --max-tokens are also the most a request may ask for.
    """
    import uvicorn

    if not _is_loopback(host) and not token:
        raise click.UsageError(
            f"refusing to serve on {host} without a token: set --token or REASONFLUX_API_TOKEN"
        )
    options = pop_solver_kwargs(kwargs)
    db = app.db()
    solver, _ = build_solver(db, options)
    api = create_app(
        db,
        solver,
        token=token,
        max_body_bytes=max_body_bytes,
        max_concurrent=max_concurrent,
        max_problem_chars=max_problem_chars,
    )
    click.echo(f"serving on http://{host}:{port} (auth {'on' if token else 'off'}); Ctrl-C stops", err=True)
    try:
        uvicorn.run(api, host=host, port=port, log_level="info")
    finally:
        solver.close()


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
