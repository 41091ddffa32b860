"""Solve traces: `store` writes a session's rounds and reads them back, `render` makes them readable.

The names below are the documented Python API (docs/serving.md: `from serve.traces import get_session,
render_trace, list_sessions`), so they stay importable from the package.
"""

from serve.traces.render import event_line, render_trace
from serve.traces.store import get_session, list_sessions

__all__ = ["event_line", "get_session", "list_sessions", "render_trace"]
