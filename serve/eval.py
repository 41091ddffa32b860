"""The eval harness: the solver over a problem set, graded, broken down, drawn, compared with baselines.

    run_eval(db, solver, problems, out_dir=..., concurrency=8, best_of=4) -> EvalReport

writes to OUT_DIR:
    results.jsonl     per problem: session, answer, correctness, rounds, templates, tokens, baselines
    summary.json      the comparison table, the breakdowns by difficulty and subject, the parameters
    comparison.csv    ReasonFlux vs single call vs Best-of-N: accuracy, LLM calls, tokens
    by_difficulty.csv, by_subject.csv
    scaling.png       the inference-scaling figure: templates used and interaction rounds against difficulty
"""

from __future__ import annotations

import csv
import json
import statistics
import textwrap
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from kb.db import Database
from kb.errors import InputError
from kb.output import dumps
from pipelines.grader import GRADER_NAME
from pipelines.selection import select_problem_ids
from serve.baseline import run_baselines
from serve.solver import Solver

BREAKDOWN_KEYS = ("difficulty", "subject")


def load_problems(db: Database, selection: str) -> list[dict[str, Any]]:
    """Problems of a selection (pipelines.selection syntax): id, text, answer, subject, difficulty."""

    with db.engine.connect() as conn:
        ids = select_problem_ids(conn, selection)
        rows = (
            conn.execute(
                sa.text(
                    "SELECT id, text, answer, subject, difficulty, source, source_id FROM problem "
                    "WHERE id = ANY(:ids) ORDER BY id"
                ),
                {"ids": ids},
            )
            .mappings()
            .all()
        )
    if not rows:
        raise InputError(f"no problems match {selection!r}", field="--problems")
    return [dict(r) for r in rows]


@dataclass
class EvalReport:
    records: list[dict[str, Any]]
    comparison: list[dict[str, Any]]
    by_difficulty: list[dict[str, Any]]
    by_subject: list[dict[str, Any]]
    files: dict[str, str] = field(default_factory=dict)


def _mean(values: Iterable[float | int | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return round(statistics.fmean(vals), 4) if vals else None


def _accuracy(values: Iterable[bool | None]) -> float | None:
    graded = [bool(v) for v in values if v is not None]
    return round(sum(graded) / len(graded), 4) if graded else None


def solve_all(
    solver: Solver,
    problems: Sequence[dict[str, Any]],
    *,
    concurrency: int,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One session per problem, CONCURRENCY at once; a record per problem, in input order."""
    lock = threading.Lock()

    def one(p: dict[str, Any]) -> dict[str, Any]:
        r = solver.solve(p["text"], problem_id=p["id"], reference=p.get("answer"))
        rec = {
            "problem_id": p["id"],
            "source": p.get("source"),
            "source_id": p.get("source_id"),
            "subject": p.get("subject"),
            "difficulty": p.get("difficulty"),
            "reference": p.get("answer"),
            "session_id": r.session_id,
            "status": r.status,
            "answer": r.answer,
            "correct": r.correct,
            "rounds": r.rounds,
            "templates_used": len(r.templates),
            "template_version_ids": r.templates,
            "tokens": r.total_tokens,
            "llm_calls": r.llm_calls,
            "seconds": round(r.latency_ms / 1000, 3),
            "reason": r.reason,
        }
        if on_result is not None:
            with lock:
                on_result(rec)
        return rec

    with ThreadPoolExecutor(max_workers=max(1, min(concurrency, len(problems)))) as pool:
        return list(pool.map(one, problems))


def comparison_table(records: Sequence[dict[str, Any]], best_of: int) -> list[dict[str, Any]]:
    """One row per method: accuracy and cost (LLM calls, tokens), totals and per problem."""
    n = len(records)

    def row(method: str, correct: str, calls: str, tokens: str, **extra: Any) -> dict[str, Any]:
        total_calls = sum(r.get(calls) or 0 for r in records)
        total_tokens = sum(r.get(tokens) or 0 for r in records)
        return {
            "method": method,
            "problems": n,
            "accuracy": _accuracy(r.get(correct) for r in records),
            "llm_calls": total_calls,
            "calls_per_problem": round(total_calls / n, 2) if n else None,
            "tokens": total_tokens,
            "tokens_per_problem": round(total_tokens / n, 1) if n else None,
            **extra,
        }

    rows = [
        row(
            "reasonflux (navigator + templates)",
            "correct",
            "llm_calls",
            "tokens",
            mean_rounds=_mean(r["rounds"] for r in records),
            mean_templates=_mean(r["templates_used"] for r in records),
        )
    ]
    if records and "single_correct" in records[0]:
        rows.append(row("single call (inference model)", "single_correct", "single_calls", "single_tokens"))
    if best_of > 1 and records and "best_of_correct" in records[0]:
        rows.append(
            row(
                f"best-of-{best_of} (majority vote)",
                "best_of_correct",
                "best_of_calls",
                "best_of_tokens",
                pass_at_n=_accuracy(r.get("best_of_pass") for r in records),
            )
        )
    return rows


def breakdown(records: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    groups: dict[Any, list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault(r.get(key), []).append(r)
    out = []
    for value in sorted(groups, key=lambda v: (v is None, str(v) if not isinstance(v, int) else f"{v:09d}")):
        g = groups[value]
        row = {
            key: value if value is not None else "unknown",
            "problems": len(g),
            "accuracy": _accuracy(r["correct"] for r in g),
            "mean_rounds": _mean(r["rounds"] for r in g),
            "mean_templates": _mean(r["templates_used"] for r in g),
            "mean_tokens": _mean(r["tokens"] for r in g),
        }
        if "single_correct" in g[0]:
            row["single_call_accuracy"] = _accuracy(r["single_correct"] for r in g)
        if "best_of_correct" in g[0]:
            row["best_of_accuracy"] = _accuracy(r["best_of_correct"] for r in g)
        out.append(row)
    return out


GROUPINGS = (("difficulty", "problem difficulty"), ("subject", "subject"), ("source", "source"))


def _grouping(records: Sequence[dict[str, Any]]) -> tuple[str | None, str]:
    """What the figure's groups are: difficulty levels, else subjects, else sources (the first that splits
    the problems in two or more; else the first present); (None, ...) when the records have none."""
    present = [(key, label) for key, label in GROUPINGS if any(r.get(key) is not None for r in records)]
    for key, label in present:
        if len({r.get(key) for r in records}) > 1:
            return key, label
    return present[0] if present else (None, "all problems")


def scaling_series(records: Sequence[dict[str, Any]], best_of: int = 0) -> dict[str, Any]:
    """What the scaling figure draws, per group: counts, mean and s.d. of templates used and rounds, the
    solver's accuracy and the baselines' (single call, best-of-N) where they were run."""
    key, axis_label = _grouping(records)
    values = sorted(
        {r.get(key) for r in records} if key else {None},
        key=lambda v: (v is None, v if isinstance(v, int) else 0, str(v)),
    )
    if key == "difficulty":
        labels = [f"Level {v}" if v is not None else "unknown" for v in values]
    else:
        labels = [str(v) if v is not None else ("unknown" if key else "all") for v in values]
    series: dict[str, Any] = {
        "key": key,
        "axis_label": axis_label,
        "labels": labels,
        "counts": [],
        "bars": {"templates_used": ([], []), "rounds": ([], [])},
        "accuracy": {},
    }
    accuracy_sources = [("reasonflux", "correct")]
    if records and "single_correct" in records[0]:
        accuracy_sources.append(("single call", "single_correct"))
    if best_of > 1 and records and "best_of_correct" in records[0]:
        accuracy_sources.append((f"best-of-{best_of} (majority vote)", "best_of_correct"))
    for name, _ in accuracy_sources:
        series["accuracy"][name] = []
    for v in values:
        group = [r for r in records if r.get(key) == v] if key else list(records)
        series["counts"].append(len(group))
        for name, field_name in accuracy_sources:
            series["accuracy"][name].append(_accuracy(r.get(field_name) for r in group))
        for k, (means, sds) in series["bars"].items():
            vals = [r[k] for r in group]
            means.append(statistics.fmean(vals))
            sds.append(statistics.pstdev(vals) if len(vals) > 1 else 0.0)
    return series


_ACCURACY_STYLE = {"reasonflux": ("o--", "#2E7D32"), "single call": ("s:", "#7B1FA2")}


def draw_scaling(
    records: Sequence[dict[str, Any]], path: Path, *, best_of: int = 0, title: str | None = None
) -> Path:
    """The paper's inference-scaling figure: mean templates used and rounds per difficulty level (else per
    subject or source), with the accuracy of the solver and of the baselines it was compared with."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = scaling_series(records, best_of)
    stats, counts = series["bars"], series["counts"]
    fig, ax = plt.subplots(figsize=(max(8, 1.1 * len(counts) + 2), 4.8), dpi=120)
    x = np.arange(len(counts))
    _draw_bars(ax, x, stats)
    ticks = [f"{textwrap.fill(lab, 14)}\n(n={n})" for lab, n in zip(series["labels"], counts)]
    ax.set_xticks(x, ticks, fontsize=8 if len(counts) > 5 else None)
    ax.set_xlabel(series["axis_label"])
    ax.set_ylabel("mean per problem (± s.d.)")
    ax.set_ylim(0, max([m + s for means, sds in stats.values() for m, s in zip(means, sds)] + [1]) * 1.25)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    acc_handles, acc_labels = _draw_accuracy(ax, x, series["accuracy"])
    handles, labels = handles + acc_handles, labels + acc_labels
    # Below the plot: inside it, the legend would cover bars or accuracy points.
    ax.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.22),
        ncol=min(3, len(handles)),
        fontsize=8,
        frameon=False,
    )
    what = {"difficulty": "difficulty", "subject": "subject", "source": "source"}.get(
        series["key"], "problem set"
    )
    ax.set_title(title or f"Inference scaling: templates and interaction rounds vs {what}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _draw_bars(ax: Any, x: Any, stats: dict[str, tuple[list[float], list[float]]]) -> None:
    """Templates used and rounds side by side per group, with s.d. error bars and the mean written in."""
    width = 0.38
    colors = {"templates_used": "#4C72B0", "rounds": "#DD8452"}
    names = {"templates_used": "templates used", "rounds": "interaction rounds"}
    for i, (key, (means, sds)) in enumerate(stats.items()):
        bars = ax.bar(
            x + (i - 0.5) * width,
            means,
            width,
            yerr=sds,
            capsize=3,
            color=colors[key],
            label=names[key],
            error_kw={"elinewidth": 1, "ecolor": "#555555"},
        )
        for b, m in zip(bars, means):  # halfway up the bar: clear of the error bar and of the axis
            if m > 0:
                ax.annotate(
                    f"{m:.1f}",
                    (b.get_x() + b.get_width() / 2, m / 2),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white",
                    fontweight="bold",
                )


def _draw_accuracy(ax: Any, x: Any, accuracy: dict[str, list[float | None]]) -> tuple[list, list]:
    """Each accuracy series that has a value, as a line on a second axis; its (handles, labels)."""

    drawn = {name: acc for name, acc in accuracy.items() if any(a is not None for a in acc)}
    if not drawn:
        return [], []
    acc_ax = ax.twinx()
    for name, acc in drawn.items():
        style, color = _ACCURACY_STYLE.get(name, ("^-.", "#C62828"))
        acc_ax.plot(
            x,
            [a * 100 if a is not None else np.nan for a in acc],
            style,
            color=color,
            label=f"accuracy: {name} (%)",
            linewidth=1.5,
            alpha=0.85,
        )
    acc_ax.set_ylim(0, 105)
    acc_ax.set_ylabel("accuracy (%)")
    return acc_ax.get_legend_handles_labels()


def _write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def run_eval(
    db: Database,
    solver: Solver,
    problems: Sequence[dict[str, Any]],
    *,
    out_dir: str | Path,
    concurrency: int = 4,
    best_of: int = 0,
    baseline: bool = True,
    run_id: int | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> EvalReport:
    """Solve, grade, compare and draw; everything lands in OUT_DIR (created)."""
    if not problems:
        raise InputError("no problems to evaluate", field="--problems")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = solve_all(solver, problems, concurrency=concurrency, on_result=on_result)
    if baseline or best_of > 1:
        base = run_baselines(
            db,
            solver.batchers["inference"],
            problems,
            params=solver.config.inference_params,
            best_of=best_of,
            run_id=run_id,
        )
        for rec in records:
            rec.update(base[rec["problem_id"]])
    report = EvalReport(
        records=records,
        comparison=comparison_table(records, best_of),
        by_difficulty=breakdown(records, "difficulty"),
        by_subject=breakdown(records, "subject"),
    )
    with (out / "results.jsonl").open("w") as f:
        for rec in records:
            f.write(dumps(rec) + "\n")
    summary = {
        "grader": GRADER_NAME,
        "run_id": run_id,
        "solver": solver.describe(),
        "best_of": best_of,
        "comparison": report.comparison,
        "by_difficulty": report.by_difficulty,
        "by_subject": report.by_subject,
    }
    (out / "summary.json").write_text(json.dumps(json.loads(dumps(summary)), indent=2) + "\n")
    for name, rows in (
        ("comparison", report.comparison),
        ("by_difficulty", report.by_difficulty),
        ("by_subject", report.by_subject),
    ):
        _write_csv(out / f"{name}.csv", rows)
    draw_scaling(records, out / "scaling.png", best_of=best_of)
    report.files = {
        name: str(out / name)
        for name in (
            "results.jsonl",
            "summary.json",
            "comparison.csv",
            "by_difficulty.csv",
            "by_subject.csv",
            "scaling.png",
        )
    }
    return report
