"""One scrub for secrets, applied to everything stored or printed.

Two kinds of secret are removed:
- values registered at run time (`register_secret`: the API keys backends read from the environment),
  wherever they appear;
- secrets recognisable by their shape: `Authorization`/`Bearer` credentials, `sk-...` style API keys,
  the password of a URL (`scheme://user:PASSWORD@host`) and credential query parameters in a URL
  (`?api_key=...`, `token=`, `key=`, `sig=`...);
- values stored under a secret's name (`api_key`, `token`, `password`, `secret`, `authorization`,
  `x-api-key`, ...: `is_secret_name`) at any depth: a dict's entry, or a `"name": "value"` pair in
  serialized JSON (what the engines see of a JSON column).

Token patterns never consume a backslash, so scrubbing serialized JSON keeps it valid JSON.
`scrub` works on strings and, recursively, on dicts, lists and tuples. The KB's engines scrub every
string parameter of every statement (`install`), so no table can receive a secret even from code that
forgot to call `scrub`; the CLI scrubs what it prints (`kb.output.emit`, error messages).
"""

from __future__ import annotations

import re
import threading
from typing import Any

REDACTED = "[REDACTED]"
_MIN_SECRET_LEN = 6

_SECRETS: set[str] = set()
_LOCK = threading.Lock()

_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # Authorization: Bearer xyz / Basic xyz / Token xyz, in headers, JSON or repr()s of them
    (
        re.compile(
            r"(?i)(\bauthorization\b[\"']?\s*[:=]\s*[\"']?\s*(?:bearer|basic|token)?\s*)([^\s\"',;}\\]+)"
        ),
        r"\1" + REDACTED,
    ),
    (re.compile(r"(?i)(\bbearer\s+)([A-Za-z0-9._~+/=-]{4,})"), r"\1" + REDACTED),
    # provider keys by shape: OpenAI/Anthropic sk-..., Hugging Face hf_...
    (re.compile(r"\b(?:sk|rk)-[A-Za-z0-9_-]{12,}"), REDACTED),
    (re.compile(r"\bhf_[A-Za-z0-9]{16,}"), REDACTED),
    # the password in a URL's userinfo
    (
        re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@\\]*:)(?!\*+@)([^\s@/\\]+)(@)"),
        r"\1" + REDACTED + r"\3",
    ),
    # credential query parameters of a URL
    (
        re.compile(
            r"(?i)([?&](?:api[_-]?key|apikey|key|token|access[_-]?token|secret|password|sig|signature)=)"
            r"([^&#\s\"'\\]+)"
        ),
        r"\1" + REDACTED,
    ),
)
# A key that names a secret: the name itself or its last part (`client_secret`, `x-api-key`, `HF_TOKEN`);
# `max_tokens` or `token_count` are not secrets.
_SECRET_NAMES = (
    "api_key",
    "apikey",
    "token",
    "access_token",
    "auth_token",
    "refresh_token",
    "password",
    "passwd",
    "secret",
    "client_secret",
    "secret_key",
    "private_key",
    "authorization",
    "cookie",
    "credentials",
    "bearer",
)
_SECRET_NAME_ALT = "|".join(n.replace("_", r"[_\-]?") for n in _SECRET_NAMES)
_SECRET_NAME = re.compile(r"(?i)(?:[A-Za-z0-9]+[_.\-])*(?:" + _SECRET_NAME_ALT + ")")
# "name": "value" in JSON text (and 'name': 'value' in a repr), the name as above; an escape in the value
# (\" or \\) is consumed whole, so the JSON stays valid.
_NAMED_VALUE = re.compile(
    r"""(?i)(["'](?:[A-Za-z0-9]+[_.\-])*(?:""" + _SECRET_NAME_ALT + r""")["']\s*:\s*)"""
    r"""(["'])((?:\\.|(?!\2)[^\\])+)\2"""
)
_PATTERNS = (*_PATTERNS, (_NAMED_VALUE, r"\1\2" + REDACTED + r"\2"))
# Substrings one of which every shape above contains (lower-cased): plain `in` tests are far cheaper than
# the patterns, and almost every text (a problem, a vector, a prompt) contains none of them.
_MARKERS = (
    "authorization",
    "bearer",
    "sk-",
    "rk-",
    "hf_",
    "://",
    "key",
    "token",
    "passw",
    "secret",
    "cookie",
    "credentials",
)


def is_secret_name(key: Any) -> bool:
    """A key whose value is a secret, whatever the value looks like."""
    return isinstance(key, str) and bool(_SECRET_NAME.fullmatch(key))


def register_secret(value: str | None) -> None:
    """Scrub this exact value from now on (an API key read from the environment)."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _LOCK:
            _SECRETS.add(value)


def _scrub_str(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lowered = text.lower()
    if any(marker in lowered for marker in _MARKERS):
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
    return text


def scrub(value: Any) -> Any:
    """value with every secret replaced by [REDACTED], recursively through dicts, lists and tuples."""
    if isinstance(value, str):
        return _scrub_str(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if is_secret_name(k) and v not in (None, "") else scrub(v) for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(v) for v in value]
    if isinstance(value, tuple):
        return tuple(scrub(v) for v in value)
    if type(value).__name__ in ("Json", "Jsonb") and hasattr(value, "obj"):  # psycopg's JSON parameters
        return type(value)(scrub(value.obj), getattr(value, "dumps", None))
    return value


def scrub_parameters(conn, cursor, statement, parameters, context, executemany):
    # The values only: a statement's own parameter names (`:token`) are not data.
    if isinstance(parameters, dict):
        parameters = {k: scrub(v) for k, v in parameters.items()}
    elif isinstance(parameters, (list, tuple)):
        parameters = type(parameters)(
            {k: scrub(v) for k, v in p.items()} if isinstance(p, dict) else scrub(p) for p in parameters
        )
    return statement, parameters
