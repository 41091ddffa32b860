"""Command-line options shared by the LLM stages (mine, sample, evaluate): one spelling everywhere."""

from __future__ import annotations

from typing import Any

import click


def role_option(role: str, help_text: str):
    return click.option(
        f"--{role}",
        f"{role}_spec",
        default=None,
        metavar="SPEC|NAME",
        help=f"{help_text} SPEC: scripted | transformers:PATH | vllm:PATH | openai:MODEL@URL, "
        f"or a registered navigator or model NAME (default: roles.{role} in --llm-config).",
    )


def llm_stage_options(f):
    """--llm-config, sampling overrides and the runner's options."""
    options = [
        click.option(
            "--llm-config",
            type=click.Path(exists=True, dir_okay=False),
            default=None,
            help="TOML or YAML file with roles, sampling and prompts (secrets: env variables only).",
        ),
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
