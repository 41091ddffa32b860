"""Exports as Hub datasets: both `load_dataset` ways for every kind, the card's front matter, and
`--push-to-hub` up to and including the upload calls, against a local stand-in of the Hub's HTTP API
(the real Hub cannot be reached from the tests: what is checked is the requests huggingface_hub makes)."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
import sqlalchemy as sa
import yaml

from tests.pipelines.test_export import world  # noqa: F401  (fixture)

KINDS = ("dpo", "sft", "templates", "problems")


def _front_matter(folder) -> dict:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def _load(*args, tmp_path, **kw):
    import datasets

    return datasets.load_dataset(*args, cache_dir=str(tmp_path / "hf-cache"), **kw)


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_loads_both_ways_and_its_card_describes_it(cli, db, world, tmp_path, kind):  # noqa: F811
    import datasets
    import pyarrow.parquet as pq

    out = tmp_path / kind
    manifest = json.loads(
        cli("export", kind, "--out", str(out), "--jsonl", "--license", "cc-by-4.0", "--json").output
    )
    rows = sum(manifest["row_counts"].values())
    by_dir = _load(str(out), tmp_path=tmp_path)
    by_parquet = _load("parquet", data_dir=str(out), tmp_path=tmp_path)
    assert list(by_dir) == list(by_parquet) == ["train"]
    assert by_dir["train"].num_rows == by_parquet["train"].num_rows == rows > 0
    assert by_dir["train"].to_list() == by_parquet["train"].to_list()
    jsonl = _load("json", data_files=str(out / "jsonl" / f"{kind}.jsonl"), tmp_path=tmp_path)
    assert jsonl["train"].num_rows == rows  # the JSONL copy beside the Parquet data

    meta = _front_matter(out)
    assert meta["license"] == "cc-by-4.0" and meta["language"] == ["en"]
    assert meta["task_categories"] and meta["size_categories"] == ["n<1K"]
    assert {"reasonflux", "math"} <= set(meta["tags"])
    assert meta["configs"][0] == {
        "config_name": "default",
        "data_files": [{"split": "train", "path": "data/train.parquet"}],
    }
    schema = pq.read_schema(out / "data" / "train.parquet")
    assert meta["dataset_info"]["features"] == datasets.Features.from_arrow_schema(schema)._to_yaml_list()
    info = meta["dataset_info"]
    # What `datasets` computes when it prepares the split: the card states the same rows and bytes.
    assert info["splits"] == [
        {"name": "train", "num_bytes": by_dir["train"].info.splits["train"].num_bytes, "num_examples": rows}
    ]
    assert info["dataset_size"] == info["splits"][0]["num_bytes"] > 0
    assert info["download_size"] == (out / "data" / "train.parquet").stat().st_size
    assert datasets.DatasetInfo._from_yaml_dict(info).splits["train"].num_examples == rows
    assert by_dir["train"].features == datasets.Features.from_arrow_schema(schema)
    # The licence is recorded with the version, in the manifest and in the KB.
    assert manifest["license"] == manifest["params"]["license"] == "cc-by-4.0"
    with db.engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT params->>'license' FROM dataset_version WHERE id = :i"), {"i": manifest["id"]}
            ).scalar()
            == "cc-by-4.0"
        )


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_every_kind_loads_without_a_warning(cli, db, world, tmp_path, caplog, fmt):  # noqa: F811
    """No "Ignoring part of dataset_info" (a logging warning of `datasets`) nor any Python warning."""
    import logging
    import warnings

    for kind in KINDS:
        out = tmp_path / kind
        cli("export", kind, "--out", str(out), "--format", fmt)
        caplog.clear()
        with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
            warnings.simplefilter("error")
            ds = _load(str(out), tmp_path=tmp_path)
        assert ds["train"].num_rows > 0
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [], kind


def test_jsonl_only_exports_load_both_ways(cli, db, world, tmp_path):  # noqa: F811
    out = tmp_path / "tpl"
    cli("export", "templates", "--out", str(out), "--format", "jsonl")
    assert _load(str(out), tmp_path=tmp_path)["train"].num_rows == 2
    assert _load("json", data_dir=str(out), tmp_path=tmp_path)["train"].num_rows == 2


def test_licence_must_be_an_identifier(cli, db, world, tmp_path):  # noqa: F811
    result = cli("export", "sft", "--out", str(tmp_path / "x"), "--license", "Use it nicely!", expect=2)
    assert "--license" in result.output and not (tmp_path / "x").exists()


class _StandInHub(BaseHTTPRequestHandler):
    """The few Hub API endpoints `create_repo` and `upload_folder` call, recording what they receive."""

    requests: ClassVar[list[tuple[str, str, str | None, bytes]]] = []

    def _reply(self, code: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(("POST", self.path, self.headers.get("authorization"), body))
        host = self.headers.get("Host")
        if self.path == "/api/repos/create":
            spec = json.loads(body)
            name = f"{spec['organization']}/{spec['name']}" if spec.get("organization") else spec["name"]
            return self._reply(200, {"url": f"http://{host}/datasets/{name}", "name": name})
        if self.path == "/api/validate-yaml":  # the real Hub checks the card's metadata here
            meta = yaml.safe_load(json.loads(body)["content"].split("---\n")[1])
            missing = [k for k in ("license", "configs") if k not in meta]
            return self._reply(
                400 if missing else 200, {"errors": [{"message": f"{k} missing"} for k in missing]}
            )
        if "/preupload/" in self.path:
            return self._reply(
                200,
                {
                    "files": [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                        for f in json.loads(body)["files"]
                    ]
                },
            )
        if "/commit/" in self.path:
            oid = "0" * 40
            return self._reply(
                200,
                {
                    "commitUrl": f"http://{host}/datasets/me/reasonflux-sft/commit/{oid}",
                    "commitOid": oid,
                    "pullRequestUrl": None,
                },
            )
        return self._reply(404, {"error": f"stand-in has no {self.path}"})

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, self.headers.get("authorization"), b""))
        self._reply(404, {"error": f"stand-in has no {self.path}"})

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StandInHub)
    _StandInHub.requests = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    # Loading an embedding model earlier in this test process switches huggingface_hub offline
    # (kb.embeddings never downloads); a push is the one thing that must go online.
    import huggingface_hub.constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield _StandInHub.requests
    server.shutdown()


def _committed_files(requests) -> dict[str, bytes]:
    """path -> content of the files in the commit's NDJSON payload (regular upload: base64 inline)."""
    commit = next(body for method, path, _, body in requests if "/commit/" in path)
    files = {}
    for line in commit.decode().splitlines():
        item = json.loads(line)
        if item["key"] == "file":
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_push_to_hub_uploads_the_verified_folder(cli, db, world, tmp_path, hub, monkeypatch):  # noqa: F811
    monkeypatch.setenv("HF_TOKEN", "hf_standin_token")
    out = tmp_path / "sft"
    result = json.loads(
        cli(
            "export", "sft", "--out", str(out), "--push-to-hub", "me/reasonflux-sft", "--private", "--json"
        ).output
    )
    assert result["hub"]["repo"] == "me/reasonflux-sft" and result["hub"]["commit"] == "0" * 40
    create = json.loads(next(body for _, path, _, body in hub if path == "/api/repos/create"))
    assert create["name"] == "reasonflux-sft" and create["type"] == "dataset"
    assert create.get("private") is True or create.get("visibility") == "private"
    assert {auth for _, path, auth, _ in hub if path == "/api/repos/create" or "/commit/" in path} == {
        "Bearer hf_standin_token"
    }
    pushed = _committed_files(hub)
    on_disk = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert pushed == on_disk and {"README.md", "manifest.json", "data/train.parquet"} <= set(pushed)
    assert any(path.startswith("/api/datasets/me/reasonflux-sft/commit/") for _, path, _, _ in hub)


def test_push_without_a_token_says_how_to_get_one_and_keeps_the_export(
    cli,
    db,
    world,  # noqa: F811
    tmp_path,
    hub,
    monkeypatch,
):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no token anywhere on this machine
    result = cli("export", "sft", "--out", str(tmp_path / "sft"), "--push-to-hub", "me/x", expect=1)
    assert "no Hugging Face token" in result.output and "hf auth login" in result.output
    assert "export itself is written" in result.output and (tmp_path / "sft" / "manifest.json").is_file()
    assert hub == []  # nothing was sent


def test_size_categories_follow_the_hub_labels():
    from kb.dataset_card import _size_category

    assert [_size_category(n) for n in (0, 999, 1000, 123_456, 10**6, 5 * 10**9, 10**13)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "100K<n<1M",
        "1M<n<10M",
        "1B<n<10B",
        "n>1T",
    ]
