"""Settings read from the environment, in one place.

Precedence everywhere: an explicit argument (a CLI flag) beats the environment,
which beats the default.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from kb import __version__
from kb.errors import InputError

DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"


def home_dir() -> Path:
    """Where the embedded database and other local state live (``REASONFLUX_HOME``)."""
    raw = os.environ.get("REASONFLUX_HOME")
    path = Path(raw).expanduser() if raw else Path(platformdirs.user_data_dir("reasonflux"))
    path.mkdir(parents=True, exist_ok=True)
    return path.resolve()


def database_url(explicit: str | None = None) -> str | None:
    """The external server to use, or None for the embedded one."""
    return explicit or os.environ.get("DATABASE_URL") or None


DEFAULT_DB_LINGER_S = 300.0


def db_linger_s() -> float:
    """Seconds the embedded server stays up after its last command exits (``REASONFLUX_DB_LINGER``; 0: it
    stops with the last command). A later command within that time finds it up: no start-up cost."""
    raw = os.environ.get("REASONFLUX_DB_LINGER")
    if raw is None or raw.strip() == "":
        return DEFAULT_DB_LINGER_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise InputError(
            f"must be a number of seconds, 0 or more (got {raw!r})", field="REASONFLUX_DB_LINGER"
        )
    return value


def embed_model_name(explicit: str | None = None) -> str:
    return explicit or os.environ.get("REASONFLUX_EMBED_MODEL") or DEFAULT_EMBED_MODEL


def code_version() -> str:
    """The package version plus the git commit when running from a checkout.

    Recorded on every pipeline and training run so a row can be traced to code.
    """

    git_dir = Path(__file__).resolve().parent.parent / ".git"
    head = git_dir / "HEAD"
    try:
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            ref_path = git_dir / ref[5:]
            sha = ref_path.read_text().strip() if ref_path.exists() else _packed_ref(git_dir, ref[5:])
        else:
            sha = ref
        return f"{__version__}+g{sha[:12]}" if sha else __version__
    except OSError:
        return __version__


def _packed_ref(git_dir: Path, ref: str) -> str:
    packed = git_dir / "packed-refs"
    if not packed.exists():
        return ""
    for line in packed.read_text().splitlines():
        if line.endswith(" " + ref):
            return line.split()[0]
    return ""
