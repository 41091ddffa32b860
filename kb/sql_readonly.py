"""Read-only SQL for people and scripts: one statement, a read-only transaction, a time limit.

Three layers, each enough on its own for plain writes:
1. Up front, the text is tokenised (comments, quoted strings and dollar quotes
   skipped) and refused unless it is ONE statement that starts like a query
   (SELECT, WITH, VALUES, TABLE, SHOW, EXPLAIN) and names no data-modifying
   keyword or side-effecting function (pg_terminate_backend, set_config, ...).
2. It runs in `BEGIN TRANSACTION READ ONLY` with `statement_timeout`, so any
   write that slips past the check fails in the server, and the transaction is
   always rolled back.
3. Where the connecting user may, the transaction also drops to the built-in
   `pg_read_all_data` role, which can read everything and change nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from kb.errors import KbError

DEFAULT_TIMEOUT_S = 30.0

QUERY_STARTS = ("SELECT", "WITH", "VALUES", "TABLE", "SHOW", "EXPLAIN")
# Keywords that only ever write (as a clause of a writable CTE, SELECT ... INTO, FOR UPDATE, ...).
# Transaction control and SET need no entry: they can only start a statement, and only one is allowed.
WRITE_KEYWORDS = frozenset({
    "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "CREATE", "DROP", "ALTER", "GRANT", "REVOKE",
    "COPY", "INTO", "CALL", "VACUUM", "CLUSTER", "REINDEX", "REFRESH", "LOCK", "NOTIFY", "LISTEN",
    "PREPARE", "EXECUTE", "DEALLOCATE", "DISCARD", "CHECKPOINT", "COMMIT", "ROLLBACK", "SAVEPOINT",
})
# Functions that act outside the transaction or change session state: refused by name.
SIDE_EFFECT_FUNCTIONS = frozenset({
    "set_config", "pg_terminate_backend", "pg_cancel_backend", "pg_signal_backend", "pg_reload_conf",
    "pg_rotate_logfile", "pg_promote", "pg_switch_wal", "pg_create_restore_point", "pg_backup_start",
    "pg_backup_stop", "pg_log_backend_memory_contexts", "pg_advisory_lock", "pg_advisory_lock_shared",
    "pg_advisory_xact_lock", "pg_advisory_xact_lock_shared", "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared", "pg_try_advisory_xact_lock", "pg_try_advisory_xact_lock_shared",
    "pg_advisory_unlock", "pg_advisory_unlock_all", "pg_advisory_unlock_shared", "pg_read_file",
    "pg_read_binary_file", "pg_ls_dir", "pg_stat_file", "pg_file_write", "lo_import", "lo_export",
    "lo_create", "lo_unlink", "lo_put", "lo_from_bytea", "nextval", "setval", "dblink", "dblink_exec",
    "pg_notify", "txid_current", "pg_current_xact_id", "pg_drop_replication_slot",
    "pg_create_logical_replication_slot", "pg_create_physical_replication_slot", "pg_replication_origin_create",
    "pg_stat_reset", "pg_stat_reset_shared", "pg_stat_reset_single_table_counters",
})
READ_ROLE = "pg_read_all_data"


class WriteRefused(KbError):
    """The statement could change something; `reasonflux sql` only reads."""

    exit_code = 2


class QueryFailed(KbError):
    pass


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[tuple]

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row)) for row in self.rows]


_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<line_comment>--[^\n]*)
    | (?P<block_comment>/\*)
    | (?P<estring>[eE]'(?:[^'\\]|\\.|'')*')
    | (?P<string>'(?:[^']|'')*')
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


def run_readonly(engine: Engine, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_rows: int | None = None) -> QueryResult:
    """Run one read-only query; writes, timeouts and errors become KbError with the server's reason."""
    check_read_only(sql)
    return execute_read_only(engine, sql, timeout_s=timeout_s, max_rows=max_rows)


def execute_read_only(engine: Engine, sql: str, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                      max_rows: int | None = None) -> QueryResult:
    """The server-side layers alone (read-only transaction, timeout, read role), without the text check."""
    if timeout_s <= 0:
        raise KbError("--timeout must be positive")
    with engine.connect() as conn:
        try:
            # The driver has already opened the transaction; this must be its first statement.
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
            if conn.exec_driver_sql("SHOW transaction_read_only").scalar() != "on":
                raise KbError("could not make the transaction read-only; nothing was run")
            conn.exec_driver_sql(f"SET LOCAL statement_timeout = {int(timeout_s * 1000)}")
            conn.exec_driver_sql("SET LOCAL lock_timeout = 5000")
            _drop_to_read_role(conn)
            # The DB-API cursor, without parameters, so '%' in the query is just a character.
            cursor = conn.connection.driver_connection.cursor()
            cursor.execute(sql, prepare=True)  # extended protocol: one statement, never a batch
            if cursor.description is None:
                return QueryResult([], [])
            columns = [d.name for d in cursor.description]
            rows = cursor.fetchmany(max_rows) if max_rows else cursor.fetchall()
            return QueryResult(columns, [tuple(r) for r in rows])
        except sa.exc.DBAPIError as e:
            raise _explain(e.orig, timeout_s) from None
        except psycopg.Error as e:
            raise _explain(e, timeout_s) from None
        finally:
            conn.rollback()  # read-only: there is never anything to commit


def _drop_to_read_role(conn: sa.Connection) -> None:
    may = conn.exec_driver_sql(
        "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %(r)s) "
        "AND pg_has_role(current_user, (SELECT oid FROM pg_roles WHERE rolname = %(r)s), 'MEMBER')",
        {"r": READ_ROLE},
    ).scalar()
    if may:
        conn.exec_driver_sql(f"SET LOCAL ROLE {READ_ROLE}")


def _explain(e: BaseException, timeout_s: float) -> KbError:
    sqlstate = getattr(e, "sqlstate", None)
    message = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if sqlstate == "25006":  # read_only_sql_transaction
        return WriteRefused(f"refused by the server: {message}; `reasonflux sql` is read-only")
    if sqlstate == "42501":  # insufficient_privilege (the read-only role)
        return WriteRefused(f"refused by the server: {message}; `reasonflux sql` only reads")
    if "multiple commands" in message:
        return WriteRefused("refused: only one statement is allowed")
    if sqlstate == "57014":  # query_canceled
        return QueryFailed(f"query cancelled after {timeout_s:g} s (statement timeout); raise --timeout")
    return QueryFailed(f"query failed: {message}")
