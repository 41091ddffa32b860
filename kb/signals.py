"""SIGTERM handled like Ctrl-C, for the CLI and for library callers.

Apart from kb.runs so that the CLI's entry point installs the handler without importing the database layer.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["Terminated", "install_sigterm_handler", "interruption_reason", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: runs end `interrupted`, the CLI exits 143."""


def _raise_terminated(signum, frame):
    raise Terminated()


def install_sigterm_handler() -> None:
    """For the whole process (the CLI's entry point): SIGTERM raises Terminated in the main thread."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises Terminated while the block runs (library callers that did not install the handler)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interruption_reason(e: BaseException) -> str:
    return "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted by user"
