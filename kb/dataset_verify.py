"""Verifying a dataset version folder: every data file against its manifest's sha256, the card (an edited
card is a warning), files the manifest does not list, and (with a database) the KB's record of the version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kb.datasets import (
    CARD,
    MANIFEST,
    VerificationError,
    get_version,
    normalized_row_counts,
    read_manifest,
    sha256_file,
)
from kb.db import Database
from kb.errors import NotFound


def verify(db: Database | None, folder: str | Path) -> dict[str, Any]:
    """Re-hash every data file; compare with manifest.json and with the KB's row. Raises VerificationError.

    A changed, missing or unlisted data file is an error. The card (README.md) is documentation that
    people edit: a changed or missing card, and unlisted files outside the data folders, come back
    as `warnings` in the result.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise VerificationError(f"{manifest_path}: no manifest; not a dataset version folder")
    manifest = read_manifest(manifest_path)
    files = dict(manifest.get("files") or {})
    card = dict(manifest.get("card") or {})
    if CARD in files:  # format 1 listed the card among the files
        card[CARD] = files.pop(CARD)
    for name, digest in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            raise VerificationError(f"{path}: listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != digest:
            raise VerificationError(f"{path}: sha256 {actual} does not match the manifest ({digest})")
    card_warnings = _card_warnings(folder, card)
    warnings = card_warnings + _unlisted(folder, set(files) | set(card))
    result = {
        "id": manifest.get("id"),
        "kind": manifest.get("kind"),
        "files": len(files),
        "manifest": "ok",
        "card": "edited" if card_warnings else "ok",
        "warnings": warnings,
    }
    if db is not None:
        _check_against_kb(db, folder, manifest_path, manifest, files)
        result["kb"] = "ok"
    return result


def _card_warnings(folder: Path, card: dict[str, str]) -> list[str]:
    out = []
    for name, digest in sorted(card.items()):
        path = folder / name
        if not path.is_file():
            out.append(f"{path}: the dataset card is missing (the data files are intact)")
        elif sha256_file(path) != digest:
            out.append(f"{path}: the dataset card was edited since the export (the data files are intact)")
    return out


def _unlisted(folder: Path, listed: set[str]) -> list[str]:
    """Files the manifest does not list: an error inside a data folder (loaders would read them as
    data), a warning elsewhere (one per top-level entry, e.g. a .git folder of a Hub clone)."""
    data_dirs = {Path(n).parts[0] for n in listed if len(Path(n).parts) > 1}
    warned, out = set(), []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if not path.is_file() or rel in listed or rel == MANIFEST:
            continue
        top = rel.split("/")[0]
        if top in data_dirs:
            raise VerificationError(f"{path}: not listed in the manifest (loaders would read it as data)")
        if top not in warned:
            warned.add(top)
            out.append(f"{folder / top}: not listed in the manifest (not part of the dataset)")
    return out


def _check_against_kb(db: Database, folder: Path, manifest_path: Path, manifest: dict, files: dict) -> None:
    try:
        row = get_version(db, str(manifest.get("id")))
    except NotFound:
        raise VerificationError(
            f"{manifest_path}: dataset version {manifest.get('id')} is not recorded in this knowledge base"
        ) from None
    if row["id"] != manifest.get("id"):
        raise VerificationError(
            f"{manifest_path}: id {manifest.get('id')} is not recorded in this knowledge base"
        )
    for key in ("kind", "params", "schema_revision", "row_counts"):
        recorded, stated = row[key], manifest.get(key)
        if key == "row_counts":  # the same counts, whichever vocabulary wrote them
            recorded, stated = (
                normalized_row_counts(row["kind"], recorded),
                normalized_row_counts(row["kind"], stated),
            )
        if recorded != stated:
            raise VerificationError(
                f"{manifest_path}: {key} differs from the knowledge base's record of {row['id']}"
            )
    recorded = {k: v for k, v in (row["files"] or {}).items() if k != CARD}
    if set(recorded) != set(files):
        raise VerificationError(
            f"{manifest_path}: files differ from the knowledge base's record of {row['id']}"
        )
    for name, digest in sorted(recorded.items()):
        if files.get(name) != digest:
            raise VerificationError(f"{folder / name}: hash differs from the knowledge base's record")
