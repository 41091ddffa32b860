"""The tiny offline model: builds in seconds, deterministic for a seed, loads with the Auto classes offline."""

from __future__ import annotations

import hashlib

import pytest

from demo.tiny_model import build_tiny_model, check_model_dir
from kb.errors import KbError


def _digest(path):
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(path.iterdir())
        if p.name in ("model.safetensors", "tokenizer.json", "config.json")
    }


def test_tiny_model_loads_offline_and_chats(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build_tiny_model(tmp_path / "m", seed=1)
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)
    assert model.config.model_type == "qwen2"
    assert tok.padding_side == "left"
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Find x."}], tokenize=False, add_generation_prompt=True
    )
    assert prompt == "<|im_start|>user\nFind x.<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(prompt, return_tensors="pt")
    assert tok.convert_tokens_to_ids("<|im_start|>") in ids["input_ids"][0].tolist()
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_tiny_model_is_deterministic_for_a_seed(tmp_path):
    a = _digest(build_tiny_model(tmp_path / "a", seed=3))
    b = _digest(build_tiny_model(tmp_path / "b", seed=3))
    c = _digest(build_tiny_model(tmp_path / "c", seed=4))
    assert a == b
    assert a["model.safetensors"] != c["model.safetensors"]
    assert a["tokenizer.json"] == c["tokenizer.json"]


def test_cli_builds_the_tiny_model(cli, tmp_path):
    result = cli("dev", "tiny-model", str(tmp_path / "cli"), "--seed", "2", "--json")
    assert '"seed": 2' in result.output
    assert check_model_dir(tmp_path / "cli") == tmp_path / "cli"


def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(KbError, match="never downloaded"):
        check_model_dir(tmp_path / "absent")
