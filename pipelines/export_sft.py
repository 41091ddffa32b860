"""The SFT export's part: the paper's first stage (template name and tags -> description and application
scope) plus, unless turned off, plan examples: the best-rewarded trajectories of train-split problems as
(plan request -> plan reply) conversations in the navigator contract.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from kb.datasets import DataPart
from kb.errors import InputError
from pipelines import navigator
from pipelines.export_conversations import check_contracts, conversations

SFT_QUESTION = (
    "Thought template: {name}\nTags: {tags}\n\nDescribe this thought template and state its "
    "application scope."
)
SFT_ANSWER = "Description: {description}\n\nApplication scope: {application_scope}"


PLAN_EXAMPLES_SQL = sa.text("""
    SELECT id, reward FROM (
        SELECT t.id, r.reward, row_number() OVER (PARTITION BY t.problem_id ORDER BY r.reward DESC, t.id) AS k
        FROM trajectory t JOIN trajectory_reward_live r ON r.trajectory_id = t.id
        JOIN problem p ON p.id = t.problem_id
        WHERE p.split = 'train' AND r.complete AND r.reward >= :min_reward
    ) best WHERE k <= :per_problem ORDER BY id
""")


def plan_examples(
    conn, min_reward: float, per_problem: int, *, allow_mixed: bool = False
) -> tuple[list[dict[str, Any]], list[str]]:
    """SFT rows (problem -> plan) from the best-rewarded train-split trajectories, and their contracts."""
    best = conn.execute(
        PLAN_EXAMPLES_SQL, {"min_reward": float(min_reward), "per_problem": int(per_problem)}
    ).all()
    convs = conversations(conn, [tid for tid, _ in best])
    contracts = check_contracts((c["contract"] for c in convs.values()), allow_mixed) if convs else []
    rows = [
        {
            "messages": [*convs[tid]["prompt"], {"role": "assistant", "content": convs[tid]["reply"]}],
            "kind": "plan",
            "template_id": None,
            "version_id": None,
            "key": None,
            "trajectory_id": tid,
            "reward": float(reward),
        }
        for tid, reward in best
    ]
    return rows, contracts


def sft_part(
    conn,
    *,
    templates: bool = True,
    plans: bool = True,
    min_reward: float = 0.75,
    per_problem: int = 1,
    allow_mixed: bool = False,
) -> tuple[DataPart, dict[str, Any]]:
    """(TEMPLATES) stage-1 template rows, then (PLANS) plan examples; and the mix, recorded in the manifest."""
    if not (templates or plans):
        raise InputError(
            "an SFT export needs template rows, plan rows or both", field="--no-templates/--no-plans"
        )
    rows = (
        []
        if not templates
        else conn.execute(
            sa.text(
                "SELECT template_id, version_id, key, name, tags, description, application_scope FROM current_template "
                "WHERE status = 'active' ORDER BY template_id"
            )
        )
        .mappings()
        .all()
    )
    records = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": SFT_QUESTION.format(name=r["name"], tags=", ".join(r["tags"] or [])),
                },
                {
                    "role": "assistant",
                    "content": SFT_ANSWER.format(
                        description=r["description"], application_scope=r["application_scope"]
                    ),
                },
            ],
            "kind": "template",
            "template_id": r["template_id"],
            "version_id": r["version_id"],
            "key": r["key"],
            "trajectory_id": None,
            "reward": None,
        }
        for r in rows
    ]
    plan_rows, contracts = (
        plan_examples(conn, min_reward, per_problem, allow_mixed=allow_mixed) if plans else ([], [])
    )
    mix = {
        "template_rows": len(records),
        "plan_rows": len(plan_rows),
        "templates": templates,
        "plans": plans,
        "plan_min_reward": float(min_reward),
        "plans_per_problem": int(per_problem),
        "contracts": contracts,
    }
    table = pa.Table.from_pylist(records + plan_rows, schema=SFT_SCHEMA)
    return DataPart(
        "train",
        table,
        description=(
            "ReasonFlux's first training stage in TRL's conversational `messages` format. Rows of kind `template` "
            "(one per active template, current version): the user gives the template's name and tags, the "
            "assistant answers with its description and application scope. Rows of kind `plan` (the navigator "
            f"contract {navigator.CONTRACT_HASH}): the plan request for a train-split problem and, as the answer, "
            "the plan reply of its best-rewarded trajectory (complete reward >= the recorded threshold), so the "
            "navigator learns the reply format and good trajectories before DPO."
        ),
    ), mix


MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SFT_SCHEMA = pa.schema(
    [
        ("messages", pa.list_(MESSAGE)),
        ("kind", pa.string()),
        ("template_id", pa.int64()),
        ("version_id", pa.int64()),
        ("key", pa.string()),
        ("trajectory_id", pa.int64()),
        ("reward", pa.float64()),
    ]
)
