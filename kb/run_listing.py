"""Listing and inspecting pipeline runs, the read side of the run record (kb.runs): what `reasonflux runs
list | show` reports, every run's counts, failures, LLM calls, rows written and duration.

Runs whose owner is gone are already marked interrupted when the command opened the KB (kb.runs).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb.errors import NotFound

_LIST_SQL = """
    SELECT r.id, r.stage, r.status, r.started_at, r.finished_at,
           round(extract(epoch FROM coalesce(r.finished_at, now()) - r.started_at)::numeric, 1) AS duration_s,
           (r.counts->>'units_done')::int AS units_done, (r.counts->>'units_failed')::int AS units_failed,
           (SELECT count(*) FROM failure f WHERE f.run_id = r.id) AS failures,
           (SELECT count(*) FROM llm_call c WHERE c.run_id = r.id) AS llm_calls,
           r.host, r.pid
    FROM pipeline_run r
    WHERE (CAST(:stage AS text) IS NULL OR r.stage = :stage) AND (CAST(:status AS text) IS NULL OR r.status = :status)
    ORDER BY r.id DESC LIMIT :limit
"""

_TABLES = (
    "template_version",
    "trajectory",
    "rollout",
    "llm_call",
    "failure",
    "work_unit",
    "problem",
    "similar_set",
    "dpo_pair",
)


def list_runs(
    conn: sa.Connection, *, stage: str | None = None, status: str | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    rows = conn.execute(sa.text(_LIST_SQL), {"stage": stage, "status": status, "limit": limit}).mappings()
    return [dict(r) for r in rows]


def show_run(conn: sa.Connection, run_id: int) -> dict[str, Any]:
    run = conn.execute(sa.text("SELECT * FROM pipeline_run WHERE id = :r"), {"r": run_id}).mappings().first()
    if run is None:
        raise NotFound(f"no pipeline run {run_id} (see `reasonflux runs list`)")
    out = dict(run)
    out["duration_s"] = round(
        (
            (out["finished_at"] or conn.execute(sa.text("SELECT now()")).scalar()) - out["started_at"]
        ).total_seconds(),
        1,
    )
    written = conn.execute(
        sa.text(
            " UNION ALL ".join(
                f"SELECT '{t}' AS tbl, count(*) AS n FROM {t} WHERE run_id = :r" for t in _TABLES
            )
        ),
        {"r": run_id},
    ).all()
    out["rows_written"] = {t: n for t, n in written if n}
    calls = (
        conn.execute(
            sa.text(
                "SELECT count(*) AS calls, count(*) FILTER (WHERE error IS NOT NULL) AS errors, "
                "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, coalesce(sum(completion_tokens), 0) AS completion_tokens, "
                "round(coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms), 0)::numeric, 1) AS latency_ms_p50 "
                "FROM llm_call WHERE run_id = :r"
            ),
            {"r": run_id},
        )
        .mappings()
        .one()
    )
    out["llm_calls"] = dict(calls)
    out["failures_by_reason"] = [
        dict(r)
        for r in conn.execute(
            sa.text(
                "SELECT regexp_replace(left(reason, 80), '\\d+', 'N', 'g') AS reason, count(*) AS n FROM failure "
                "WHERE run_id = :r GROUP BY 1 ORDER BY 2 DESC LIMIT 10"
            ),
            {"r": run_id},
        ).mappings()
    ]
    scope = (out.get("params") or {}).get("scope")
    if scope:
        out["units_now"] = dict(
            conn.execute(
                sa.text("SELECT status, count(*) FROM work_unit WHERE stage = :s AND scope = :sc GROUP BY 1"),
                {"s": out["stage"], "sc": scope},
            ).all()
        )
    return out
