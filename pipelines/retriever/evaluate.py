"""Leave-one-chapter-out evaluation: does fine-tuning help on chapters the retriever never trained on?

For each chapter (template category) that has worked examples: train on the pairs of every other
chapter (the chapter is excluded from the selection whole: its pairs, and its templates as hard
negatives), then query with the chapter's worked examples, which are in neither the embedded text
nor the full-text column. The zero-shot base model answers the same queries in the same run.

Two query forms: ``problem`` (the worked example's problem) and ``navigator`` (what the solver
sends: a template phrase a plan names, then the problem's abstraction). The sample library has
no navigator plans, so the phrase is stood in by the template's first knowledge tag and the
abstraction by the problem text; the form shows how a phrase-led query fares, not a navigator's
exact wording.

Ranking is done in memory with the exact ranking the index performs on a library this size:
cosine over the templates' view-mean vectors for ``vector``, and for ``hybrid`` those 50
candidates fused with the SQL full-text list exactly as kb.retrieval.search_templates fuses them.
No fold model's vectors are written to the KB.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from kb import config
from kb.db import Database
from kb.embeddings import Embedder, get_embedder, model_path
from kb.errors import InputError
from kb.retrieval import CANDIDATES, fuse, normalize_query, text_candidates
from pipelines.retriever.fit import fit
from pipelines.retriever.fit_config import HyperParams
from pipelines.retriever.pairs import build_pairs, library, pair_params

FORMS = ("problem", "navigator")
MODES = ("hybrid", "vector")
_ACTIVE = (" AND t.status = :f_status", {"f_status": "active"})


def eval_queries(conn) -> list[dict[str, Any]]:
    """Every active template's worked example, in both query forms."""
    rows = conn.execute(
        sa.text(
            "SELECT template_id, category, example_problem, tags FROM current_template "
            "WHERE status = 'active' AND coalesce(example_problem, '') <> '' ORDER BY template_id"
        )
    ).mappings()
    out = []
    for r in rows:
        phrase = (r["tags"] or [None])[0]
        problem = normalize_query(r["example_problem"]).strip()
        out.append(
            {
                "template_id": r["template_id"],
                "category": r["category"],
                "problem": problem,
                "navigator": f"{phrase}. {problem}" if phrase else problem,
            }
        )
    return out


def fold_pairs(db: Database, chapter: str, pair_options: dict[str, Any]) -> tuple[list[dict], list[dict]]:
    """CHAPTER's training pairs and their templates: the selection with the chapter excluded whole."""
    return build_pairs(db, pair_params(**{**pair_options, "exclude_categories": [chapter]}))


def _rank(
    conn,
    text: str,
    qvec: np.ndarray,
    matrix: np.ndarray,
    vids: list[int],
    mode: str,
    text_cache: dict[str, list],
) -> list[int]:
    sims = matrix @ qvec
    top = np.argsort(-sims, kind="stable")[:CANDIDATES]
    vec = [(vids[i], float(sims[i])) for i in top]
    if mode == "vector":
        return [v for v, _ in vec]
    if text not in text_cache:
        text_cache[text] = text_candidates(conn, text, 4 * CANDIDATES, _ACTIVE)
        conn.rollback()
    allowed = set(vids)  # the ranked library may be a subset (index_categories)
    txt = [hit for hit in text_cache[text] if hit[0] in allowed][:CANDIDATES]
    return [v for v, _ in fuse(vec, txt)]


def score(conn, embedder, templates: list[dict], queries: list[dict], text_cache: dict) -> dict:
    """{(form, mode): [rank of each query's template or None]} for one model."""
    vids = [t["version_id"] for t in templates]
    by_vid = {t["version_id"]: t["template_id"] for t in templates}
    matrix = embedder.encode_views([t["views"] for t in templates])
    out = {}
    for form in FORMS:
        qvecs = embedder.encode([q[form] for q in queries])
        for mode in MODES:
            ranks = []
            for q, qv in zip(queries, qvecs):
                ids = [by_vid[v] for v in _rank(conn, q[form], qv, matrix, vids, mode, text_cache)[:10]]
                ranks.append(ids.index(q["template_id"]) + 1 if q["template_id"] in ids else None)
            out[(form, mode)] = ranks
    return out


def metrics(ranks: list[int | None]) -> dict[str, float]:
    n = max(len(ranks), 1)
    return {
        "recall@1": sum(1 for r in ranks if r == 1) / n,
        "recall@5": sum(1 for r in ranks if r and r <= 5) / n,
        "mrr@10": sum(1 / r for r in ranks if r) / n,
    }


def leave_one_chapter_out(
    db: Database,
    *,
    base_model: str | None = None,
    hp: HyperParams | None = None,
    chapters: list[str] | None = None,
    index_categories: list[str] | None = None,
    log: Callable[[str], None] | None = None,
    **pair_options: Any,
) -> dict[str, Any]:
    """Per-fold and mean recall@1/5 and MRR@10, zero-shot vs fine-tuned, per query form and mode.

    INDEX_CATEGORIES: rank only these chapters' templates and query only with their examples (the
    other chapters' pairs still train every fold); default: the whole library.
    """
    hp = (hp or HyperParams()).check()
    base = config.embed_model_name(base_model)
    base_path = model_path(base, db)
    zero = get_embedder(base, db)
    pair_options["negatives_model"] = pair_options.get("negatives_model") or base
    with db.engine.connect() as conn:
        templates = library(conn)
        queries = eval_queries(conn)
    if index_categories:
        templates = [t for t in templates if t["category"] in index_categories]
        queries = [q for q in queries if q["category"] in index_categories]
    chapters = _held_out_chapters(queries, chapters)
    rows, folds, cache = [], [], {}
    with db.engine.connect() as conn:
        for chapter in chapters:
            held = [q for q in queries if q["category"] == chapter]
            fold, fold_rows = _fold(
                conn, db, chapter, held, templates, zero, base_path, hp, pair_options, cache, log
            )
            folds.append(fold)
            rows += fold_rows
    return {
        "base_model": base,
        "hyper_params": hp.to_dict(),
        "pairs": pair_params(**pair_options),
        "index_categories": index_categories,
        "folds": folds,
        "rows": rows,
        "mean": mean_rows(rows),
    }


def _held_out_chapters(queries: list[dict], chapters: list[str] | None) -> list[str]:
    """CHAPTERS (default: every chapter with worked examples), refused when one has none or there are fewer
    than two to hold out from."""
    all_chapters = sorted({q["category"] for q in queries})
    chapters = chapters or all_chapters
    unknown = sorted(set(chapters) - set(all_chapters))
    if unknown:
        raise InputError(f"no worked examples in chapter(s) {', '.join(unknown)}", field="--chapter")
    if len(all_chapters) < 2:
        raise InputError(
            "leave-one-chapter-out needs worked examples in at least two chapters", field="--chapter"
        )
    return chapters


def _fold(
    conn,
    db: Database,
    chapter: str,
    held: list[dict],
    templates,
    zero,
    base_path,
    hp,
    pair_options,
    cache,
    log,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fine-tune on every pair but CHAPTER's, then score the zero-shot and fine-tuned models on its HELD
    queries: the fold's record and its metric rows (LOG, if given, hears of the fold when it is done)."""
    train, used = fold_pairs(db, chapter, pair_options)
    tmp = Path(tempfile.mkdtemp(prefix="rf-retriever-fold-"))
    try:
        t0 = time.perf_counter()
        fit_metrics = fit(base_path, train, {t["template_id"]: t for t in used}, hp, tmp)
        seconds = time.perf_counter() - t0
        tuned = Embedder(f"fold-{chapter}", tmp)
        results = {
            "zero-shot": score(conn, zero, templates, held, cache),
            "fine-tuned": score(conn, tuned, templates, held, cache),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fold = {
        "chapter": chapter,
        "queries": len(held),
        "train_pairs": len(train),
        "steps": fit_metrics["steps"],
        "train_seconds": round(seconds, 1),
        "final_loss": fit_metrics["final_loss"],
    }
    rows = [
        {
            "chapter": chapter,
            "model": label,
            "form": form,
            "mode": mode,
            "queries": len(ranks),
            **metrics(ranks),
        }
        for label, by_key in results.items()
        for (form, mode), ranks in by_key.items()
    ]
    if log:
        log(f"fold {chapter}: {len(train)} pairs, {fit_metrics['steps']} steps, {seconds:.0f} s")
    return fold, rows


def mean_rows(rows: list[dict]) -> list[dict]:
    """The mean over folds of each (model, form, mode)'s metrics (each held-out chapter counts once)."""
    out = []
    keys = list(dict.fromkeys((r["model"], r["form"], r["mode"]) for r in rows))
    for model_label, form, mode in keys:
        sel = [r for r in rows if (r["model"], r["form"], r["mode"]) == (model_label, form, mode)]
        out.append(
            {
                "chapter": "mean",
                "model": model_label,
                "form": form,
                "mode": mode,
                "queries": sum(r["queries"] for r in sel),
                **{m: float(np.mean([r[m] for r in sel])) for m in ("recall@1", "recall@5", "mrr@10")},
            }
        )
    return out
