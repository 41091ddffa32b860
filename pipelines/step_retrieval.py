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
from kb.embeddings import get_embedder
from kb.retrieval import TemplateHit, normalize_query, search_many, search_templates

MAX_PHRASES = 16_384
BATCH = 64


def normalize(phrase: str) -> str:
    # The default embedding model is uncased, so case folding loses nothing and shares entries.
    return " ".join(phrase.split()).lower()


class SharedEncoder:
    """Query embeddings of concurrent callers computed together: one forward pass for the texts of every
    session that retrieves at the same moment, instead of one each.

    Embedding is CPU-bound: on a small host, 32 sessions each embedding their problem one after another
    spread their next LLM calls over hundreds of milliseconds, and the batcher then sends them a few at a
    time. No window: a caller that finds no encode running starts one with whatever is queued; callers that
    arrive meanwhile are encoded together by the next caller in line. A lone caller waits for nothing.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._running = False

    def encode(self, embedder: Any, texts: list[str]) -> Any:
        slot = _Slot(embedder, texts)
        with self._lock:
            self._queue.append(slot)
            lead = not self._running
            self._running = True
        if not lead:
            slot.done.wait()
            if not slot.lead:
                return slot.result()
        self._run()
        return slot.result()

    def _run(self) -> None:
        """Encode the queue's texts, one call per embedder, then hand the lead to the next caller in line."""
        with self._lock:
            batch, self._queue = self._queue, []
        for embedder in {id(s.embedder): s.embedder for s in batch}.values():
            mine = [s for s in batch if s.embedder is embedder]
            try:
                vectors = embedder.encode([t for s in mine for t in s.texts], batch_size=BATCH)
            except BaseException as e:  # noqa: BLE001 - delivered to every caller of this batch
                for s in mine:
                    s.error = e
            else:
                at = 0
                for s in mine:
                    s.vectors, at = vectors[at : at + len(s.texts)], at + len(s.texts)
        with self._lock:
            if self._queue:
                self._queue[0].lead = True
                self._queue[0].done.set()
            else:
                self._running = False
        for s in batch:
            s.done.set()


class _Slot:
    def __init__(self, embedder: Any, texts: list[str]):
        self.embedder, self.texts = embedder, texts
        self.done = threading.Event()
        self.lead = False
        self.vectors: Any = None
        self.error: BaseException | None = None

    def result(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.vectors


_ENCODER = SharedEncoder()


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

        model = config.embed_model_name(model)
        key = (model, normalize(phrase))
        vector = self._lookup(key)
        if vector is None:
            vector = _ENCODER.encode(get_embedder(model, db), [key[1]])[0]
            self._store(model, [key[1]], [vector])
        return vector

    def prime(self, phrases: list[str], model: str | None = None, db: Any = None) -> int:
        """Embed the phrases not cached yet, in batches; returns how many were added."""

        model = config.embed_model_name(model)
        missing = [
            p for p in dict.fromkeys(normalize(p) for p in phrases) if self._lookup((model, p)) is None
        ]
        for i in range(0, len(missing), BATCH):
            chunk = missing[i : i + BATCH]
            self._store(model, chunk, _ENCODER.encode(get_embedder(model, db), chunk))
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
    if mode == "text":
        return search_many(db, problems, k=k, mode=mode)

    vectors = _ENCODER.encode(
        get_embedder(config.embed_model_name(None), db), [normalize_query(p) for p in problems]
    )
    with db.engine.connect() as conn:
        return [search_templates(conn, p, query_vector=v, k=k, mode=mode) for p, v in zip(problems, vectors)]
