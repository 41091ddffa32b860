"""`reasonflux serve`: the HTTP service (FastAPI on uvicorn)."""

from __future__ import annotations

import ipaddress
import signal
from typing import Any

import click

from kb.cli.context import AppContext, pass_app
from kb.signals import Terminated
from serve.commands.common import build_solver, pop_solver_kwargs, solver_options
from serve.limits import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_PROBLEM_CHARS,
)


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
@click.option(
    "--header-timeout",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Seconds a client has to send its request headers.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(0.1),
    default=DEFAULT_BODY_TIMEOUT_S,
    show_default=True,
    help="Seconds a client has to send its request body (else 408).",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1),
    default=256,
    show_default=True,
    help="Open connections at most; idle ones are closed to make room, else more are answered 503.",
)
@click.option(
    "--max-connections-per-client",
    type=click.IntRange(1),
    default=DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    show_default=True,
    help="Open connections of one client address at most; its idle ones are closed to make room.",
)
@click.option(
    "--served-model-name",
    default="reasonflux",
    show_default=True,
    help="The model id OpenAI clients ask for (`model`) and GET /v1/models lists.",
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
    header_timeout: float,
    body_timeout: float,
    max_connections: int,
    max_connections_per_client: int,
    served_model_name: str,
    **kwargs: Any,
) -> None:
    """Serve the solver over HTTP: POST /v1/solve, POST /v1/chat/completions and GET /v1/models (model
    "reasonflux" unless --served-model-name), GET /v1/sessions/ID, GET /v1/templates/search, GET /healthz;
    schema at /openapi.json.

    --max-rounds and --token-budget are the defaults and the most a session may be given (a chat request's
    reasonflux.max_rounds and reasonflux.token_budget, /v1/solve's max_rounds and max_tokens). Errors are
    OpenAI-shaped;
    a session whose backend is down answers 502/503. SIGTERM stops it like Ctrl-C.
    """
    import uvicorn

    from serve.app import create_app
    from serve.http.protocol import header_timeout_protocol

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
        body_timeout_s=body_timeout,
        model_name=served_model_name,
    )
    click.echo(
        f"serving on http://{host}:{port} (auth {'on' if token else 'off'}); Ctrl-C or SIGTERM stops",
        err=True,
    )
    server = _server_class()(
        uvicorn.Config(
            api,
            host=host,
            port=port,
            log_level="info",
            http=header_timeout_protocol(header_timeout, max_connections_per_client),
            timeout_keep_alive=5,
            limit_concurrency=max_connections,
        )
    )
    try:
        server.run()
    finally:
        solver.close()
    # uvicorn stops gracefully on SIGINT/SIGTERM (sessions in flight finish) and returns; the command
    # then ends as Ctrl-C or SIGTERM end every command (exit 130 / 143).
    if server.stopped_by == signal.SIGTERM:
        raise Terminated()
    if server.stopped_by == signal.SIGINT:
        raise KeyboardInterrupt()


def _server_class() -> type:
    """uvicorn's Server, remembering which signal stopped it (built here: uvicorn loads only to serve)."""
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by: int | None = None

        def handle_exit(self, sig: int, frame) -> None:
            self.stopped_by = self.stopped_by or sig
            super().handle_exit(sig, frame)

    return Server


def register(cli: click.Group) -> None:
    cli.add_command(serve_cmd)
