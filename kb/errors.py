"""Errors a user can act on. The CLI prints their message and exits non-zero, no traceback."""

from __future__ import annotations


class KbError(Exception):
    """Base class: the message says what went wrong and what to do."""

    exit_code = 1


class NotFound(KbError):
    pass


class DatabaseUnavailable(KbError):
    """The database cannot be reached (or the connection was lost); the message names the masked URL."""


class ConflictError(KbError):
    """Someone else changed the row first (optimistic locking)."""

    exit_code = 3


class TimedOut(KbError):
    """A statement ran past its time limit, or a lock another session holds (named) was not freed in time."""

    exit_code = 7


class ConfirmationRequired(KbError):
    """A destructive action was asked for without its confirmation flag (e.g. --yes); nothing was done."""

    exit_code = 2


class SchemaMismatch(KbError):
    """The database's schema is not one this code can use or upgrade as it stands (a revision this code does
    not know, or objects that match no revision any landed version made); nothing was changed."""

    exit_code = 4


class InputError(KbError):
    """Bad input, located: the file, the record (path or line) and the field."""

    exit_code = 2

    def __init__(
        self, message: str, *, file: str | None = None, record: str | None = None, field: str | None = None
    ):
        self.file, self.record, self.field, self.reason = file, record, field, message
        where = ", ".join(
            f"{k} {v}" for k, v in (("file", file), ("record", record), ("field", field)) if v is not None
        )
        super().__init__(f"{where}: {message}" if where else message)
