"""Exports: DPO pairs, SFT template data, templates and problems as immutable dataset versions.

Every export reads one selection in id order and builds Arrow tables with fixed
schemas; kb.datasets writes them (fixed Parquet options), hashes them, records the
version and writes the manifest and card. The same selection twice gives the same
bytes and the same version id.

DPO rows follow TRL's conversational preference format: `prompt` is the navigator's
system message plus the problem, `chosen` / `rejected` are one assistant message each
holding a trajectory rendered as the navigator's plan text. SFT rows follow the
paper's first stage: from a template's name and tags, produce its description and
application scope (`messages`: user, assistant).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from kb.datasets import DataPart, ExportSpec, write_dataset
from kb.db import Database
from kb.errors import InputError, NotFound
from kb.runs import pipeline_run

KINDS = ("dpo", "sft", "templates", "problems")

NAVIGATOR_SYSTEM_PROMPT = (
    "You are the navigator of a hierarchical math reasoner (ReasonFlux). Given a problem, abstract it and "
    "plan a trajectory of steps, each guided by a thought template from the template library."
)
SFT_QUESTION = ("Thought template: {name}\nTags: {tags}\n\nDescribe this thought template and state its "
                "application scope.")
SFT_ANSWER = "Description: {description}\n\nApplication scope: {application_scope}"

MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
MESSAGES = pa.list_(MESSAGE)

# The navigator's plan text for a trajectory, rendered in SQL for every trajectory at once.
PLAN_SQL = """
    SELECT t.id,
           coalesce('Abstraction: ' || t.abstraction || E'\\n', '') ||
           coalesce(string_agg('Step ' || (st.position + 1) || coalesce(' (template: ' || v.name || ')', '')
                               || ': ' || st.text, E'\\n' ORDER BY st.position), '') AS plan
    FROM trajectory t
    LEFT JOIN trajectory_step st ON st.trajectory_id = t.id
    LEFT JOIN template_version v ON v.id = st.template_version_id
    WHERE t.id = ANY(:ids)
    GROUP BY t.id
    ORDER BY t.id
"""


def plan_texts(conn, trajectory_ids) -> dict[int, str]:
    """trajectory id -> its plan text (as exported in DPO chosen/rejected)."""
    rows = conn.execute(sa.text(PLAN_SQL), {"ids": [int(i) for i in trajectory_ids]}).all()
    return dict(rows)


def _messages(roles: list[str], contents: pa.Array, per_row: int) -> pa.Array:
    """A list<struct<role, content>> column: row i holds contents[i*per_row:(i+1)*per_row]."""
    n = len(contents) // per_row
    role_array = pa.array(np.tile(np.array(roles, dtype=object), n), pa.string())
    values = pa.StructArray.from_arrays([role_array, contents.cast(pa.string())], fields=list(MESSAGE))
    offsets = pa.array(np.arange(0, n * per_row + 1, per_row, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values, type=MESSAGES)


def _lookup(keys: pa.Array, ids: list[int], texts: list[str]) -> pa.Array:
    index = pc.index_in(keys, value_set=pa.array(ids, pa.int64()))
    if index.null_count:
        raise NotFound("an exported row refers to a missing row (database changed during export?)")
    return pa.array(texts, pa.string()).take(index)


# ---- dpo -------------------------------------------------------------------------------------------------

DPO_SQL = """
    SELECT d.id, d.problem_id, d.chosen_trajectory_id, d.rejected_trajectory_id,
           d.chosen_reward, d.rejected_reward, d.margin
    FROM dpo_pair d
    JOIN problem p ON p.id = d.problem_id
    JOIN trajectory tc ON tc.id = d.chosen_trajectory_id
    JOIN trajectory tr ON tr.id = d.rejected_trajectory_id
    LEFT JOIN similar_set sc ON sc.id = tc.similar_set_id
    LEFT JOIN similar_set sr ON sr.id = tr.similar_set_id
    WHERE d.params_hash = :h AND d.margin >= :min_margin
      AND coalesce(sc.anchor_split, p.split) = 'train' AND coalesce(sr.anchor_split, p.split) = 'train'
    ORDER BY d.id
"""


def _resolve_pairs(conn, ref: str | None) -> str:
    if ref is None:
        latest = conn.execute(sa.text("SELECT params_hash FROM dpo_pair ORDER BY id DESC LIMIT 1")).scalar()
        if latest is None:
            raise NotFound("there are no DPO pairs; run `reasonflux pairs build` first")
        return latest
    found = conn.execute(sa.text("SELECT DISTINCT params_hash FROM dpo_pair WHERE params_hash LIKE :p"),
                         {"p": ref + "%"}).scalars().all()
    if len(found) != 1:
        raise NotFound(f"pairs {ref!r} match {len(found)} selections (see `reasonflux pairs list`)")
    return found[0]


def dpo_part(conn, params_hash: str, min_margin: float) -> DataPart:
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
    rows = conn.execute(sa.text(DPO_SQL), {"h": params_hash, "min_margin": min_margin}).all()
    cols = list(zip(*rows)) if rows else [()] * 7
    ids, problems, chosen, rejected = (pa.array(c, pa.int64()) for c in cols[:4])
    chosen_reward, rejected_reward, margin = (pa.array(c, pa.float64()) for c in cols[4:])
    trajectories = sorted(set(cols[2]) | set(cols[3]))
    plans = plan_texts(conn, trajectories)
    problem_ids = sorted(set(cols[1]))
    texts = dict(conn.execute(sa.text("SELECT id, text FROM problem WHERE id = ANY(:ids)"), {"ids": problem_ids}).all())
    plan_ids = list(plans)
    plan_list = [plans[i] for i in plan_ids]
    problem_text = _lookup(problems, problem_ids, [texts[i] for i in problem_ids])
    # prompt: [system, user] per row, interleaved.
    n = len(rows)
    both = pa.concat_arrays([pa.array([NAVIGATOR_SYSTEM_PROMPT], pa.string()), problem_text])
    order = np.empty(2 * n, dtype=np.int64)
    order[0::2] = 0
    order[1::2] = np.arange(1, n + 1)
    prompt = _messages(["system", "user"], both.take(pa.array(order)), 2)
    table = pa.table({
        "prompt": prompt,
        "chosen": _messages(["assistant"], _lookup(chosen, plan_ids, plan_list), 1),
        "rejected": _messages(["assistant"], _lookup(rejected, plan_ids, plan_list), 1),
        "pair_id": ids, "problem_id": problems, "chosen_trajectory_id": chosen,
        "rejected_trajectory_id": rejected, "chosen_reward": chosen_reward, "rejected_reward": rejected_reward,
        "margin": margin,
    })
    return DataPart("train", table, description=(
        "One row per DPO pair in TRL's conversational preference format. `prompt` is the navigator's system "
        "message and the problem; `chosen` and `rejected` hold one assistant message each: a trajectory "
        "rendered as the navigator's plan (abstraction, then numbered steps with their template names). "
        "Rewards are the mean rollout correctness over the anchor's similar set; only train-split anchors."))


DPO_USAGE = """```python
from datasets import load_dataset
from trl import DPOConfig, DPOTrainer

ds = load_dataset("parquet", data_files="train.parquet", split="train")
trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="out"), train_dataset=ds, processing_class=tokenizer)
```"""


# ---- sft / templates / problems ---------------------------------------------------------------------------

def sft_part(conn) -> DataPart:
    rows = conn.execute(sa.text(
        "SELECT template_id, version_id, key, name, tags, description, application_scope FROM current_template "
        "WHERE status = 'active' ORDER BY template_id")).mappings().all()
    questions = [SFT_QUESTION.format(name=r["name"], tags=", ".join(r["tags"] or [])) for r in rows]
    answers = [SFT_ANSWER.format(description=r["description"], application_scope=r["application_scope"])
               for r in rows]
    contents = [x for pair in zip(questions, answers) for x in pair]
    table = pa.table({
        "messages": _messages(["user", "assistant"], pa.array(contents, pa.string()), 2),
        "template_id": pa.array([r["template_id"] for r in rows], pa.int64()),
        "version_id": pa.array([r["version_id"] for r in rows], pa.int64()),
        "key": pa.array([r["key"] for r in rows], pa.string()),
    })
    return DataPart("train", table, description=(
        "The paper's first training stage, one row per active template (current version): the user gives the "
        "template's name and tags, the assistant answers with its description and application scope "
        "(TRL's conversational `messages` format)."))


def template_records(conn) -> list[dict[str, Any]]:
    """Current versions of all templates, as the template interchange records (template_record)."""
    from kb.models import Template, TemplateVersion
    from pipelines.import_templates import template_record

    from sqlmodel import Session

    with Session(bind=conn) as s:
        pairs = s.execute(sa.select(Template, TemplateVersion).join(
            TemplateVersion, TemplateVersion.id == Template.current_version_id).order_by(Template.id)).all()
        return [template_record(t, v) for t, v in pairs]


TEMPLATE_SCHEMA = pa.schema([
    ("key", pa.string()), ("name", pa.string()), ("category", pa.string()), ("section", pa.string()),
    ("template_type", pa.string()), ("tags", pa.list_(pa.string())), ("description", pa.string()),
    ("application_scope", pa.string()), ("steps", pa.string()), ("example_problem", pa.string()),
    ("example_solution", pa.string()), ("example_answer", pa.string()), ("extra", pa.string()),
    ("status", pa.string()),
])


def templates_part(conn) -> DataPart:
    records = template_records(conn)
    # steps and extra are free-form JSON: stored as JSON text so the Parquet schema is fixed.
    flat = [{**{f.name: r.get(f.name) for f in TEMPLATE_SCHEMA},
             "steps": json.dumps(r.get("steps"), ensure_ascii=False, sort_keys=True),
             "extra": json.dumps(r.get("extra"), ensure_ascii=False, sort_keys=True)} for r in records]
    table = pa.Table.from_pylist(flat, schema=TEMPLATE_SCHEMA)
    return DataPart("templates", table, records=lambda: records, description=(
        "Current version of every template. JSONL lines are exactly the template interchange records "
        "(`reasonflux templates import` reads them back); in Parquet, `steps` and `extra` are JSON text."))


PROBLEM_SCHEMA = pa.schema([
    ("id", pa.int64()), ("text", pa.string()), ("solution", pa.string()), ("answer", pa.string()),
    ("source", pa.string()), ("source_id", pa.string()), ("split", pa.string()), ("subject", pa.string()),
    ("difficulty", pa.int64()), ("content_hash", pa.string()), ("extra", pa.string()),
])


def problems_part(conn, selection: str | None) -> DataPart:
    from pipelines.selection import select_problem_ids

    ids = select_problem_ids(conn, selection)
    rows = conn.execute(sa.text(
        "SELECT id, text, solution, answer, source, source_id, split, subject, difficulty, content_hash, extra "
        "FROM problem WHERE id = ANY(:ids) ORDER BY id"), {"ids": ids}).mappings().all()
    flat = [{**r, "extra": json.dumps(r["extra"], ensure_ascii=False, sort_keys=True)} for r in rows]
    return DataPart("problems", pa.Table.from_pylist(flat, schema=PROBLEM_SCHEMA), description=(
        "Problems with reference solution and answer, in id order; `extra` holds the source's other fields "
        "as JSON text."))


# ---- entry point ------------------------------------------------------------------------------------------

def export(db: Database, kind: str, out_dir: str | Path, *, formats: tuple[str, ...] = ("parquet",),
           pairs: str | None = None, min_margin: float = 0.0, problems: str | None = None) -> dict[str, Any]:
    """Write one dataset version of KIND into OUT_DIR; returns the manifest (plus its path)."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if not formats or set(formats) - {"parquet", "jsonl"}:
        raise InputError("formats are parquet and/or jsonl", field="--format")
    with pipeline_run(db, "export", {"kind": kind, "out": str(out_dir), "formats": list(formats)}) as (run_id, counts):
        with db.engine.begin() as conn:
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            if kind == "dpo":
                phash = _resolve_pairs(conn, pairs)
                params = {"pairs": phash, "min_margin": float(min_margin), "split": "train"}
                part, intro, usage = dpo_part(conn, phash, min_margin), "DPO pairs of navigator trajectories.", DPO_USAGE
            elif kind == "sft":
                params = {"templates": "current", "status": "active"}
                part, intro, usage = sft_part(conn), "SFT data for template knowledge (ReasonFlux stage 1).", ""
            elif kind == "templates":
                params = {"templates": "current", "status": "any"}
                part, intro, usage = templates_part(conn), "The thought-template library.", ""
            else:
                from pipelines.selection import PROBLEM_KEYS, parse_selection

                params = {"problems": parse_selection(problems, PROBLEM_KEYS).to_dict()}
                part, intro, usage = problems_part(conn, problems), "Problems.", ""
        spec = ExportSpec(kind=kind, params=params, parts=[part], formats=tuple(sorted(formats, reverse=True)),
                          card_intro=intro, usage=usage)
        manifest = write_dataset(db, spec, out_dir, run_id=run_id)
        counts.update(dataset_version=manifest["id"], rows=part.table.num_rows)
    return manifest
