"""The one home of the LLM command-line options: `--llm-config`, the role flags (`--navigator`,
`--inference`, `--miner`) and the LLM stages' sampling and runner options, one spelling everywhere
(mine, sample, rollouts, loop, llm check, and serve's solve, serve and eval).

Each command words the help for what the flag means to it; the option's name, type and metavar are
defined here only.
"""

from __future__ import annotations

from typing import Any

import click

SPEC_FORMS = "scripted | transformers:PATH | vllm:PATH | openai:MODEL@URL"
LLM_CONFIG_HELP = "TOML or YAML file with roles, sampling and prompts (secrets: env variables only)."


def llm_config_option(help_text: str = LLM_CONFIG_HELP):
    """--llm-config FILE (parameter llm_config): the roles file of pipelines.llm.config."""
    return click.option(
        "--llm-config", type=click.Path(exists=True, dir_okay=False), default=None, help=help_text
    )


def role_option(role: str, help_text: str, *, dest: str | None = None, forms: bool = True):
    """--ROLE SPEC|NAME (parameter DEST, default ROLE_spec). FORMS: the help also lists the spec forms and
    where the role comes from without the flag."""
    if forms:
        help_text = (
            f"{help_text} SPEC: {SPEC_FORMS}, "
            f"or a registered navigator or model NAME (default: roles.{role} in --llm-config)."
        )
    return click.option(
        f"--{role}", dest or f"{role}_spec", default=None, metavar="SPEC|NAME", help=help_text
    )


def solver_role_options(fn):
    """--llm-config, --navigator, --inference: the same flags on solve, serve and eval."""
    options = [
        llm_config_option("TOML/YAML file with [roles.navigator] and [roles.inference]."),
        role_option(
            "navigator",
            "Navigator: a registered navigator or model name, or transformers:PATH, vllm:PATH, "
            "openai:MODEL@URL, scripted.",
            dest="navigator",
            forms=False,
        ),
        role_option(
            "inference",
            "Inference LLM (same forms as --navigator; default: the navigator's model).",
            dest="inference",
            forms=False,
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def llm_stage_options(f):
    """--llm-config, sampling overrides and the runner's options."""
    options = [
        llm_config_option(),
        click.option(
            "--temperature", type=float, default=None, help="Sampling temperature (overrides config)."
        ),
        click.option("--top-p", type=float, default=None, help="Nucleus sampling (overrides config)."),
        click.option(
            "--max-tokens", type=int, default=None, help="Completion token limit (overrides config)."
        ),
        click.option(
            "--workers",
            type=int,
            default=1,
            show_default=True,
            help="Worker processes claiming units from the database (more machines: run it there too).",
        ),
        click.option("--batch-size", type=int, default=4, show_default=True, help="Units per claim."),
        click.option(
            "--lease",
            "lease_s",
            type=float,
            default=None,
            help="Seconds after which another worker may take over a claimed unit (default 900).",
        ),
        click.option(
            "--max-attempts",
            type=int,
            default=None,
            help="Claims per unit before it is marked failed (default 3).",
        ),
        click.option("--retry-failed", is_flag=True, help="Try the units that failed in earlier runs again."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def runner_kwargs(
    workers: int, batch_size: int, lease_s: float | None, max_attempts: int | None, retry_failed: bool
) -> dict[str, Any]:
    return {
        "workers": workers,
        "batch_size": batch_size,
        "lease_s": lease_s,
        "max_attempts": max_attempts,
        "retry_failed": retry_failed,
    }
