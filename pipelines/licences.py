"""The licence an export carries when none is given: the one its sources agree on.

The KB knows a licence where data entered it: `problems import --license` and `import ... --license` record
it in the import run's params, and every problem and template version keeps its run (`run_id`). An export's
sources are the problems and template versions whose text its rows hold: the problems themselves, the
current template versions, template rows (sft), and for trajectories (dpo, sft plan rows) their problem and
the template hints of their plan request. Text the navigator generated (abstractions, steps) is not a
source the KB has a licence for; the exporter answers for it (docs/data.md).

The rule (`choose`): every source has a recorded licence and they are all the same -> that licence; no
source has one -> `unknown` (nothing is claimed); otherwise (licences differ, or only some are known) the
exporter must say which licence applies (--license), and the sources are named in the refusal.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from kb.datasets import DEFAULT_LICENSE
from kb.errors import InputError

IMPORT_STAGES = ("import", "import-problems")  # the runs that record the licence of what they wrote

_SOURCES_SQL = sa.text("""
    WITH t AS (SELECT id, problem_id, sampling FROM trajectory WHERE id = ANY(:trajectories)),
    probs AS (SELECT id FROM problem WHERE id = ANY(:problems) UNION SELECT problem_id FROM t),
    versions AS (
        SELECT id FROM template_version WHERE id = ANY(:versions)
        UNION
        SELECT h::int FROM t, jsonb_array_elements_text(
            CASE WHEN jsonb_typeof(t.sampling->'hints') = 'array' THEN t.sampling->'hints' ELSE '[]' END) h
        WHERE h IS NOT NULL
    ),
    sources AS (
        SELECT 'problems' AS what, CASE WHEN r.stage = ANY(:stages) THEN r.params->>'license' END AS license
        FROM probs JOIN problem p ON p.id = probs.id LEFT JOIN pipeline_run r ON r.id = p.run_id
        UNION ALL
        SELECT 'templates', CASE WHEN r.stage = ANY(:stages) THEN r.params->>'license' END
        FROM versions JOIN template_version v ON v.id = versions.id LEFT JOIN pipeline_run r ON r.id = v.run_id
    )
    SELECT license, count(*) FILTER (WHERE what = 'problems') AS problems,
           count(*) FILTER (WHERE what = 'templates') AS templates
    FROM sources GROUP BY license ORDER BY license NULLS LAST
""")


def sources(conn, *, problems=(), versions=(), trajectories=()) -> list[dict[str, Any]]:
    """[{license (None: none recorded), problems, templates}]: how many of the selection's sources carry
    each licence."""
    ids = {
        "problems": sorted({int(i) for i in problems if i is not None}),
        "versions": sorted({int(i) for i in versions if i is not None}),
        "trajectories": sorted({int(i) for i in trajectories if i is not None}),
    }
    return [dict(r) for r in conn.execute(_SOURCES_SQL, {**ids, "stages": list(IMPORT_STAGES)}).mappings()]


def describe(found: list[dict[str, Any]]) -> str:
    """'apache-2.0: 5 problems; none recorded: 1 problem, 2 templates'."""

    def count(n: int, what: str) -> str:
        return f"{n} {what if n != 1 else what[:-1]}"

    return "; ".join(
        f"{s['license'] or 'none recorded'}: "
        + ", ".join(count(s[w], w) for w in ("problems", "templates") if s[w])
        for s in found
    )


def choose(found: list[dict[str, Any]]) -> str:
    """The licence an export of sources FOUND carries by default (the rule in the module docstring)."""
    licences = {s["license"] for s in found}
    if not licences or licences == {None}:
        return DEFAULT_LICENSE
    if len(licences) == 1:
        return licences.pop()
    raise InputError(
        f"the data's sources do not share one licence ({describe(found)}); say which licence "
        "the export carries with --license (e.g. --license other)",
        field="--license",
    )
