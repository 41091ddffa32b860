"""`reasonflux models export-gguf NAME`: a GGUF of a registered navigator or model, for llama.cpp.

The converter is llama.cpp's own `convert_hf_to_gguf.py`, which ships in the llama-cpp-python sdist (not in
its wheel). The first export fetches that sdist with pip (`--no-deps`, pinned sha256), keeps only the
converter, its `conversion/` package and the `gguf-py` it is written against, plus `sentencepiece` (which the
converter imports even for BPE tokenizers), in `$REASONFLUX_HOME/tools/llama.cpp-VERSION/`; later exports
run offline. The converter runs in a subprocess with that folder first on its PYTHONPATH, so its `gguf`
never clashes with the installed one, and with a timeout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kb import config as kb_config
from kb.db import Database
from kb.errors import InputError, KbError, NotFound
from pipelines.models import names, registry
from pipelines.models.download import check_sha256, pip_download, pip_install_target

LLAMA_CPP_PYTHON = "0.3.36"  # the version the project's llama.cpp server tests run
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SENTENCEPIECE = "sentencepiece==0.2.3"
OUTTYPES = ("f16", "q8_0")
MARKER = "reasonflux_tools.json"
_VENDOR = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
_KEEP = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def tools_dir() -> Path:
    return kb_config.home_dir() / "tools" / f"llama.cpp-{LLAMA_CPP_PYTHON}"


def converter(log: Callable[[str], None] = lambda m: None) -> Path:
    """The folder holding convert_hf_to_gguf.py and what it needs, fetched on first use."""
    tools = tools_dir()
    if (tools / MARKER).is_file():
        return tools
    staging = tools.parent / f".partial-{tools.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        started = time.monotonic()
        log(
            f"fetching llama.cpp's convert_hf_to_gguf.py: pip download llama-cpp-python=={LLAMA_CPP_PYTHON} "
            "(the sdist, --no-deps; once) ..."
        )
        sdist = pip_download(f"llama-cpp-python=={LLAMA_CPP_PYTHON}", staging / "sdist", sdist=True)
        check_sha256(sdist, SDIST_SHA256, "sdist")
        _extract(sdist, staging / "llama.cpp")
        pip_install_target(SENTENCEPIECE, staging / "llama.cpp" / "site")
        (staging / "llama.cpp" / MARKER).write_text(f'{{"llama_cpp_python": "{LLAMA_CPP_PYTHON}"}}\n')
        try:
            os.replace(staging / "llama.cpp", tools)
        except OSError:
            if not (tools / MARKER).is_file():  # not another export finishing first: a real failure
                raise
        log(f"converter ready in {tools} ({time.monotonic() - started:.0f} s)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tools


def _extract(sdist: Path, dest: Path) -> None:
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            if not member.name.startswith(_VENDOR) or not (member.isfile() or member.isdir()):
                continue
            rel = member.name[len(_VENDOR) :]
            if not rel.startswith(_KEEP):
                continue
            member.name = rel
            tar.extract(member, dest, filter="data")
    if not (dest / "convert_hf_to_gguf.py").is_file():
        raise KbError(f"{sdist.name} holds no {_VENDOR}convert_hf_to_gguf.py")


def default_out(name: str, outtype: str) -> Path:
    return kb_config.home_dir() / "gguf" / f"{name}.{outtype}.gguf"


def export_gguf(
    db: Database,
    name: str,
    *,
    outtype: str = "q8_0",
    out: str | Path | None = None,
    timeout_s: float = 3600,
    log: Callable[[str], None] = lambda m: None,
) -> dict[str, Any]:
    """Convert registered navigator or model NAME to a GGUF at OUT; record it on the name's row."""
    if outtype not in OUTTYPES:
        raise InputError(f"must be one of {', '.join(OUTTYPES)}", field="outtype")
    named = names.lookup_db(db, name)
    if named is None:
        raise NotFound(
            f"no navigator or model named {name!r} (see `reasonflux navigators list`, "
            "`reasonflux models list`)"
        )
    source = Path(named.path)
    if not (source / "config.json").is_file():
        raise InputError(
            f"the {named.kind} {name!r} has no config.json in its folder (moved or deleted?)",
            file=str(source),
        )
    target = Path(out).expanduser().resolve() if out else default_out(name, outtype)
    if target.exists() and str(target) != named.gguf_path:
        raise InputError(
            "already exists and is not this model's earlier export; choose another --out",
            file=str(target),
            field="out",
        )
    tools = converter(log)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    log(f"{name}: converting {source} to {outtype} GGUF with convert_hf_to_gguf.py ...")
    started = time.monotonic()
    try:
        _run_converter(tools, source, outtype, partial, timeout_s)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    seconds = round(time.monotonic() - started, 1)
    registry.set_gguf_path(db, named, target)
    return {
        "name": name,
        "kind": named.kind,
        "outtype": outtype,
        "gguf_path": str(target),
        "bytes": target.stat().st_size,
        "seconds": seconds,
        "source": str(source),
    }


def _run_converter(tools: Path, source: Path, outtype: str, outfile: Path, timeout_s: float) -> None:
    inherited = os.environ.get("PYTHONPATH")
    path = [str(tools / "gguf-py"), str(tools / "site"), *([inherited] if inherited else [])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    cmd = [
        sys.executable,
        str(tools / "convert_hf_to_gguf.py"),
        str(source),
        "--outtype",
        outtype,
        "--outfile",
        str(outfile),
    ]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise KbError(f"convert_hf_to_gguf.py did not finish within {timeout_s:.0f} s (--timeout)") from None
    if done.returncode != 0:
        raise KbError(f"convert_hf_to_gguf.py could not convert {source}: {_reason(done.stderr)}")


def _reason(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    error = next((line for line in reversed(lines) if "Error" in line.split(":", 1)[0]), None)
    reason = error or (lines[-1] if lines else "no output")
    if "pre-tokenizer was not recognized" in reason:
        reason += (
            " (llama.cpp knows a tokenizer by its pre-tokenizer's behaviour: models trained from a "
            "known base, e.g. smollm2-135m-instruct or Qwen2.5, convert; a custom tokenizer does not)"
        )
    return reason
