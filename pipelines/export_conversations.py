"""Stored trajectories as navigator-contract conversations, column-wise (the exports' rows).

For a stored trajectory, `prompt` is exactly the plan request the solver sends for its problem (with the
hints the trajectory was sampled with) and `reply` the plan reply that stands for it (`render_plan`), which
the solver's parser accepts (`pipelines.navigator`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from kb.errors import InputError, NotFound
from pipelines import navigator
from pipelines.export_columns import fetch_columns

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
TEXT_SCHEMA = pa.schema([("id", pa.int64()), ("text", pa.string())])
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


def message_column(roles: list[str], contents: pa.Array, per_row: int) -> pa.Array:
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
