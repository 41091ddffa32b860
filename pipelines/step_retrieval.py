"""Retrieval for a planned step: the one way a step's template is found, in sampling and in the solver.

The vector side matches the step's template phrase alone (as ReasonFlux matches template names), the
full-text side the phrase and the step text (`PlanStep.query`). Phrase vectors are cached: navigators
repeat template names, and `prime_template_names` embeds every active template's name in one batch,
so a navigator that names a template exactly never waits for the embedding model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import sqlalchemy as sa

from kb import config
from kb.db import Database
from kb.retrieval import TemplateHit, search_many, search_templates

MAX_PHRASES = 16_384
BATCH = 64


def normalize(phrase: str) -> str:
    # The default embedding model is uncased, so case folding loses nothing and shares entries.
    return " ".join(phrase.split()).lower()


class PhraseVectors:
    """A bounded LRU of (model, phrase) -> read-only vector; safe to share between threads."""

    def __init__(self, maxsize: int = MAX_PHRASES):
        self.maxsize = maxsize
        self._vectors: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def _lookup(self, key: tuple[str, str]) -> Any | None:
        with self._lock:
            vector = self._vectors.get(key)
            if vector is not None:
                self._vectors.move_to_end(key)
            return vector

    def _store(self, model: str, phrases: list[str], vectors: Any) -> None:
        with self._lock:
            for phrase, vector in zip(phrases, vectors):
                vector.setflags(write=False)
                self._vectors[(model, phrase)] = vector
            while len(self._vectors) > self.maxsize:
                self._vectors.popitem(last=False)

    def get(self, phrase: str, model: str | None = None, db: Any = None) -> Any:
        """DB: where a registered retriever's name is looked up (default: the default database)."""
        from kb.embeddings import get_embedder

        model = config.embed_model_name(model)
        key = (model, normalize(phrase))
        vector = self._lookup(key)
        if vector is None:
            vector = get_embedder(model, db).encode([key[1]])[0]
            self._store(model, [key[1]], [vector])
        return vector

    def prime(self, phrases: list[str], model: str | None = None, db: Any = None) -> int:
        """Embed the phrases not cached yet, in batches; returns how many were added."""
        from kb.embeddings import get_embedder

        model = config.embed_model_name(model)
        missing = [
            p for p in dict.fromkeys(normalize(p) for p in phrases) if self._lookup((model, p)) is None
        ]
        for i in range(0, len(missing), BATCH):
            chunk = missing[i : i + BATCH]
            self._store(model, chunk, get_embedder(model, db).encode(chunk, batch_size=BATCH))
        return len(missing)

    def __len__(self) -> int:
        return len(self._vectors)


_CACHE = PhraseVectors()


def phrase_vector(phrase: str, db: Any = None) -> Any:
    return _CACHE.get(phrase, db=db)


def prime_template_names(db: Database, *, limit: int = MAX_PHRASES // 2) -> int:
    """Cache the vectors of the active templates' current names; returns how many were embedded."""
    with db.engine.connect() as conn:
        names = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT v.name FROM template t "
            "JOIN template_version v ON v.id = t.current_version_id "
                    "WHERE t.status = 'active' ORDER BY v.name LIMIT :n"
                ),
                {"n": limit},
            )
            .scalars()
            .all()
        )
    return _CACHE.prime(list(names), db=db)


def prime(phrases: list[str], db: Any = None) -> int:
    return _CACHE.prime(phrases, db=db)


def search_step(db: Any, template: str, text: str, *, k: int, mode: str = "hybrid") -> list[TemplateHit]:
    """The top K current templates for a step that names TEMPLATE and does TEXT."""
    vector = None if mode == "text" else phrase_vector(template, db)
    return search_templates(db, f"{template}. {text}", query_vector=vector, k=k, mode=mode)


def retrieve_hints(db: Any, problems: list[str], *, k: int, mode: str = "hybrid") -> list[list[TemplateHit]]:
    """The top K current templates for each problem: the hints a plan request shows (sampler and solver)."""
    if not problems or k < 1:
        return [[] for _ in problems]
    return search_many(db, problems, k=k, mode=mode)
