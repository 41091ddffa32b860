"""Fine-tuning a sentence-transformers model on (query, template) pairs: in-batch plus hard negatives.

The loss is MultipleNegativesRankingLoss written out: each query against every positive and hard
negative of its batch, cross-entropy on scaled cosine similarities, the query's own template the
target. A template is represented exactly as the index represents it: the normalised mean of the
embeddings of its views (pipelines.embed.template_views), so what is trained is what is searched.

Batches never hold a template twice (as one query's positive and another's positive or negative),
so no in-batch "negative" is in fact the right answer. Everything random comes from one seed:
the same pairs, base model and hyper-parameters give the same weights on the same device.
"""

from __future__ import annotations

import contextlib
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from kb.errors import InputError
from pipelines.retriever.fit_config import HyperParams


def epoch_examples(pairs: list[dict], rng: random.Random) -> list[dict]:
    """One epoch's pairs: each pair floor(weight) times, plus once more with the fractional part's chance."""
    out = []
    for p in pairs:
        w = float(p.get("weight", 1.0))
        out += [p] * (int(w) + (1 if rng.random() < w - int(w) else 0))
    rng.shuffle(out)
    return out


def batches(examples: list[dict], size: int) -> list[list[dict]]:
    """Consecutive batches in which no template id appears twice (positives and negatives together)."""
    out, pending = [], list(examples)
    while pending:
        batch, used, rest = [], set(), []
        for ex in pending:
            ids = {ex["template_id"], *ex.get("negative_template_ids", [])}
            if len(batch) < size and not ids & used:
                batch.append(ex)
                used |= ids
            else:
                rest.append(ex)
        if len(batch) < 2:  # a lone query has no in-batch negatives; too few distinct templates remain
            break
        out.append(batch)
        pending = rest
    return out


def _device(requested: str | None) -> str:
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def fit(
    base_path: str | Path,
    pairs: list[dict],
    templates: dict[int, dict],
    hp: HyperParams,
    out_dir: str | Path,
    *,
    progress=None,
) -> dict[str, Any]:
    """Train from BASE_PATH on PAIRS, save to OUT_DIR; returns the training metrics."""
    # Training imports deepspeed through transformers when it is installed; its logger writes to the
    # stdout it finds at import, which must stay clean for --json output.
    with contextlib.redirect_stdout(sys.stderr):
        return _fit(base_path, pairs, templates, hp, out_dir, progress)


def _fit(base_path, pairs, templates, hp, out_dir, progress) -> dict[str, Any]:
    import torch
    from sentence_transformers import SentenceTransformer

    hp.check()
    if not pairs:
        raise InputError("no training pairs", field="pairs")
    random.seed(hp.seed)
    np.random.seed(hp.seed)
    torch.manual_seed(hp.seed)
    device = _device(hp.device)
    model = SentenceTransformer(str(base_path), device=device, local_files_only=True)
    window = model.max_seq_length
    if hp.max_seq_length:
        model.max_seq_length = min(window, hp.max_seq_length)
    rng = random.Random(hp.seed)
    plan = [batches(epoch_examples(pairs, rng), hp.batch_size) for _ in range(hp.epochs)]
    total = sum(len(b) for b in plan)
    if hp.max_steps is not None:
        total = min(total, hp.max_steps)
    if total == 0:
        raise InputError(
            "the pairs name fewer than two distinct templates; nothing to contrast", field="pairs"
        )
    opt = torch.optim.AdamW(model.parameters(), lr=hp.learning_rate)
    warmup = max(1, int(hp.warmup_ratio * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup)))
    )
    model.train()
    losses, step, t0 = [], 0, time.perf_counter()
    for epoch in plan:
        for batch in epoch:
            if step >= total:
                break
            loss = _batch_loss(model, batch, templates, hp.scale, device)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            step += 1
            if progress:
                progress(1)
    model.eval()
    model.max_seq_length = window
    out = Path(out_dir)
    model.save(str(out))
    return {
        "steps": step,
        "final_loss": losses[-1],
        "first_loss": losses[0],
        "mean_loss_last_epoch": float(np.mean(losses[-max(1, len(plan[-1])) :])),
        "train_seconds": round(time.perf_counter() - t0, 2),
        "pairs": len(pairs),
        "device": device,
    }


def _embed(model, texts: list[str], device: str):
    import torch

    prepare = getattr(model, "preprocess", None) or model.tokenize  # `tokenize` is deprecated in 6.x
    features = {k: v.to(device) if hasattr(v, "to") else v for k, v in prepare(texts).items()}
    return torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)


def _template_vectors(model, ids: list[int], templates: dict[int, dict], device: str):
    """Each template as the index holds it: the normalised mean of its views' embeddings."""
    import torch

    views = [templates[i]["views"] for i in ids]
    flat = [v for vs in views for v in vs]
    emb = _embed(model, flat, device)
    out, start = [], 0
    for vs in views:
        out.append(emb[start : start + len(vs)].mean(dim=0))
        start += len(vs)
    return torch.nn.functional.normalize(torch.stack(out), dim=-1)


def _batch_loss(model, batch: list[dict], templates: dict[int, dict], scale: float, device: str):
    import torch

    positives = [ex["template_id"] for ex in batch]
    negatives = [n for ex in batch for n in ex.get("negative_template_ids", [])]
    queries = _embed(model, [ex["query"] for ex in batch], device)
    docs = _template_vectors(model, positives + negatives, templates, device)
    scores = scale * queries @ docs.T
    return torch.nn.functional.cross_entropy(scores, torch.arange(len(batch), device=device))
