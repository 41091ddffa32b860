"""`reasonflux datasets`: list, show and verify exported dataset versions."""

from __future__ import annotations

import click

from kb.cli import AppContext, pass_app
from kb.output import emit, output_options


@click.group("datasets")
def datasets_group() -> None:
    """Exported dataset versions recorded in the knowledge base."""


@datasets_group.command("list")
@click.option("--kind", type=click.Choice(["dpo", "sft", "templates", "problems"]), default=None)
@output_options
@pass_app
def list_cmd(app: AppContext, kind: str | None, fmt: str) -> None:
    """Every recorded version, oldest first."""
    from kb.datasets import VERSION_COLUMNS, list_versions

    emit(list_versions(app.db(), kind), fmt, columns=VERSION_COLUMNS)


@datasets_group.command("show")
@click.argument("version_id")
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, version_id: str, fmt: str) -> None:
    """One version (id or unique prefix): selection, revision, row counts, file hashes, folder."""
    from kb.datasets import get_version

    emit(get_version(app.db(), version_id), fmt)


@datasets_group.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--no-kb", is_flag=True, help="Check the files against manifest.json only.")
@output_options(csv_ok=False)
@pass_app
def verify_cmd(app: AppContext, directory: str, no_kb: bool, fmt: str) -> None:
    """Re-hash every file and compare with manifest.json and the KB's record; exits non-zero on a mismatch."""
    from kb.datasets import verify

    emit(verify(None if no_kb else app.db(), directory), fmt)


def register(cli: click.Group) -> None:
    cli.add_command(datasets_group)
