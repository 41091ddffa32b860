"""Fetching pinned files from the package registry with the user's own pip (its index, proxy and config)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

from kb.errors import KbError


class DownloadFailed(KbError):
    """pip could not fetch the file (no network, the index down, no such version): the one failure a caller
    may treat as "offline" (a digest that does not match is not this)."""


PIP_TIMEOUT_S = float(os.environ.get("REASONFLUX_PIP_TIMEOUT", "900"))


def pip_download(requirement: str, dest: Path, *, sdist: bool = False) -> Path:
    """Download REQUIREMENT alone (`--no-deps`: never its dependencies) into DEST; the one file it wrote.

    A wheel unless SDIST. Any failure (no network, index down, no such version) is one KbError line."""
    fmt = ["--no-binary=:all:"] if sdist else ["--only-binary=:all:"]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        *fmt,
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "-d",
        str(dest),
        requirement,
    ]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DownloadFailed(
            f"pip could not download {requirement} within {PIP_TIMEOUT_S:.0f} s "
            "(REASONFLUX_PIP_TIMEOUT); check the network or your pip index"
        ) from None
    if done.returncode != 0:
        raise DownloadFailed(
            f"pip could not download {requirement}: {_reason(done.stderr or done.stdout)}; "
            "check the network or your pip index (pip config, PIP_INDEX_URL)"
        )
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise KbError(f"pip download {requirement} left {len(files)} files in {dest}, expected one")
    return files[0]


def _reason(output: str) -> str:
    """Why pip failed, in one line: an index it could not reach, else its own last error line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    broken = [line for line in lines if "connection broken by" in line or "Could not fetch URL" in line]
    if broken:  # pip then only says "no matching distribution", which hides the cause
        cause = re.search(
            r"(Failed to establish a new connection: [^\"')]+|Name or service not known|"
            r"Temporary failure in name resolution|timed out|ProxyError|SSLError)",
            broken[-1],
        )
        return f"the package index could not be reached ({cause.group(1) if cause else 'connection failed'})"
    errors = [line for line in lines if line.startswith("ERROR:")]
    picked = (errors or lines or ["no output"])[-1]
    return picked.removeprefix("ERROR:").strip()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise KbError(
            f"{what} {path.name} has sha256 {actual}, expected the pinned {expected}; "
            "refusing it (a different or tampered file)"
        )


def pip_install_target(requirement: str, target: Path) -> None:
    """Install REQUIREMENT's wheel alone into TARGET (a private folder put on one subprocess's PYTHONPATH)."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
        "--target",
        str(target),
        requirement,
    ]
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise KbError(f"pip could not install {requirement} within {PIP_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise KbError(
            f"pip could not install {requirement}: {_reason(done.stderr or done.stdout)}; "
            "check the network or your pip index (pip config, PIP_INDEX_URL)"
        )
