"""Read-only SQL for people and scripts: one statement, as a role that can only read, a time limit.

The wall is the server's privilege system; the rest is defence in depth:
1. The statement runs on its own connection, logged in as `reasonflux_reader` (kb.reader_role): it may
   SELECT our tables and views and nothing else, is no superuser and a member of no role, so it
   cannot write, read server files, signal other sessions, or SET ROLE / SET SESSION AUTHORIZATION
   back to the owner, whatever the text says.
2. It runs in `BEGIN READ ONLY` (checked), and is always rolled back. Its time limit is kept from
   outside the statement: `statement_timeout` is set again to the time left before every FETCH, and
   a timer cancels the query at the deadline, so a statement that switches its own timeout off
   (set_config) still stops on time.
3. Up front, the text is tokenised (comments, quoted strings and dollar quotes skipped) and refused
   unless it is ONE statement that starts like a query (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN)
   and names no data-modifying keyword or side-effecting function; this gives a clear message
   before anything reaches the server.
Results are read through a server-side cursor that stops at max_rows, so a query producing
billions of rows costs max_rows rows of memory.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from sqlalchemy.engine import Engine

from kb.defaults import SQL_TIMEOUT_S as DEFAULT_TIMEOUT_S
from kb.errors import KbError, TimedOut
from kb.reader_role import ReaderUnavailable, connect_reader, ensure_reader_role, reassert_password

QUERY_STARTS = ("SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN")
# Keywords that only ever write (as a clause of a writable CTE, SELECT ... INTO, FOR UPDATE, ...).
# Transaction control and SET need no entry: they can only start a statement, and only one is allowed.
WRITE_KEYWORDS = frozenset(
    {
        "INSERT",
        "UPDATE",
        "DELETE",
        "MERGE",
        "TRUNCATE",
        "CREATE",
        "DROP",
        "ALTER",
        "GRANT",
        "REVOKE",
        "COPY",
        "INTO",
        "CALL",
        "VACUUM",
        "CLUSTER",
        "REINDEX",
        "REFRESH",
        "LOCK",
        "NOTIFY",
        "LISTEN",
        "PREPARE",
        "EXECUTE",
        "DEALLOCATE",
        "DISCARD",
        "CHECKPOINT",
        "COMMIT",
        "ROLLBACK",
        "SAVEPOINT",
    }
)
# Functions that act outside the transaction or change session state: refused by name.
SIDE_EFFECT_FUNCTIONS = frozenset(
    {
        "set_config",
        "pg_terminate_backend",
        "pg_cancel_backend",
        "pg_signal_backend",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_create_restore_point",
        "pg_backup_start",
        "pg_backup_stop",
        "pg_log_backend_memory_contexts",
        "pg_advisory_lock",
        "pg_advisory_lock_shared",
        "pg_advisory_xact_lock",
        "pg_advisory_xact_lock_shared",
        "pg_try_advisory_lock",
        "pg_try_advisory_lock_shared",
        "pg_try_advisory_xact_lock",
        "pg_try_advisory_xact_lock_shared",
        "pg_advisory_unlock",
        "pg_advisory_unlock_all",
        "pg_advisory_unlock_shared",
        "pg_read_file",
        "pg_read_binary_file",
        "pg_ls_dir",
        "pg_stat_file",
        "pg_file_write",
        "lo_import",
        "lo_export",
        "lo_create",
        "lo_unlink",
        "lo_put",
        "lo_from_bytea",
        "nextval",
        "setval",
        "dblink",
        "dblink_exec",
        "pg_notify",
        "txid_current",
        "pg_current_xact_id",
        "pg_drop_replication_slot",
        "pg_create_logical_replication_slot",
        "pg_create_physical_replication_slot",
        "pg_replication_origin_create",
        "pg_stat_reset",
        "pg_stat_reset_shared",
        "pg_stat_reset_single_table_counters",
        # They run SQL text they are given (where the statement could change its own settings unseen); the role
        # may not execute them either (kb.reader_role).
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "ts_stat",
        "crosstab",
        "crosstab2",
        "crosstab3",
        "crosstab4",
        "connectby",
        "dblink_connect",
        "dblink_send_query",
        "dblink_open",
        "pg_ls_logdir",
        "pg_ls_waldir",
        "pg_ls_tmpdir",
    }
)


class WriteRefused(KbError):
    """The statement could change something; `reasonflux sql` only reads."""

    exit_code = 2


class QueryFailed(KbError):
    pass


@dataclass
class QueryResult:
    columns: list[str]  # unique: repeated names are suffixed (see unique_columns)
    rows: list[tuple]
    truncated: bool = False  # more rows than max_rows existed

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<string>'(?:[^']|'')*')
    | (?P<uquoted>[uU]&")
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<dollar>\$(?:[A-Za-z_][A-Za-z0-9_]*)?\$)
    | (?P<word>[A-Za-z_][A-Za-z0-9_$]*)
    | (?P<semicolon>;)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def _tokens(sql: str) -> Iterator[tuple[str, str]]:
    """(kind, text) for words, quoted identifiers, semicolons and other symbols; literals and comments skipped."""
    pos, n = 0, len(sql)
    while pos < n:
        m = _TOKEN.match(sql, pos)
        kind = m.lastgroup
        if kind == "block_comment":  # PostgreSQL block comments nest
            depth, pos = 1, m.end()
            while depth and pos < n:
                if sql.startswith("/*", pos):
                    depth, pos = depth + 1, pos + 2
                elif sql.startswith("*/", pos):
                    depth, pos = depth - 1, pos + 2
                else:
                    pos += 1
            if depth:
                raise WriteRefused("unterminated /* comment in the query")
            continue
        if kind == "dollar":  # $tag$ ... $tag$ is a string literal
            end = sql.find(m.group(), m.end())
            if end < 0:
                raise WriteRefused(f"unterminated {m.group()} quoted string in the query")
            pos = end + len(m.group())
            continue
        if kind == "uquoted":  # U&"\0073et_config": a name spelt in escapes would hide it from the list
            raise WriteRefused(
                'refused: Unicode-escaped identifiers (U&"...") are not allowed; write the name'
            )
        pos = m.end()
        if kind in ("ws", "line_comment", "string", "estring"):
            continue
        if kind == "other" and m.group() == "'":
            raise WriteRefused("unterminated string literal in the query")
        if kind == "quoted":  # a quoted identifier is a name, never a keyword
            yield "ident", m.group()[1:-1].replace('""', '"')
        else:
            yield kind, m.group()


def check_read_only(sql: str) -> None:
    """Refuse anything but one read-only query; raises WriteRefused saying why."""
    tokens = list(_tokens(sql))
    while tokens and tokens[-1][0] == "semicolon":
        tokens.pop()
    if not tokens:
        raise WriteRefused("empty query")
    if any(kind == "semicolon" for kind, _ in tokens):
        raise WriteRefused("refused: only one statement is allowed (found ';' between statements)")
    words = [text for kind, text in tokens if kind == "word"]
    first = next((w.upper() for w in words), "")
    if first not in QUERY_STARTS:
        raise WriteRefused(
            f"refused: {first or 'this statement'} is not a read-only query; "
            f"`reasonflux sql` runs only {', '.join(QUERY_STARTS)}"
        )
    for i, (kind, text) in enumerate(tokens):
        if kind not in ("word", "ident"):
            continue
        calls = i + 1 < len(tokens) and tokens[i + 1] == ("other", "(")
        if calls and text.lower() in SIDE_EFFECT_FUNCTIONS:
            raise WriteRefused(f"refused: {text.lower()}() has side effects; `reasonflux sql` is read-only")
        after_dot = i > 0 and tokens[i - 1] == ("other", ".")  # t.delete is a column, not a statement
        if kind == "word" and not after_dot and text.upper() in WRITE_KEYWORDS and not _is_alias(tokens, i):
            raise WriteRefused(f"refused: the query contains {text.upper()}; `reasonflux sql` is read-only")


def _is_alias(tokens: list[tuple[str, str]], i: int) -> bool:
    """`SELECT 1 AS delete`: a name, not a statement."""
    return i > 0 and tokens[i - 1][0] == "word" and tokens[i - 1][1].upper() == "AS"


def run_readonly(
    engine: Engine, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int | None = None
) -> QueryResult:
    """Run one read-only query; writes, timeouts and errors become KbError with the server's reason."""
    check_read_only(sql)
    return execute_read_only(engine, sql, timeout_s=timeout_s, max_rows=max_rows)


def execute_read_only(
    engine: Engine, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S, max_rows: int | None = None
) -> QueryResult:
    """The server-side layers alone, without the text check: the reader role's own login, a READ ONLY
    transaction with a statement timeout, and a server-side cursor read up to MAX_ROWS.

    The timeout is kept from outside the statement, which may change its own settings (set_config): the
    server-side limit is set again before each FETCH to the time left, and a timer cancels the query at
    the deadline whatever the server's settings say by then."""
    if timeout_s <= 0:
        raise KbError("--timeout must be positive")
    ensure_reader_role(engine)
    url = engine.url.render_as_string(hide_password=False)
    try:
        conn = connect_reader(url)
    except ReaderUnavailable:
        if not reassert_password(engine):  # the role may have changed its own password
            raise
        conn = connect_reader(url)
    deadline = time.monotonic() + timeout_s
    with conn, _cancel_at(conn, deadline) as fired:
        conn.read_only = True  # BEGIN READ ONLY
        try:
            _limit(conn, deadline)
            conn.execute("SET LOCAL lock_timeout = 5000")
            if conn.execute("SHOW transaction_read_only").fetchone() != ("on",):
                raise ReaderUnavailable("the query transaction is not read-only; nothing was run")
            return _fetch(conn, sql, max_rows, deadline=deadline)
        except psycopg.Error as e:
            raise _explain(e, timeout_s, cancelled=fired.is_set()) from None
        finally:
            with contextlib.suppress(psycopg.Error):
                conn.rollback()  # read-only: there is never anything to commit


@contextlib.contextmanager
def _cancel_at(conn: psycopg.Connection, deadline: float) -> Iterator[threading.Event]:
    """Cancel whatever CONN runs at DEADLINE (from a timer thread: the statement cannot switch it off)."""
    fired = threading.Event()

    def cancel() -> None:
        fired.set()
        with contextlib.suppress(psycopg.Error):
            conn.cancel_safe(timeout=5)

    # A little after the server's own limit, so that the usual timeout is the server's, with its message.
    timer = threading.Timer(max(0.0, deadline - time.monotonic()) + CANCEL_GRACE_S, cancel)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


CANCEL_GRACE_S = 0.5


def _limit(conn: psycopg.Connection, deadline: float) -> None:
    """statement_timeout = the time left (at least 1 ms), for the next statement of this transaction."""
    left_ms = int((deadline - time.monotonic()) * 1000)
    if left_ms <= 0:
        raise TimedOut("query cancelled at its --timeout (statement timeout); raise --timeout")
    conn.execute(f"SET LOCAL statement_timeout = {left_ms}")


FETCH_BATCH = 1000


def _fetch(conn: psycopg.Connection, sql: str, max_rows: int | None, *, deadline: float) -> QueryResult:
    """Rows through a server-side cursor, so a huge result costs at most MAX_ROWS rows of memory.

    The timeout bounds the whole read, not only each FETCH: without max_rows, a result that never
    ends is cut at the deadline instead of filling memory.

    Both ways use the extended protocol (prepare=True), which runs one statement and never a batch.
    What cannot be declared as a cursor (SHOW, EXPLAIN; and, when the text check is bypassed, any
    other statement) runs as it is, so the server gives its own verdict on it; such output is small.
    """
    cursor = conn.cursor()
    limit = None if max_rows is None else max_rows + 1  # one more tells whether rows were left out
    if _declare(cursor, sql):
        rows: list = []
        while limit is None or len(rows) < limit:
            n = FETCH_BATCH if limit is None else min(FETCH_BATCH, limit - len(rows))
            try:
                _limit(conn, deadline)  # the query may have changed statement_timeout while it ran
                cursor.execute(f"FETCH FORWARD {n} FROM rf_sql")
            except (TimedOut, psycopg.errors.QueryCanceled):
                if not rows:
                    raise
                raise TimedOut(
                    f"query cancelled after reading {len(rows):,} rows for the whole --timeout; "
                    "raise --timeout or set --max-rows"
                ) from None
            batch = cursor.fetchall()
            rows += batch
            if len(batch) < n:
                break
    else:
        cursor.execute(sql, prepare=True)
        if cursor.description is None:
            return QueryResult([], [])
        rows = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
    columns = unique_columns([d.name for d in cursor.description or []])
    truncated = max_rows is not None and len(rows) > max_rows
    return QueryResult(columns, [tuple(r) for r in rows[:max_rows]], truncated)


def _declare(cursor: psycopg.Cursor, sql: str) -> bool:
    if _first_word(sql) in ("SHOW", "EXPLAIN"):
        return False
    try:
        with cursor.connection.transaction():  # a savepoint: a statement DECLARE refuses runs plainly
            cursor.execute(f"DECLARE rf_sql NO SCROLL CURSOR FOR {sql}\n", prepare=True)
        return True
    except (psycopg.errors.SyntaxError, psycopg.errors.FeatureNotSupported):
        return False


def unique_columns(names: list[str]) -> list[str]:
    """`SELECT 1 AS a, 2 AS a` keeps both: a repeated name gets a suffix (a, a_2), never a lost column."""
    out: list[str] = []
    for name in names:
        candidate, n = name, 1
        while candidate in out:
            n += 1
            candidate = f"{name}_{n}"
        out.append(candidate)
    return out


def _first_word(sql: str) -> str:
    return next((text.upper() for kind, text in _tokens(sql) if kind == "word"), "")


def _explain(e: BaseException, timeout_s: float, *, cancelled: bool = False) -> KbError:
    sqlstate = getattr(e, "sqlstate", None)
    message = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if sqlstate == "57014" or cancelled:  # query_canceled (ours: the server's limit or the timer)
        return TimedOut(f"query cancelled after {timeout_s:g} s (statement timeout); raise --timeout")
    if sqlstate == "25006":  # read_only_sql_transaction
        return WriteRefused(f"refused by the server: {message}; `reasonflux sql` is read-only")
    if sqlstate == "42501":  # insufficient_privilege (the read-only role)
        return WriteRefused(f"refused by the server: {message}; `reasonflux sql` only reads")
    if "multiple commands" in message:
        return WriteRefused("refused: only one statement is allowed")
    return QueryFailed(f"query failed: {message}")
