"""The DPO export's part: TRL's conversational preference rows in the navigator contract.

`prompt` is exactly the plan request the solver sends for the problem (with the hints the chosen trajectory was
sampled with); `chosen` / `rejected` are one assistant message each holding the reply that stands for the
trajectory (`render_plan`), which the solver's parser accepts.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import sqlalchemy as sa

from kb.datasets import DataPart
from kb.errors import InputError, NotFound
from pipelines import navigator
from pipelines.export_columns import fetch_columns
from pipelines.export_conversations import check_contracts, conversation_columns, message_column

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


def resolve_pairs(conn, ref: str | None) -> str:
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
            "prompt": message_column(["system", "user"], _column(prompt_codes.ravel(), prompt_values), 2),
            "chosen": message_column(["assistant"], _column(convs.reply_of[chosen], convs.replies), 1),
            "rejected": message_column(["assistant"], _column(convs.reply_of[rejected], convs.replies), 1),
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
