"""The one run record: every stage execution is a PipelineRun row, and every row it writes carries its id."""

from __future__ import annotations

import contextlib
import os
import socket
import traceback
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from kb import config
from kb.db import Database
from kb.models import PipelineRun
from kb.models._common import utcnow


def start_run(db: Database, stage: str, params: dict[str, Any] | None = None) -> int:
    with db.session() as s:
        run = PipelineRun(
            stage=stage, params=params or {}, code_version=config.code_version(),
            host=socket.gethostname(), pid=os.getpid(),
        )
        s.add(run)
        s.commit()
        return run.id


def finish_run(db: Database, run_id: int, status: str, counts: dict[str, Any] | None = None,
               error: str | None = None) -> None:
    with db.engine.begin() as conn:
        conn.execute(
            sa.update(PipelineRun).where(PipelineRun.id == run_id).values(
                status=status, counts=counts or {}, error=error, finished_at=utcnow(),
            )
        )


@contextlib.contextmanager
def pipeline_run(db: Database, stage: str, params: dict[str, Any] | None = None) -> Iterator[tuple[int, dict]]:
    """Yields (run_id, counts); the run ends succeeded, failed (with the traceback) or interrupted."""
    run_id = start_run(db, stage, params)
    counts: dict[str, Any] = {}
    try:
        yield run_id, counts
    except KeyboardInterrupt:
        finish_run(db, run_id, "interrupted", counts, "interrupted by user")
        raise
    except BaseException as e:
        finish_run(db, run_id, "failed", counts, "".join(traceback.format_exception_only(type(e), e)).strip())
        raise
    else:
        finish_run(db, run_id, "succeeded", counts)
