"""Exports: DPO pairs, SFT template data, templates and problems as immutable dataset versions.

Every export reads one selection in id order and builds Arrow tables with fixed
schemas; kb.datasets writes them (fixed Parquet options), hashes them, records the
version and writes the manifest and card. The same selection twice gives the same
bytes and the same version id.

DPO rows follow TRL's conversational preference format and the navigator contract
(`pipelines.navigator`): `prompt` is exactly the plan request the solver sends for the
problem (with the hints the chosen trajectory was sampled with), `chosen` / `rejected`
are one assistant message each holding the reply that stands for the trajectory
(`render_plan`), which the solver's parser accepts. SFT rows are the paper's first
stage (template name and tags -> description and application scope) plus, unless
turned off, plan examples: the best-rewarded trajectories of train-split problems as
(plan request -> plan reply) conversations in the same contract.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from kb.datasets import (
    DataPart,
    ExportSpec,
    check_license,
    check_output_dir,
    write_dataset,
)
from kb.db import Database
from kb.errors import InputError, NotFound
from kb.runs import pipeline_run
from pipelines import licences, navigator

KINDS = ("dpo", "sft", "templates", "problems")

SFT_QUESTION = (
    "Thought template: {name}\nTags: {tags}\n\nDescribe this thought template and state its "
    "application scope."
)
SFT_ANSWER = "Description: {description}\n\nApplication scope: {application_scope}"


def fetch_columns(conn, query: str, params: dict, schema: pa.Schema, order_by: str) -> pa.Table:
    """QUERY's columns (named as in SCHEMA: int64, float64 or string) as an Arrow table, ordered by ORDER_BY.

    The numbers of a row come back packed into one bytea record (big-endian), all rows' records in one bytea;
    each string column as one bytea of UTF-8 values, each ended by a NUL byte (which PostgreSQL text cannot
    hold), NULL written as 0xFF (which UTF-8 never uses). Arrow wraps them without a Python object per value
    and the server runs one aggregate per string column, not three: what makes 10^6-row exports fast. A bytea
    is limited to 1 GB, which bounds one export's text column at about that size.
    """
    agg = "string_agg({}, ''::bytea ORDER BY " + order_by + ")"
    numbers = [f for f in schema if not pa.types.is_string(f.type)]
    strings = [f for f in schema if pa.types.is_string(f.type)]
    sends = [
        f'{"int8send" if pa.types.is_integer(f.type) else "float8send"}(q."{f.name}"::'
        f"{'int8' if pa.types.is_integer(f.type) else 'float8'})"
        for f in numbers
    ]
    aggs = [agg.format(" || ".join(sends))] if numbers else []
    aggs += [
        agg.format(
            f"""CASE WHEN q."{f.name}" IS NULL THEN '\\xff00'::bytea """
            f"""ELSE convert_to(q."{f.name}", 'UTF8') || '\\x00'::bytea END"""
        )
        for f in strings
    ]
    with conn.connection.driver_connection.cursor(binary=True) as cur:
        cur.execute(f"SELECT count(*), {', '.join(aggs)} FROM ({query}) AS q", params)
        n, *values = cur.fetchone()
    if not n:
        return schema.empty_table()
    arrays = dict(_number_arrays(n, values.pop(0), numbers)) if numbers else {}
    arrays.update({f.name: _string_array(n, raw) for f, raw in zip(strings, values)})
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _number_arrays(n: int, raw, fields: list[pa.Field]):
    record = np.dtype([(f.name, ">i8" if pa.types.is_integer(f.type) else ">f8") for f in fields])
    if len(raw or b"") != n * record.itemsize:
        raise NotFound("a numeric column of the export has NULLs")
    rows = np.frombuffer(raw, dtype=record)
    for f in fields:
        data = rows[f.name].astype("<i8" if pa.types.is_integer(f.type) else "<f8")
        yield f.name, pa.Array.from_buffers(f.type, n, [None, pa.py_buffer(data)])


def _string_array(n: int, raw) -> pa.Array:
    buf = np.frombuffer(raw or b"", dtype=np.uint8)
    ends = np.flatnonzero(buf == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    null = (ends - starts == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 0xFF)
    keep = buf != 0
    keep[starts[null]] = False
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(null, 0, ends - starts), out=offsets[1:])
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None
    return pa.Array.from_buffers(
        pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(buf[keep])], null_count=int(null.sum())
    )


# ---- trajectories as navigator-contract conversations -----------------------------------------------------

# Trajectories and their steps come back as columns (fetch_columns), not rows: a 10^6-pair export reads half a
# million trajectories, and a Python object per row and per array was most of its time. Hints come as the
# recorded JSON text and are read once per distinct value (_HINTS_SQL); a missing step bound is 0. The
# selection is one array literal joined on, not a parameter list the engine would walk value by value.
_TRAJECTORIES_SQL = """
    SELECT t.id, t.problem_id, t.abstraction, t.sampling->>'prompt_hash' AS contract,
           (t.sampling->'hints')::text AS hints, coalesce((t.sampling->>'max_steps')::int, 0) AS max_steps
    FROM unnest(%(ids)s::int8[]) AS sel(id) JOIN trajectory t ON t.id = sel.id
"""
_HINTS_SQL = sa.text("""
    SELECT k, ARRAY(SELECT h::int FROM jsonb_array_elements_text(
                        CASE WHEN jsonb_typeof(k::jsonb) = 'array' THEN k::jsonb END) h WHERE h IS NOT NULL)
    FROM unnest(CAST(:keys AS text[])) AS k
""")
_PROBLEMS_SQL = "SELECT p.id, p.text FROM unnest(%(ids)s::int8[]) AS sel(id) JOIN problem p ON p.id = sel.id"
_TRAJECTORY_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("problem_id", pa.int64()),
        ("abstraction", pa.string()),
        ("contract", pa.string()),
        ("hints", pa.string()),
        ("max_steps", pa.int64()),
    ]
)
_STEPS_SQL = """
    SELECT st.trajectory_id, st.position, st.text, coalesce(v.name, st.template_phrase, st.text) AS template
    FROM unnest(%(ids)s::int8[]) AS sel(id) JOIN trajectory_step st ON st.trajectory_id = sel.id
    LEFT JOIN template_version v ON v.id = st.template_version_id
"""
_STEP_SCHEMA = pa.schema([("trajectory_id", pa.int64()), ("text", pa.string()), ("template", pa.string())])


class Conversations:
    """The plan conversations of a set of trajectories, in columns: trajectory `ids` (ascending); per
    trajectory the index of its request in `prompts` and of its reply in `replies` (each distinct text
    once), its problem and the contract hash it was sampled under."""

    def __init__(
        self,
        ids: np.ndarray,
        prompt_of: np.ndarray,
        prompts: list[list],
        reply_of: np.ndarray,
        replies: list[str],
        problem_ids: np.ndarray,
        contracts: list[str | None],
    ):
        self.ids, self.prompt_of, self.prompts = ids, prompt_of, prompts
        self.reply_of, self.replies, self.problem_ids, self.contracts = (
            reply_of,
            replies,
            problem_ids,
            contracts,
        )

    def index(self, trajectory_ids) -> np.ndarray:
        """Positions of TRAJECTORY_IDS (all of which were selected) in `ids`."""
        wanted = np.asarray(trajectory_ids, dtype=np.int64)
        at = np.searchsorted(self.ids, wanted)
        if len(wanted) and (at.max() >= len(self.ids) or not np.array_equal(self.ids[at], wanted)):
            raise NotFound("a trajectory of the selection is missing")
        return at

    def as_dict(self) -> dict[int, dict[str, Any]]:
        return {
            int(tid): {
                "prompt": self.prompts[self.prompt_of[i]],
                "reply": self.replies[self.reply_of[i]],
                "contract": self.contracts[i],
                "problem_id": int(self.problem_ids[i]),
            }
            for i, tid in enumerate(self.ids)
        }


def conversation_columns(conn, trajectory_ids) -> Conversations:
    """The plan request each trajectory was sampled with and the reply that stands for it, all through
    `pipelines.navigator` (see `conversations`). Requests are built once per (problem, hints, bound) and
    replies rendered once per distinct plan: trajectories share them."""
    ids = np.unique(np.asarray(list(trajectory_ids), dtype=np.int64))
    binds = {"ids": _array_literal(ids)}
    traj = fetch_columns(conn, _TRAJECTORIES_SQL, binds, _TRAJECTORY_SCHEMA, "id")
    steps = fetch_columns(conn, _STEPS_SQL, binds, _STEP_SCHEMA, "trajectory_id, position")
    tids, problem_ids = traj["id"].to_numpy(), traj["problem_id"].to_numpy()
    step_owner = steps["trajectory_id"].to_numpy()
    starts = np.searchsorted(step_owner, tids, "left")
    ends = np.searchsorted(step_owner, tids, "right")
    max_steps = traj["max_steps"].to_numpy()
    max_steps = np.where(max_steps == 0, navigator.MAX_STEPS, max_steps)
    # Strings become codes into their distinct values: checks, keys and plans work on small ints.
    abstraction_of, abstractions = _codes(traj["abstraction"])
    blank = np.array([not (a or "").strip() for a in abstractions], dtype=bool)[abstraction_of]
    bad = blank | (starts == ends) | (ends - starts > max_steps)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"cannot be rendered as a plan reply: it needs an abstraction and 1..{max_steps[i]} steps",
            record=f"trajectory {tids[i]}",
            field="abstraction/steps",
        )
    hints_of, hint_keys = _codes(traj["hints"])
    first_rows, prompt_of = _distinct_rows(problem_ids, hints_of, max_steps)
    keys = np.stack([problem_ids[first_rows], hints_of[first_rows], max_steps[first_rows]], axis=1)
    text_of, texts = _codes(steps["text"])
    template_of, templates = _codes(steps["template"])
    text_codes, template_codes = text_of.tolist(), template_of.tolist()
    plans: dict[tuple, int] = {}
    replies: dict[str, int] = {}
    reply_of = []
    for a, start, end in zip(abstraction_of.tolist(), starts.tolist(), ends.tolist()):
        plan = (a, *text_codes[start:end], *template_codes[start:end])
        code = plans.get(plan)
        if code is None:
            reply = navigator.render_plan(
                abstractions[a],
                [(texts[t], templates[n]) for t, n in zip(text_codes[start:end], template_codes[start:end])],
            )
            code = plans[plan] = replies.setdefault(reply, len(replies))
        reply_of.append(code)
    prompts = _prompts(conn, [(p, hint_keys[h], m) for p, h, m in keys.tolist()])
    return Conversations(
        tids,
        prompt_of,
        prompts,
        np.asarray(reply_of, dtype=np.int64),
        list(replies),
        problem_ids,
        traj["contract"].to_pylist(),
    )


def _distinct_rows(*columns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the first row of each distinct combination of COLUMNS' values, each row's combination number).

    Columns are folded in pairwise as codes, each below the row count, so no product overflows int64."""
    n = len(columns[0])
    combined = np.unique(columns[0], return_inverse=True)[1].ravel()
    for column in columns[1:]:
        code = np.unique(column, return_inverse=True)[1].ravel()
        combined = np.unique(combined * n + code, return_inverse=True)[1].ravel()
    first_rows, of = np.unique(combined, return_index=True, return_inverse=True)[1:]
    return first_rows, of.ravel()


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list]:
    """COLUMN as (a code per row, the distinct values the codes index); NULL is a value like any other."""
    encoded = pa.chunked_array(column).combine_chunks().dictionary_encode(null_encoding="encode")
    return encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64), encoded.dictionary.to_pylist()


def _prompts(conn, keys: list[tuple]) -> list[list]:
    """The plan request of each (problem id, recorded hints JSON, step bound) in KEYS, in KEYS' order."""
    hint_lists = dict(
        conn.execute(_HINTS_SQL, {"keys": sorted({h for _, h, _ in keys if h is not None})}).all()
    )
    hint_ids = sorted({h for ids in hint_lists.values() for h in ids})
    hints = {
        r["id"]: navigator.Hint(r["id"], r["name"], r["application_scope"] or r["description"] or "")
        for r in conn.execute(
            sa.text(
                "SELECT id, name, application_scope, description FROM template_version WHERE id = ANY(:ids)"
            ),
            {"ids": hint_ids},
        ).mappings()
    }
    problem_ids = np.unique(np.fromiter((p for p, _, _ in keys), dtype=np.int64, count=len(keys)))
    found = fetch_columns(conn, _PROBLEMS_SQL, {"ids": _array_literal(problem_ids)}, TEXT_SCHEMA, "id")
    problems = dict(zip(found["id"].to_pylist(), found["text"].to_pylist()))
    out = []
    for problem_id, hint_key, max_steps in keys:
        shown = [hints[h] for h in hint_lists.get(hint_key, ()) if h in hints]
        out.append(navigator.plan_messages(problems[problem_id], hints=shown, max_steps=max_steps))
    return out


def _array_literal(ids: np.ndarray) -> str:
    return "{" + ",".join(map(str, ids.tolist())) + "}"


def conversations(conn, trajectory_ids) -> dict[int, dict[str, Any]]:
    """trajectory id -> {"prompt": the plan request it was sampled with, "reply": the reply that stands for
    it, "contract": the contract hash it was sampled under}, all through `pipelines.navigator`.

    A step's template is the linked version's name (the template whose use earned the reward), else the
    phrase the plan named. A trajectory that cannot be a valid reply (no abstraction, no steps) is an
    InputError naming it."""
    return conversation_columns(conn, trajectory_ids).as_dict()


def plan_texts(conn, trajectory_ids) -> dict[int, str]:
    """trajectory id -> its reply, exactly as exported in DPO chosen/rejected and SFT plan examples."""
    return {tid: c["reply"] for tid, c in conversations(conn, trajectory_ids).items()}


def check_contracts(contracts: Iterable[str | None], allow_mixed: bool) -> list[str]:
    """The contract hashes of the exported trajectories; more than one is refused unless ALLOW_MIXED."""
    counts = Counter(c or "unknown" for c in contracts)
    if len(counts) > 1 and not allow_mixed:
        listed = ", ".join(f"{k} ({n} trajectories)" for k, n in sorted(counts.items()))
        raise InputError(
            f"the selection mixes navigator contract versions: {listed}; the current one is "
            f"{navigator.CONTRACT_HASH}. Select one (e.g. pairs of one sampling run) or pass "
            "--allow-mixed-contracts",
            field="contract",
        )
    return sorted(counts)


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


# ---- dpo -------------------------------------------------------------------------------------------------

# The pairs of one selection, on train-split problems only (checked again here: defence in depth).
DPO_SQL = """
    SELECT d.id AS pair_id, d.problem_id, d.chosen_trajectory_id, d.rejected_trajectory_id,
           d.chosen_reward, d.rejected_reward, d.margin
    FROM dpo_pair d JOIN problem p ON p.id = d.problem_id
    WHERE d.params_hash = %(h)s AND d.margin >= %(min_margin)s AND p.split = 'train'
"""
PAIR_SCHEMA = pa.schema(
    [
        ("pair_id", pa.int64()),
        ("problem_id", pa.int64()),
        ("chosen_trajectory_id", pa.int64()),
        ("rejected_trajectory_id", pa.int64()),
        ("chosen_reward", pa.float64()),
        ("rejected_reward", pa.float64()),
        ("margin", pa.float64()),
    ]
)
TEXT_SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])


def _resolve_pairs(conn, ref: str | None) -> str:
    if ref is None:
        latest = conn.execute(sa.text("SELECT params_hash FROM dpo_pair ORDER BY id DESC LIMIT 1")).scalar()
        if latest is None:
            raise NotFound("there are no DPO pairs; run `reasonflux pairs build` first")
        return latest
    found = (
        conn.execute(
            sa.text("SELECT DISTINCT params_hash FROM dpo_pair WHERE params_hash LIKE :p"), {"p": ref + "%"}
        )
        .scalars()
        .all()
    )
    if len(found) != 1:
        raise NotFound(f"pairs {ref!r} match {len(found)} selections (see `reasonflux pairs list`)")
    return found[0]


def _column(codes: np.ndarray, values: list[str]) -> pa.Array:
    """The texts VALUES[CODES], dictionary-encoded: repeated prompts and replies are stored once in memory.

    The dictionary holds each distinct text once, in the order of its first row (equal VALUES are merged),
    as Parquet then writes it: the bytes do not depend on how VALUES were numbered."""
    merged: dict[str, int] = {}
    same = np.fromiter((merged.setdefault(v, len(merged)) for v in values), dtype=np.int64, count=len(values))
    codes = same[codes]
    used, first = np.unique(codes, return_index=True)
    order = used[np.argsort(first, kind="stable")]
    renumber = np.zeros(len(merged), dtype=np.int32)
    renumber[order] = np.arange(len(order), dtype=np.int32)
    texts = list(merged)
    return pa.DictionaryArray.from_arrays(
        pa.array(renumber[codes], pa.int32()), pa.array([texts[k] for k in order.tolist()], pa.string())
    )


def dpo_part(
    conn, params_hash: str, min_margin: float, *, allow_mixed: bool = False
) -> tuple[DataPart, list[str]]:
    """The pairs as contract conversations, and the contract hashes they were sampled under."""
    conn.execute(sa.text("SET LOCAL work_mem = '64MB'"))
    binds = {"h": params_hash, "min_margin": float(min_margin)}
    pairs = fetch_columns(conn, DPO_SQL, binds, PAIR_SCHEMA, "pair_id")
    chosen_ids = pairs["chosen_trajectory_id"].to_numpy()
    rejected_ids = pairs["rejected_trajectory_id"].to_numpy()
    convs = conversation_columns(conn, np.concatenate([chosen_ids, rejected_ids]))
    contracts = check_contracts(convs.contracts, allow_mixed)
    chosen, rejected = convs.index(chosen_ids), convs.index(rejected_ids)
    # The prompt is the chosen trajectory's request: both were sampled for the same problem, and with the
    # same hints unless the library changed between their samplings. Message j of request k is value 2k + j.
    if any(len(p) != 2 for p in convs.prompts):
        raise InputError("a plan request is not (system, user)", field="prompt")
    prompt_values = [m["content"] for p in convs.prompts for m in p]
    prompt_codes = (2 * convs.prompt_of[chosen])[:, None] + np.arange(2)
    table = pa.table(
        {
            "prompt": _messages(["system", "user"], _column(prompt_codes.ravel(), prompt_values), 2),
            "chosen": _messages(["assistant"], _column(convs.reply_of[chosen], convs.replies), 1),
            "rejected": _messages(["assistant"], _column(convs.reply_of[rejected], convs.replies), 1),
            **{name: pairs[name].combine_chunks() for name in PAIR_SCHEMA.names},
        }
    )
    return DataPart(
        "train",
        table,
        description=(
            "One row per DPO pair in TRL's conversational preference format, in the navigator contract "
            f"({navigator.CONTRACT_HASH}): `prompt` is exactly the plan request the solver sends (system message, "
            "problem, the template hints the chosen trajectory was sampled with); `chosen` and `rejected` hold one "
            "assistant message each, the JSON plan reply that stands for the trajectory (`render_plan`), which the "
            "solver's parser accepts. Rewards are the mean rollout correctness over the anchor's similar set; only "
            "train-split anchors."
        ),
    ), contracts


DPO_USAGE = """```python
from datasets import load_dataset
from trl import DPOConfig, DPOTrainer

ds = load_dataset("parquet", data_files="data/train.parquet", split="train")
trainer = DPOTrainer(model=model, args=DPOConfig(output_dir="out"), train_dataset=ds, processing_class=tokenizer)
```"""


# ---- sft / templates / problems ---------------------------------------------------------------------------

# The best trajectories of train-split problems: complete rewards at or above the threshold, the top
# PER_PROBLEM per problem (ties: the earlier trajectory).
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


def template_records(conn) -> list[dict[str, Any]]:
    """Current versions of all templates, as the template interchange records (template_record)."""
    from sqlmodel import Session

    from kb.models import Template, TemplateVersion
    from kb.template_jsonl import template_record

    with Session(bind=conn) as s:
        pairs = s.execute(
            sa.select(Template, TemplateVersion)
            .join(TemplateVersion, TemplateVersion.id == Template.current_version_id)
            .order_by(Template.id)
        ).all()
        return [template_record(t, v) for t, v in pairs]


TEMPLATE_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("section", pa.string()),
        ("template_type", pa.string()),
        ("tags", pa.list_(pa.string())),
        ("description", pa.string()),
        ("application_scope", pa.string()),
        ("steps", pa.string()),
        ("example_problem", pa.string()),
        ("example_solution", pa.string()),
        ("example_answer", pa.string()),
        ("extra", pa.string()),
        ("status", pa.string()),
    ]
)


def templates_part(conn) -> DataPart:
    records = template_records(conn)
    # steps and extra are free-form JSON: stored as JSON text so the Parquet schema is fixed.
    flat = [
        {
            **{f.name: r.get(f.name) for f in TEMPLATE_SCHEMA},
            "steps": json.dumps(r.get("steps"), ensure_ascii=False, sort_keys=True),
            "extra": json.dumps(r.get("extra"), ensure_ascii=False, sort_keys=True),
        }
        for r in records
    ]
    table = pa.Table.from_pylist(flat, schema=TEMPLATE_SCHEMA)
    return DataPart(
        "templates",
        table,
        records=lambda: records,
        description=(
            "Current version of every template. JSONL lines are exactly the template interchange records "
            "(`reasonflux import jsonl` reads them back); in Parquet, `steps` and `extra` are JSON text."
        ),
    )


PROBLEM_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("text", pa.string()),
        ("solution", pa.string()),
        ("answer", pa.string()),
        ("source", pa.string()),
        ("source_id", pa.string()),
        ("split", pa.string()),
        ("subject", pa.string()),
        ("difficulty", pa.int64()),
        ("content_hash", pa.string()),
        ("extra", pa.string()),
    ]
)


def problems_part(conn, selection: str | None) -> DataPart:
    from pipelines.selection import select_problem_ids

    ids = select_problem_ids(conn, selection)
    rows = (
        conn.execute(
            sa.text(
                "SELECT id, text, solution, answer, source, source_id, split, subject, difficulty, content_hash, extra "
                "FROM problem WHERE id = ANY(:ids) ORDER BY id"
            ),
            {"ids": ids},
        )
        .mappings()
        .all()
    )
    flat = [{**r, "extra": json.dumps(r["extra"], ensure_ascii=False, sort_keys=True)} for r in rows]
    return DataPart(
        "problems",
        pa.Table.from_pylist(flat, schema=PROBLEM_SCHEMA),
        description=(
            "Problems with reference solution and answer, in id order; `extra` holds the source's other fields "
            "as JSON text."
        ),
    )


# ---- entry point ------------------------------------------------------------------------------------------

# Hub card metadata per kind: task categories and extra tags.
HUB_METADATA = {
    "dpo": (("text-generation",), ("dpo", "preference")),
    "sft": (("text-generation",), ("sft",)),
    "templates": (("text-generation",), ("template-library",)),
    "problems": (("question-answering", "text-generation"), ("math-word-problems",)),
}


def _source_ids(conn, kind: str, table: pa.Table) -> dict[str, list]:
    """What `pipelines.licences.sources` needs to find the sources of an export of KIND with rows TABLE."""

    def ids(column: str) -> list:  # distinct: a million-pair export has far fewer problems
        return pc.unique(table[column]).to_pylist()

    if kind == "dpo":
        return {"problems": ids("problem_id"), "trajectories": ids("chosen_trajectory_id")}
    if kind == "sft":
        return {"versions": ids("version_id"), "trajectories": ids("trajectory_id")}
    if kind == "templates":
        return {"versions": conn.execute(sa.text("SELECT current_version_id FROM template")).scalars().all()}
    return {"problems": ids("id")}


def _license_note(given: str | None, found: list[dict[str, Any]]) -> str:
    sources = licences.describe(found) or "none"
    if given is not None:
        return f"(given by the exporter; the sources: {sources})"
    if any(s["license"] for s in found):
        return f"(the licence recorded for every source: {sources})"
    return f"(no licence is recorded for any source: {sources})"


def export(
    db: Database,
    kind: str,
    out_dir: str | Path,
    *,
    formats: tuple[str, ...] = ("parquet",),
    pairs: str | None = None,
    min_margin: float = 0.0,
    problems: str | None = None,
    templates: bool = True,
    plans: bool = True,
    plan_min_reward: float = 0.75,
    plans_per_problem: int = 1,
    allow_mixed_contracts: bool = False,
    license: str | None = None,
) -> dict[str, Any]:
    """Write one dataset version of KIND into OUT_DIR; returns the manifest (plus its path).

    dpo: PAIRS (params hash or prefix; default the latest) with margin >= MIN_MARGIN. sft: (TEMPLATES) template
    rows plus, with PLANS, plan examples of trajectories with reward >= PLAN_MIN_REWARD (PLANS_PER_PROBLEM per problem).
    Trajectories sampled under different navigator contracts are refused unless ALLOW_MIXED_CONTRACTS.
    FORMATS: parquet and/or jsonl, or llamafactory (Parquet plus the LLaMA-Factory copy, sft and dpo).
    LICENSE: the Hub licence id written into the card and recorded with the version; None: the licence the
    data's sources agree on (`pipelines.licences`), refused (InputError) when they do not.
    """
    from pipelines import export_llamafactory

    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}", field="kind")
    if not formats or set(formats) - {"parquet", "jsonl", "llamafactory"}:
        raise InputError("formats are parquet and/or jsonl, or llamafactory", field="--format")
    if "llamafactory" in formats and kind not in export_llamafactory.KINDS:
        raise InputError(
            f"the llamafactory format is for {' and '.join(export_llamafactory.KINDS)} exports",
            field="--format",
        )
    check_license(license)
    extra_files = [export_llamafactory.writer] if "llamafactory" in formats else []
    formats = tuple(f for f in formats if f != "llamafactory") or ("parquet",)
    check_output_dir(out_dir)
    with pipeline_run(db, "export", {"kind": kind, "out": str(out_dir), "formats": list(formats)}) as (
        run_id,
        counts,
    ):
        with db.engine.begin() as conn:
            conn.execute(sa.text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"))
            if kind == "dpo":
                phash = _resolve_pairs(conn, pairs)
                part, contracts = dpo_part(conn, phash, min_margin, allow_mixed=allow_mixed_contracts)
                params = {
                    "pairs": phash,
                    "min_margin": float(min_margin),
                    "split": "train",
                    "contracts": contracts,
                }
                intro, usage = "DPO pairs of navigator trajectories.", DPO_USAGE
            elif kind == "sft":
                part, mix = sft_part(
                    conn,
                    templates=templates,
                    plans=plans,
                    min_reward=plan_min_reward,
                    per_problem=plans_per_problem,
                    allow_mixed=allow_mixed_contracts,
                )
                params = {"templates": "current", "status": "active", "mix": mix}
                intro, usage = "SFT data for template knowledge and planning (ReasonFlux stage 1).", ""
            elif kind == "templates":
                params = {"templates": "current", "status": "any"}
                part, intro, usage = templates_part(conn), "The thought-template library.", ""
            else:
                from pipelines.selection import PROBLEM_KEYS, parse_selection

                params = {"problems": parse_selection(problems, PROBLEM_KEYS).to_dict()}
                part, intro, usage = problems_part(conn, problems), "Problems.", ""
            found = licences.sources(conn, **_source_ids(conn, kind, part.table))
        chosen = license if license is not None else licences.choose(found)
        task_categories, tags = HUB_METADATA[kind]
        spec = ExportSpec(
            kind=kind,
            params=params,
            parts=[part],
            formats=tuple(sorted(formats, reverse=True)),
            card_intro=intro,
            usage=usage,
            license=chosen,
            task_categories=task_categories,
            tags=tags,
            extra_files=extra_files,
            license_note=_license_note(license, found),
            extra_manifest={"license_sources": found, "license_given": license is not None},
        )
        manifest = write_dataset(db, spec, out_dir, run_id=run_id)
        counts.update(dataset_version=manifest["id"], rows=part.table.num_rows)
    return manifest
