"""`export sft|dpo --format llamafactory`: files and dataset_info.json that LLaMA-Factory takes unchanged.

Always checked against LLaMA-Factory's documented dataset_info.json schema (data/README.md of its
repository: `sharegpt` formatting, `columns` and `tags` mapping, `ranking: true` with `chosen` /
`rejected` for preference data). When the `llamafactory` package is importable, its own loader
(`get_dataset_list`, `_load_single_dataset`, which aligns the rows) reads the folder too; it is not a
dependency of this project (it pulls gradio, peft and more), so that test is skipped otherwise.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from kb.dataset_verify import verify
from pipelines.export_llamafactory import dataset_name
from tests.pipelines.test_export import world  # noqa: F401  (fixture)

# dataset_info.json keys LLaMA-Factory documents for a local file in sharegpt format.
ENTRY_KEYS = {
    "file_name",
    "formatting",
    "ranking",
    "subset",
    "split",
    "folder",
    "num_samples",
    "columns",
    "tags",
}
SHAREGPT_COLUMNS = {
    "messages",
    "system",
    "tools",
    "images",
    "videos",
    "audios",
    "chosen",
    "rejected",
    "kto_tag",
}
TAG_KEYS = {
    "role_tag",
    "content_tag",
    "user_tag",
    "assistant_tag",
    "observation_tag",
    "function_tag",
    "system_tag",
}


def _export(cli, kind, out):
    return json.loads(cli("export", kind, "--out", str(out), "--format", "llamafactory", "--json").output)


def _check_against_documented_schema(folder, kind) -> list[dict]:
    info = json.loads((folder / "dataset_info.json").read_text())
    entry = info[dataset_name(kind)]
    assert set(entry) <= ENTRY_KEYS and entry["formatting"] == "sharegpt"
    assert set(entry["columns"]) <= SHAREGPT_COLUMNS and set(entry["tags"]) <= TAG_KEYS
    assert entry.get("ranking", False) is (kind == "dpo")
    tags, columns = entry["tags"], entry["columns"]
    path = folder / entry["file_name"]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows
    role, content = tags["role_tag"], tags["content_tag"]
    for row in rows:
        messages = row[columns["messages"]]
        if messages and messages[0][role] == tags.get("system_tag"):
            messages = messages[1:]
        expected = [tags["user_tag"], tags["assistant_tag"]] * len(messages)
        assert [m[role] for m in messages] == expected[: len(messages)]
        assert all(isinstance(m[content], str) and m[content] for m in messages)
        if kind == "dpo":  # a prompt ending with the user, then one assistant answer each
            assert len(messages) % 2 == 1
            for side in ("chosen", "rejected"):
                answer = row[columns[side]]
                assert isinstance(answer, dict) and answer[role] == tags["assistant_tag"] and answer[content]
        else:
            assert len(messages) % 2 == 0
    return rows


@pytest.mark.parametrize("kind", ["sft", "dpo"])
def test_llamafactory_files_follow_the_documented_schema(cli, db, world, tmp_path, kind):  # noqa: F811
    import pyarrow.parquet as pq

    out = tmp_path / kind
    manifest = _export(cli, kind, out)
    rows = _check_against_documented_schema(out, kind)
    table = pq.read_table(out / "data" / "train.parquet")
    assert len(rows) == table.num_rows == sum(manifest["row_counts"].values())
    if kind == "dpo":  # the same rows as the Parquet data, converted
        first = table.slice(0, 1).to_pylist()[0]
        assert rows[0] == {
            "messages": first["prompt"],
            "chosen": first["chosen"][0],
            "rejected": first["rejected"][0],
        }
    assert {"dataset_info.json", f"llamafactory/{dataset_name(kind)}.jsonl"} <= set(manifest["files"])
    assert verify(db, out)["warnings"] == []
    import datasets  # the LLaMA-Factory files beside the data do not disturb the Hub loaders

    for args, kw in (((str(out),), {}), (("parquet",), {"data_dir": str(out)})):
        loaded = datasets.load_dataset(*args, cache_dir=str(tmp_path / "hf-cache"), **kw)
        assert list(loaded) == ["train"] and loaded["train"].num_rows == len(rows)


def test_llamafactory_format_is_only_for_sft_and_dpo(cli, db, world, tmp_path):  # noqa: F811
    assert (
        "llamafactory"
        in cli(
            "export", "templates", "--out", str(tmp_path / "t"), "--format", "llamafactory", expect=2
        ).output
    )


@pytest.mark.parametrize(
    "kind,stage", [("sft", "sft"), ("dpo", "rm")]
)  # LLaMA-Factory loads DPO data as "rm"
def test_llamafactory_own_loader_reads_the_export(cli, db, world, tmp_path, kind, stage):  # noqa: F811
    parser = pytest.importorskip("llamafactory.data.parser", reason="llamafactory is not installed")
    loader = pytest.importorskip("llamafactory.data.loader")
    out = tmp_path / kind
    _export(cli, kind, out)
    [attr] = parser.get_dataset_list([dataset_name(kind)], str(out))
    assert (stage == "rm") == attr.ranking  # what _get_merged_dataset checks per stage
    model_args = SimpleNamespace(cache_dir=str(tmp_path / "cache"), hf_hub_token=None)
    data_args = SimpleNamespace(
        dataset_dir=str(out),
        streaming=False,
        max_samples=None,
        preprocessing_num_workers=None,
        overwrite_cache=True,
        media_dir=str(out),
    )
    training_args = SimpleNamespace(local_process_index=0, dataloader_num_workers=0)
    aligned = loader._load_single_dataset(attr, model_args, data_args, training_args)
    assert aligned.num_rows > 0
    for row in aligned:  # a row LLaMA-Factory finds malformed comes back with an empty prompt
        assert row["_prompt"] and row["_response"]
        assert len(row["_response"]) == (2 if kind == "dpo" else 1)
        assert row["_prompt"][-1]["role"] == "user"
    if kind == "dpo":
        assert aligned[0]["_system"].startswith("You are the navigator")
