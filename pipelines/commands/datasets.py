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
    """Every recorded version, oldest first, with every folder it was written to."""
    from kb.datasets import VERSION_COLUMNS, list_versions

    emit(list_versions(app.db(), kind), fmt, columns=VERSION_COLUMNS)


@datasets_group.command("show")
@click.argument("version_id")
@output_options(csv_ok=False)
@pass_app
def show_cmd(app: AppContext, version_id: str, fmt: str) -> None:
    """One version (id or unique prefix): selection, revision, row counts, file hashes, every folder it was
    written to (`paths`, in the order written)."""
    from kb.datasets import get_version

    emit(get_version(app.db(), version_id), fmt)


@datasets_group.command("verify")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--no-kb", is_flag=True, help="Check the files against manifest.json only.")
@output_options(csv_ok=False)
@pass_app
def verify_cmd(app: AppContext, directory: str, no_kb: bool, fmt: str) -> None:
    """Re-hash every data file and compare with manifest.json and the KB's record; exits non-zero on a
    mismatch. An edited dataset card (README.md) or an unlisted file outside the data folders is a
    warning (on stderr), not a failure."""
    from kb.dataset_verify import verify

    result = verify(None if no_kb else app.db(), directory)
    for line in result["warnings"]:
        click.echo(f"warning: {line}", err=True)
    emit(result, fmt)


@datasets_group.command("push")
@click.argument("directory", type=click.Path(file_okay=False, exists=True))
@click.argument("repo")
@click.option("--private", is_flag=True, help="Create the repo private.")
@output_options(csv_ok=False)
def push_cmd(directory: str, repo: str, private: bool, fmt: str) -> None:
    """Upload export DIRECTORY (verified against its manifest first) to the Hub dataset repo REPO.

    Needs a Hugging Face token (`hf auth login`, or HF_TOKEN); HF_ENDPOINT selects another server.
    """
    from kb.dataset_hub import push_to_hub

    emit(push_to_hub(directory, repo, private=private), fmt)


def register(cli: click.Group) -> None:
    cli.add_command(datasets_group)
