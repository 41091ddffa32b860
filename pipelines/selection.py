"""The selection language shared by every stage: which problems (or trajectories) to work on.

A selection is `all`, or `;`-separated `key=value` clauses that must all hold:

    source=math500;split=test;limit=20
    ids=1-20,31
    subject=Algebra;level=1-3;has=solution

Problem keys: ids, source, split, subject, level (a range like the ids), has (solution | answer), limit.
Trajectory keys: ids, problem (anchor problem ids), navigator, run (the run that sampled them), source,
split, subject (of the anchor problem), limit. Rows come back in id order; `limit` keeps the first N.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from kb.errors import InputError

PROBLEM_KEYS = ("ids", "source", "split", "subject", "level", "has", "limit")
TRAJECTORY_KEYS = ("ids", "problem", "navigator", "run", "source", "split", "subject", "limit")
_RANGE_KEYS = ("ids", "level", "problem", "run")


@dataclass
class Selection:
    text: str
    clauses: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.clauses)


def parse_ranges(value: str, *, option: str) -> list[int]:
    """'1-20,31' -> [1, ..., 20, 31]."""
    out: set[int] = set()
    for chunk in value.split(","):
        lo, _, hi = chunk.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise InputError(f"{value!r}: expected numbers and ranges like 1-20,31", field=option)
        out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def parse_selection(text: str | None, keys: tuple[str, ...], *, option: str = "--problems") -> Selection:
    clauses: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in (text or "all").split(";"))):
        if part == "all":
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if not sep or key not in keys or not value:
            raise InputError(
                f"{part!r}: expected `all` or key=value with key one of {', '.join(keys)}", field=option
            )
        if key in _RANGE_KEYS:
            clauses[key] = parse_ranges(value, option=option)
        elif key == "limit":
            if not value.isdigit() or int(value) < 1:
                raise InputError(f"limit={value!r}: expected a positive integer", field=option)
            clauses[key] = int(value)
        elif key == "has":
            if value not in ("solution", "answer"):
                raise InputError(f"has={value!r}: expected solution or answer", field=option)
            clauses[key] = value
        else:
            clauses[key] = value
    return Selection(text=text or "all", clauses=clauses)


def _where(clauses: dict[str, Any], alias: str) -> tuple[list[str], dict[str, Any]]:
    where, binds = [], {}
    for key in ("source", "split", "subject"):
        if key in clauses:
            where.append(f"{alias}.{key} = :{key}")
            binds[key] = clauses[key]
    if "level" in clauses:
        where.append(f"{alias}.difficulty = ANY(:level)")
        binds["level"] = clauses["level"]
    if "has" in clauses:
        where.append(f"{alias}.{clauses['has']} IS NOT NULL AND {alias}.{clauses['has']} <> ''")
    return where, binds


def select_problem_ids(conn: Any, selection: str | Selection | None) -> list[int]:
    sel = selection if isinstance(selection, Selection) else parse_selection(selection, PROBLEM_KEYS)
    c = sel.clauses
    where, binds = _where(c, "p")
    if "ids" in c:
        where.append("p.id = ANY(:ids)")
        binds["ids"] = c["ids"]
    sql = "SELECT p.id FROM problem p" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY p.id"
    if "limit" in c:
        sql += f" LIMIT {int(c['limit'])}"
    return list(conn.execute(sa.text(sql), binds).scalars())


def select_trajectory_ids(conn: Any, selection: str | Selection | None) -> list[int]:
    sel = (
        selection
        if isinstance(selection, Selection)
        else parse_selection(selection, TRAJECTORY_KEYS, option="--trajectories")
    )
    c = sel.clauses
    where, binds = _where(c, "p")
    for key, column in (("ids", "t.id"), ("problem", "t.problem_id"), ("run", "t.run_id")):
        if key in c:
            where.append(f"{column} = ANY(:{key})")
            binds[key] = c[key]
    if "navigator" in c:
        where.append("t.navigator_model = :navigator")
        binds["navigator"] = c["navigator"]
    sql = (
        "SELECT t.id FROM trajectory t JOIN problem p ON p.id = t.problem_id"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY t.id"
    )
    if "limit" in c:
        sql += f" LIMIT {int(c['limit'])}"
    return list(conn.execute(sa.text(sql), binds).scalars())
