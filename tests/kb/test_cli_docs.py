"""docs/cli.md is regenerated from the code; this fails when someone forgot."""

from pathlib import Path

from kb.cli.help_docs import render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def test_cli_reference_is_current():
    assert DOCS.exists(), "run: python -m kb.cli.help_docs > docs/cli.md"
    assert DOCS.read_text() == render(), "docs/cli.md is stale; run: python -m kb.cli.help_docs > docs/cli.md"
