"""The one name resolver: a registered navigator or model name -> its local folder.

Navigators (`navigator_model`, registered by training) and base models (`model`, registered by
`reasonflux models get|add`) share one namespace, so a name means one folder wherever it is accepted: role
specs (`NAME`, `transformers:NAME`, `vllm:NAME`), `--base-model`, `loop` and `serve`. `claim` keeps it one:
registering either kind takes the same lock and refuses a name the other kind holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb.db import Database
from kb.errors import ConflictError, InputError, NotFound

# No '/' (a path), no ':' (a backend spec), no '@' (an openai URL): a name is never mistaken for a spec.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_LOCK = "reasonflux-model-names"

_LOOKUP = sa.text(
    "SELECT 'navigator' AS kind, name, path, gguf_path FROM navigator_model WHERE name = :n "
    "UNION ALL SELECT 'model', name, path, gguf_path FROM model WHERE name = :n"
)
_ALL = sa.text("SELECT name FROM navigator_model UNION ALL SELECT name FROM model ORDER BY 1")


@dataclass(frozen=True)
class Named:
    kind: str  # navigator | model
    name: str
    path: str
    gguf_path: str | None


def lookup(conn: Any, name: str) -> Named | None:
    """The registered navigator or model NAME (CONN: a connection or ORM session), or None."""
    row = conn.execute(_LOOKUP, {"n": name}).mappings().first()
    return Named(**row) if row is not None else None


def lookup_db(db: Database, name: str) -> Named | None:
    with db.engine.connect() as conn:
        return lookup(conn, name)


def registered_names(conn: Any) -> list[str]:
    return list(conn.execute(_ALL).scalars())


def resolve(conn: Any, name_or_path: str) -> str:
    """The folder of a registered navigator or model name, or a local model directory as given."""
    named = lookup(conn, name_or_path)
    if named is not None:
        return named.path
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path)
    known = registered_names(conn)
    raise NotFound(
        f"no navigator or model named {name_or_path!r} and no such model directory; registered: "
        f"{', '.join(known) or 'none'} (see `reasonflux navigators list`, `reasonflux models list`)"
    )


def check_name(name: str, field: str = "name") -> None:
    if not NAME_PATTERN.match(name):
        raise InputError(
            "a model name is letters, digits, '.', '_' and '-' (at most 63), starting with a letter "
            "or digit; not a path or a backend spec",
            field=field,
        )


def claim(conn: Any, name: str, kind: str) -> None:
    """Refuse NAME if a navigator or model holds it. Call inside the transaction that inserts the row: the
    lock (held to its end) keeps a concurrent registration of the other kind from taking the name too."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": _LOCK})
    held = lookup(conn, name)
    if held is not None:
        raise ConflictError(
            f"the name {name!r} is already a registered {held.kind} (at {held.path}); "
            f"choose another name for the {kind}"
        )
