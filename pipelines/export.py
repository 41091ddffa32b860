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


def fetch_columns(conn, query: str, params: dict, schema: pa.Schema, order_by: str) -> pa.Table:
    """QUERY's columns (named as in SCHEMA: int64, float64 or string) as an Arrow table, ordered by ORDER_BY.

    Each column comes back as one bytea (big-endian numbers; strings as UTF-8 bytes plus lengths and null
    flags) that Arrow wraps without a Python object per value: what makes 10^6-row exports fast. A bytea
    is limited to 1 GB, which bounds one export's text column at about that size.
    """
    aggs, parts = [], []
    for f in schema:
        col = f'q."{f.name}"'
        agg = "string_agg({}, ''::bytea ORDER BY " + order_by + ")"
        if pa.types.is_string(f.type):
            aggs += [agg.format(f"convert_to(coalesce({col}, ''), 'UTF8')"),
                     agg.format(f"int4send(octet_length(coalesce({col}, ''))::int4)"),
                     agg.format(f"CASE WHEN {col} IS NULL THEN '\\x00'::bytea ELSE '\\x01'::bytea END")]
            parts.append(3)
        else:
            send = "int8send({}::int8)" if pa.types.is_integer(f.type) else "float8send({}::float8)"
            aggs.append(agg.format(send.format(col)))
            parts.append(1)
    with conn.connection.driver_connection.cursor(binary=True) as cur:
        cur.execute(f"SELECT count(*), {', '.join(aggs)} FROM ({query}) AS q", params)
        row = list(cur.fetchone())
    n, values = row[0], row[1:]
    if not n:
        return schema.empty_table()
    arrays = []
    for f, width in zip(schema, parts):
        chunk, values = values[:width], values[width:]
        arrays.append(_string_array(n, *chunk) if width == 3 else _number_array(n, chunk[0], f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _number_array(n: int, raw, type_: pa.DataType) -> pa.Array:
    data = np.frombuffer(raw or b"", dtype=">i8" if pa.types.is_integer(type_) else ">f8")
    if len(data) != n:
        raise NotFound("a numeric column of the export has NULLs")
    return pa.array(data.astype("<i8" if pa.types.is_integer(type_) else "<f8"), type_)


def _string_array(n: int, data, lengths, flags) -> pa.Array:
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.frombuffer(lengths, dtype=">i4"), out=offsets[1:])
    valid = np.frombuffer(flags, dtype=np.uint8).astype(bool)
    validity = None if valid.all() else pa.py_buffer(np.packbits(valid, bitorder="little"))
    return pa.Array.from_buffers(pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(bytes(data or b""))],
                                 null_count=int(n - valid.sum()))


TRAJECTORY_SCHEMA = pa.schema([("id", pa.int64()), ("abstraction", pa.string())])
STEP_SCHEMA = pa.schema([("trajectory_id", pa.int64()), ("position", pa.int64()), ("text", pa.string()),
                         ("template", pa.string())])


def render_plans(trajectories: pa.Table, steps: pa.Table) -> pa.Array:
    """The navigator's plan text of each trajectory (rows of TRAJECTORIES, ids ascending): 'Abstraction: ...'
    then one line per step, 'Step N (template: NAME): text'. STEPS sorted by (trajectory_id, position)."""
    trajectories, steps = trajectories.combine_chunks(), steps.combine_chunks()
    name = steps["template"].chunk(0) if steps.num_rows else pa.array([], pa.string())
    template = pc.if_else(pc.is_null(name), "", pc.binary_join_element_wise(" (template: ", name, ")", ""))
    number = pc.cast(pc.add(steps["position"], 1), pa.string())
    lines = pc.binary_join_element_wise("Step ", number, template, ": ", steps["text"], "")
    # Steps are sorted by trajectory, so each trajectory's lines are one slice (possibly empty).
    step_ids = steps["trajectory_id"].to_numpy()
    starts = np.searchsorted(step_ids, trajectories["id"].to_numpy(), "left")
    offsets = np.append(starts, len(step_ids)).astype(np.int32)
    body = pc.binary_join(pa.ListArray.from_arrays(pa.array(offsets), pa.chunked_array(lines).combine_chunks()),
                          "\n")
    abstraction = trajectories["abstraction"]
    head = pc.if_else(pc.is_null(abstraction), "",
                      pc.binary_join_element_wise("Abstraction: ", abstraction, "\n", ""))
    return pa.chunked_array([pc.binary_join_element_wise(head, body, "")]).combine_chunks()


def plan_table(conn, trajectory_ids_sql: str, params: dict) -> pa.Table:
    """(id, text) of the plans of the trajectories whose ids TRAJECTORY_IDS_SQL selects."""
    trajectories = fetch_columns(conn, f"SELECT t.id, t.abstraction FROM trajectory t WHERE t.id IN "
                                       f"({trajectory_ids_sql})", params, TRAJECTORY_SCHEMA, "id")
    steps = fetch_columns(conn, "SELECT st.trajectory_id, st.position, st.text, v.name AS template "
                                "FROM trajectory_step st LEFT JOIN template_version v ON v.id = st.template_version_id "
                                f"WHERE st.trajectory_id IN ({trajectory_ids_sql})",
                          params, STEP_SCHEMA, "trajectory_id, position")
    return pa.Table.from_arrays([trajectories["id"], render_plans(trajectories, steps)], schema=TEXT_SCHEMA)


def plan_texts(conn, trajectory_ids) -> dict[int, str]:
    """trajectory id -> its plan text, exactly as exported in DPO chosen/rejected."""
    table = plan_table(conn, "SELECT unnest(CAST(%(ids)s AS int[]))", {"ids": [int(i) for i in trajectory_ids]})
    return dict(zip(table["id"].to_pylist(), table["text"].to_pylist()))


def _messages(roles: list[str], contents: pa.Array, per_row: int) -> pa.Array:
    """A list<struct<role, content>> column: row i holds contents[i*per_row:(i+1)*per_row].

    Roles (and repeated contents) are dictionary-encoded: no string is copied per row, and Parquet
    stores them as plain strings (the files carry no Arrow schema), so readers see list<struct<string>>.
    """
    n = len(contents) // per_row
    role_index = pa.array(np.tile(np.arange(len(roles), dtype=np.int32), n))
    role_array = pa.DictionaryArray.from_arrays(role_index, pa.array(roles, pa.string()))
    values = pa.StructArray.from_arrays([role_array, contents], names=["role", "content"])
    offsets = pa.array(np.arange(0, n * per_row + 1, per_row, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, values)


def _index(keys, ids) -> np.ndarray:
    """Position in IDS of every key (ids unique)."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    index = pc.index_in(keys, value_set=ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids)
    if index.null_count:
        raise NotFound("an exported row refers to a missing row (database changed during export?)")
    return index.to_numpy(zero_copy_only=False).astype(np.int32)


# ---- dpo -------------------------------------------------------------------------------------------------

# The pairs of one selection, on train-split problems only (checked again here: defence in depth).
DPO_SQL = """
    SELECT d.id AS pair_id, d.problem_id, d.chosen_trajectory_id, d.rejected_trajectory_id,
           d.chosen_reward, d.rejected_reward, d.margin
    FROM dpo_pair d JOIN problem p ON p.id = d.problem_id
    WHERE d.params_hash = %(h)s AND d.margin >= %(min_margin)s AND p.split = 'train'
"""
PAIR_SCHEMA = pa.schema([
    ("pair_id", pa.int64()), ("problem_id", pa.int64()), ("chosen_trajectory_id", pa.int64()),
    ("rejected_trajectory_id", pa.int64()), ("chosen_reward", pa.float64()), ("rejected_reward", pa.float64()),
    ("margin", pa.float64()),
])
TEXT_SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])


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
    binds = {"h": params_hash, "min_margin": float(min_margin)}
    pairs = fetch_columns(conn, DPO_SQL, binds, PAIR_SCHEMA, "pair_id")
    # Texts of every trajectory and problem in the selection's pairs (a superset is harmless: looked up by id).
    in_pairs = ("SELECT chosen_trajectory_id FROM dpo_pair WHERE params_hash = %(h)s UNION "
                "SELECT rejected_trajectory_id FROM dpo_pair WHERE params_hash = %(h)s")
    plans = plan_table(conn, in_pairs, binds)
    problems = fetch_columns(conn, "SELECT id, text FROM problem WHERE id IN "
                                   "(SELECT problem_id FROM dpo_pair WHERE params_hash = %(h)s)",
                             binds, TEXT_SCHEMA, "id")
    n = pairs.num_rows
    # prompt: [system, user] per row, as indices into [system prompt, problem texts...].
    prompt_index = np.zeros(2 * n, dtype=np.int32)
    prompt_index[1::2] = _index(pairs["problem_id"], problems["id"]) + 1
    prompt_texts = pa.concat_arrays([pa.array([NAVIGATOR_SYSTEM_PROMPT], pa.string()),
                                     problems["text"].combine_chunks()])
    plan_text = plans["text"].combine_chunks()

    def plan_of(column: str) -> pa.Array:
        return pa.DictionaryArray.from_arrays(pa.array(_index(pairs[column], plans["id"])), plan_text)

    table = pa.table({
        "prompt": _messages(["system", "user"], pa.DictionaryArray.from_arrays(pa.array(prompt_index),
                                                                               prompt_texts), 2),
        "chosen": _messages(["assistant"], plan_of("chosen_trajectory_id"), 1),
        "rejected": _messages(["assistant"], plan_of("rejected_trajectory_id"), 1),
        **{name: pairs[name].combine_chunks() for name in PAIR_SCHEMA.names},
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
    from sqlmodel import Session

    from kb.models import Template, TemplateVersion
    from pipelines.import_templates import template_record

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
        "(`reasonflux import jsonl` reads them back); in Parquet, `steps` and `extra` are JSON text."))


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

def check_output_dir(out_dir: str | Path) -> None:
    """Refuse, before any work or any row, a folder that cannot be created: it or a parent is a file."""
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                what = "is a file" if path == out else f"is under {path}, which is a file"
                raise InputError(f"{out} {what}, not a folder", field="--out")
            return

def export(db: Database, kind: str, out_dir: str | Path, *, formats: tuple[str, ...] = ("parquet",),
           pairs: str | None = None, min_margin: float = 0.0, problems: str | None = None) -> dict[str, Any]:
    """Write one dataset version of KIND into OUT_DIR; returns the manifest (plus its path)."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if not formats or set(formats) - {"parquet", "jsonl"}:
        raise InputError("formats are parquet and/or jsonl", field="--format")
    check_output_dir(out_dir)
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
