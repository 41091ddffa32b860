"""Options shared by solve, serve and eval: which models, and the solver's limits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from kb.retrieval_modes import MODES
from pipelines.llm.cli_options import solver_role_options
from serve.solver_config import SolverConfig

if TYPE_CHECKING:
    from kb.db import Database
    from serve.solver import Solver
    from serve.solver_roles import Roles

_DEFAULTS = SolverConfig()
LIMIT_KEYS = (
    "max_rounds",
    "max_steps",
    "token_budget",
    "max_seconds",
    "parse_retries",
    "top_k",
    "plan_hints",
    "retrieval_mode",
)


def solver_options(fn):
    """Backend flags plus --max-rounds, --token-budget, --max-tokens, --timeout, ... (defaults from SolverConfig)."""
    opts = [
        click.option(
            "--max-rounds",
            type=click.IntRange(1),
            default=_DEFAULTS.max_rounds,
            show_default=True,
            help="Step rounds per session (retrieve + instantiate + evaluate).",
        ),
        click.option(
            "--max-steps",
            type=click.IntRange(1),
            default=_DEFAULTS.max_steps,
            show_default=True,
            help="Longest trajectory the navigator may plan or grow to.",
        ),
        click.option(
            "--token-budget",
            type=click.IntRange(1),
            default=_DEFAULTS.token_budget,
            show_default=True,
            help="Prompt + completion tokens per session, both roles.",
        ),
        click.option(
            "--max-tokens",
            type=click.IntRange(1),
            default=None,
            help="Completion tokens of one LLM call, both roles (as in sample/evaluate; default: the role's "
            f"config, else {_DEFAULTS.navigator_params.max_tokens}).",
        ),
        click.option(
            "--timeout",
            "max_seconds",
            type=click.FloatRange(min=0, min_open=True),
            default=_DEFAULTS.max_seconds,
            show_default=True,
            help="Wall time per session, seconds.",
        ),
        click.option(
            "--parse-retries",
            type=click.IntRange(0),
            default=_DEFAULTS.parse_retries,
            show_default=True,
            help="Extra navigator attempts after an unparseable reply.",
        ),
        click.option(
            "--top-k",
            type=click.IntRange(1),
            default=_DEFAULTS.top_k,
            show_default=True,
            help="Templates retrieved per step.",
        ),
        click.option(
            "--plan-hints",
            type=click.IntRange(0),
            default=_DEFAULTS.plan_hints,
            show_default=True,
            help="Templates retrieved for the problem and shown in the plan request (sample's --hint-k).",
        ),
        click.option(
            "--retrieval-mode",
            type=click.Choice(MODES),
            default=_DEFAULTS.retrieval_mode,
            show_default=True,
            help="How steps find templates in the KB.",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return solver_role_options(fn)


def pop_solver_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Take the solver options out of a command's kwargs."""
    return {k: kwargs.pop(k) for k in (*LIMIT_KEYS, "max_tokens", "llm_config", "navigator", "inference")}


def build_solver(db: Database, options: dict[str, Any], *, run_id: int | None = None) -> tuple[Solver, Roles]:
    from serve.solver_roles import resolve_roles  # the database layer: not for --help

    roles = resolve_roles(
        db,
        llm_config=options["llm_config"],
        navigator=options["navigator"],
        inference=options["inference"],
        navigator_default=_DEFAULTS.navigator_params,
        inference_default=_DEFAULTS.inference_params,
        max_tokens=options.get("max_tokens"),
    )
    limits = {k: options[k] for k in LIMIT_KEYS}
    config = SolverConfig(**limits).with_overrides(
        navigator_params=roles.navigator_params, inference_params=roles.inference_params
    )
    from serve.solver import Solver as _Solver  # the solver's stack loads only when a command runs one

    solver = _Solver(db, roles.navigator, roles.inference, config, run_id=run_id)
    solver.warm_up()
    return solver, roles
