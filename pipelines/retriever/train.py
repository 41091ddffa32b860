"""`reasonflux retriever train` as one pipeline run (stage "retriever-train"): export the selected pairs as a
dataset version, fine-tune the base model on them, register the folder under a new name and (by default)
embed the library with it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kb import config
from kb.embeddings import model_path
from kb.errors import ConflictError
from kb.runs import pipeline_run
from pipelines.embed import embed_templates
from pipelines.retriever.fit import fit
from pipelines.retriever.fit_config import HyperParams
from pipelines.retriever.pairs import export_pairs, pair_params, read_pairs
from pipelines.retriever.registry import check_name, default_folder, register

if TYPE_CHECKING:
    from kb.db import Database


def _free_folder(path: Path, option: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConflictError(f"{path} exists and is not empty; choose another {option}")


def train_retriever(
    db: Database,
    *,
    name: str,
    base_model: str | None = None,
    out: str | Path | None = None,
    pairs_out: str | Path | None = None,
    hp: HyperParams | None = None,
    embed: bool = True,
    **pair_options: Any,
) -> dict[str, Any]:
    """Export pairs, fine-tune, register NAME, embed the library with it; returns what was made."""
    check_name(db, name)
    hp = (hp or HyperParams()).check()
    base = config.embed_model_name(base_model)
    base_path = model_path(base, db)
    pair_options["negatives_model"] = pair_options.get("negatives_model") or base
    params = pair_params(**pair_options)
    folder = Path(out) if out else default_folder(name)
    pairs_folder = Path(pairs_out) if pairs_out else folder.with_name(folder.name + "-pairs")
    _free_folder(folder, "--out")
    run_params = {
        "name": name,
        "base_model": base,
        "out": str(folder),
        "pairs": params,
        "hyper_params": hp.to_dict(),
        "embed": embed,
    }
    with pipeline_run(db, "retriever-train", run_params) as (run_id, counts):
        manifest = export_pairs(db, pairs_folder, run_id=run_id, **pair_options)
        pairs, templates = read_pairs(pairs_folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            metrics = fit(base_path, pairs, templates, hp, tmp)
            _free_folder(folder, "--out")
            if folder.exists():
                folder.rmdir()
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        metrics["pairs_by_source"] = manifest["pairs_by_source"]
        row = register(
            db,
            name=name,
            path=folder,
            base_model=base,
            dataset_version_id=manifest["id"],
            hyper_params=hp.to_dict(),
            metrics=metrics,
            run_id=run_id,
        )
        counts.update(pairs=len(pairs), steps=metrics["steps"], dataset_version=manifest["id"])
        if embed:
            counts["embedded"] = embed_templates(db, name, run_id=run_id)
    return {
        "run_id": run_id,
        "name": name,
        "path": str(folder),
        "base_model": base,
        "dataset_version": manifest["id"],
        "pairs_path": str(pairs_folder),
        "metrics": metrics,
        "embedded": counts.get("embedded", 0),
        "registered_at": row["created_at"],
    }
