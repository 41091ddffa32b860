"""Problem import: JSONL/JSON files with a field mapping or a preset, one transaction, stored once.

A problem's identity is the hash of its normalised text, so re-importing a file
(or the same problem from another dataset) creates nothing new. Every line is
validated before anything is written; a bad line names the file, line and field.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from kb import storable
from kb.datasets import check_license
from kb.db import Database, session_scope
from kb.embeddings import get_embedder
from kb.errors import InputError, NotFound
from kb.models import Problem
from kb.models._common import vector_param
from kb.runs import pipeline_run
from kb.storable import too_deep
from pipelines.embed import embed_problems as stage

FIELDS = ("problem", "solution", "answer", "subject", "difficulty", "source_id", "split", "tags")
FORMATS = ("jsonl", "json")


@dataclass(frozen=True)
class Preset:
    mapping: dict[str, str]
    source: str
    split: str


# target field -> key in the file
PRESETS: dict[str, Preset] = {
    "math500": Preset(
        {
            "problem": "problem",
            "solution": "solution",
            "answer": "answer",
            "subject": "subject",
            "difficulty": "level",
            "source_id": "unique_id",
        },
        source="math500",
        split="test",
    ),
    "aime": Preset(
        {"problem": "problem", "answer": "answer", "solution": "solution", "source_id": "id"},
        source="aime",
        split="test",
    ),
}


def normalize_text(text: str) -> str:
    """What makes two problem texts the same problem: Unicode NFKC, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def content_hash(text: str) -> str:
    return hashlib.sha256(normalize_text(text).encode()).hexdigest()


def parse_mapping(items: list[str] | tuple[str, ...] | None) -> dict[str, str]:
    """`problem=question,answer=final` (repeatable) -> {"problem": "question", "answer": "final"}."""
    mapping: dict[str, str] = {}
    for item in items or ():
        for pair in filter(None, (p.strip() for p in item.split(","))):
            target, sep, key = pair.partition("=")
            if not sep or not key.strip():
                raise InputError(f"mapping {pair!r} must look like field=key", field="--map")
            if target.strip() not in FIELDS:
                raise InputError(
                    f"unknown target field {target.strip()!r}; known: {', '.join(FIELDS)}", field="--map"
                )
            mapping[target.strip()] = key.strip()
    return mapping


def _difficulty(value: Any, where: dict) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise InputError("must be an integer or 'Level N'", **where)
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(?:level\s*)?(\d+)\s*", str(value), flags=re.IGNORECASE)
    if not m:
        raise InputError(f"{value!r} is not an integer or 'Level N'", **where)
    return int(m.group(1))


def _text(value: Any, where: dict, *, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise InputError("is required and must be a non-empty string", **where)
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise InputError(f"must be a string, not {type(value).__name__}", **where)
    return str(value)


def to_row(
    record: Any, mapping: dict[str, str], *, file: str, line: int, source: str | None, split: str
) -> dict[str, Any]:
    """One file record -> problem column values; unmapped keys are kept in `extra`."""
    rec = f"line {line}"
    if not isinstance(record, dict):
        raise InputError("must be a JSON object", file=file, record=rec)

    def where(target: str) -> dict:
        return {"file": file, "record": rec, "field": mapping.get(target, target)}

    def get(target: str) -> Any:
        return record.get(mapping.get(target, target))

    text = _text(get("problem"), where("problem"), required=True)
    tags = get("tags")
    if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise InputError("must be a list of strings", **where("tags"))
    used = {mapping.get(f, f) for f in FIELDS}
    extra = {k: v for k, v in record.items() if k not in used}
    if tags:
        extra["tags"] = tags
    row = {
        "text": text,
        "solution": _text(get("solution"), where("solution")),
        "answer": _text(get("answer"), where("answer")),
        "subject": _text(get("subject"), where("subject")),
        "difficulty": _difficulty(get("difficulty"), where("difficulty")),
        "source_id": _text(get("source_id"), where("source_id")),
        "split": _text(get("split"), where("split")) or split,
    }
    for column, value in row.items():
        storable.check_value(value, **where("problem" if column == "text" else column))
    storable.check_int32(row["difficulty"], **where("difficulty"))
    storable.check_indexed_length({where("problem")["field"]: text}, file=file, record=rec)  # text search
    for key, value in extra.items():
        storable.check_value(value, file=file, record=rec, field=key)
        if "\x00" in key:
            raise InputError(
                "has a NUL character (\\u0000) in its name, which PostgreSQL cannot store",
                file=file,
                record=rec,
                field=repr(key),
            )
    return {**row, "source": source, "content_hash": content_hash(text), "extra": extra}


def read_records(path: Path, fmt: str) -> list[tuple[int, Any]]:
    """(line or index, parsed record) for every record; a syntax error names the line."""
    if fmt not in FORMATS:
        raise InputError(f"format must be one of {', '.join(FORMATS)}", field="--format")
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"no such file: {path}") from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason})", file=str(path)) from None
    if not raw.strip():
        raise InputError("the file is empty", file=str(path))
    if fmt == "json":
        try:
            data = storable.parse_json(raw)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", file=str(path), record=f"line {e.lineno}") from None
        except RecursionError:
            raise too_deep(file=str(path)) from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise InputError(f"invalid JSON: {e}", file=str(path)) from None
        if not isinstance(data, list):
            raise InputError("a .json file must hold a list of objects", file=str(path))
        return list(enumerate(data, start=1))
    records = []
    # Lines end at "\n" only: str.splitlines() would also split at U+2028/U+2029 and other separators,
    # which JSON allows unescaped inside strings.
    for no, line in enumerate(raw.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            records.append((no, storable.parse_json(line)))
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", file=str(path), record=f"line {no}") from None
        except RecursionError:
            raise too_deep(file=str(path), record=f"line {no}") from None
        except ValueError as e:
            raise InputError(f"invalid JSON: {e}", file=str(path), record=f"line {no}") from None
    return records


def load_rows(
    path: Path,
    *,
    fmt: str = "jsonl",
    mapping: dict[str, str] | None = None,
    preset: str | None = None,
    source: str | None = None,
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Validate the whole file into rows (nothing is written here)."""
    base = PRESETS[preset] if preset else None
    if preset and base is None:
        raise InputError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}", field="--preset")
    full = {**(base.mapping if base else {}), **(mapping or {})}
    src = source or (base.source if base else path.stem)
    default_split = split or (base.split if base else "train")
    rows = [
        to_row(rec, full, file=str(path), line=no, source=src, split=default_split)
        for no, rec in read_records(path, fmt)
    ]
    if not rows:
        raise InputError("no records", file=str(path))
    return rows


_INSERT = sa.text("""
    INSERT INTO problem (text, solution, answer, subject, difficulty, source_id, split, source, content_hash,
                         extra, run_id)
    SELECT r.text, r.solution, r.answer, r.subject, r.difficulty, r.source_id, r.split, r.source, r.content_hash,
           r.extra, CAST(:run_id AS integer)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(
        text text, solution text, answer text, subject text, difficulty integer, source_id text, split text,
        source text, content_hash text, extra jsonb)
    ON CONFLICT (content_hash) DO NOTHING
    RETURNING id
""")
CHUNK = 5000  # rows per statement: one jsonb parameter each, so no parameter limit and no per-row SQL


def insert_problems(session, rows: list[dict[str, Any]], run_id: int | None) -> dict[str, list[int]]:
    """Insert what is new; ids by outcome: created, existing (stored before), duplicates (repeats in ROWS)."""
    created: list[int] = []
    for start in range(0, len(rows), CHUNK):
        payload = json.dumps(rows[start : start + CHUNK], ensure_ascii=False)
        created += session.execute(_INSERT, {"rows": payload, "run_id": run_id}).scalars().all()
    hashes = [r["content_hash"] for r in rows]
    # One array parameter: an IN list of 65,536 or more hashes would exceed the protocol's parameter limit.
    ids = dict(
        session.execute(
            sa.text("SELECT content_hash, id FROM problem WHERE content_hash = ANY(:h)"),
            {"h": sorted(set(hashes))},
        ).all()
    )
    created_set, seen = set(created), set()
    existing, duplicates = [], []
    for h in hashes:
        (duplicates if h in seen else existing if ids[h] not in created_set else []).append(ids[h])
        seen.add(h)
    return {"created": created, "existing": existing, "duplicates": duplicates}


def import_problems(
    db: Database,
    path: str | Path,
    *,
    fmt: str = "jsonl",
    mapping: dict[str, str] | None = None,
    preset: str | None = None,
    source: str | None = None,
    split: str | None = None,
    embed: bool = True,
    embed_model: str | None = None,
    license: str | None = None,
) -> dict[str, Any]:
    """Import a file; returns counts and the run id. Re-importing creates nothing.

    LICENSE: the licence of the file's data, recorded with the run (`pipelines.licences`: the default
    licence of exports of these problems); None: not known."""

    path = Path(path)
    check_license(license)
    rows = load_rows(path, fmt=fmt, mapping=mapping, preset=preset, source=source, split=split)
    params = {
        "file": str(path),
        "format": fmt,
        "mapping": mapping or {},
        "preset": preset,
        "source": source,
        "split": split,
        "license": license,
    }
    with pipeline_run(db, "import-problems", params) as (run_id, counts):
        with session_scope(db) as s:
            outcome = insert_problems(s, rows, run_id)
        counts.update(records=len(rows), **{k: len(v) for k, v in outcome.items()})
        if embed:
            # Every problem of the file, not only the new ones: a killed earlier import left some without a
            # vector, and the embed stage skips those that already have one for the model.
            counts["embedded"] = embed_problems(
                db, model=embed_model, problem_ids=outcome["created"] + outcome["existing"], run_id=run_id
            )
    return {"run_id": run_id, "file": str(path), **counts}


def embed_problems(
    db: Database, model: str | None = None, problem_ids: list[int] | None = None, run_id: int | None = None
) -> int:
    """The embed stage (imported late: loading the embedding model is only paid when there is work)."""

    return stage(db, model=model, problem_ids=problem_ids, run_id=run_id)


# ---- reading -----------------------------------------------------------------------------------------

LIST_COLUMNS = ("id", "source", "source_id", "split", "subject", "difficulty", "answer", "text")


def list_problems(
    session,
    *,
    source: str | None = None,
    split: str | None = None,
    subject: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[dict[str, Any]]:
    q = sa.select(Problem).order_by(Problem.id).limit(limit).offset(offset)
    for col, value in ((Problem.source, source), (Problem.split, split), (Problem.subject, subject)):
        if value is not None:
            q = q.where(col == value)
    return [{c: getattr(p, c) for c in LIST_COLUMNS} for p in session.execute(q).scalars()]


def get_problem(session, problem_id: int) -> dict[str, Any]:
    p = session.get(Problem, problem_id) if storable.INT32_MIN <= problem_id <= storable.INT32_MAX else None
    if p is None:
        raise NotFound(f"no problem {problem_id}")
    models = (
        session.execute(
            sa.text("SELECT model FROM problem_embedding WHERE problem_id = :p ORDER BY model"),
            {"p": problem_id},
        )
        .scalars()
        .all()
    )
    sets = (
        session.execute(
            sa.text(
                "SELECT s.id AS set_id, s.build_id, s.size FROM similar_set s WHERE s.anchor_problem_id = :p ORDER BY s.id"
            ),
            {"p": problem_id},
        )
        .mappings()
        .all()
    )
    record = p.model_dump()
    record.update(embedding_models=list(models), similar_sets=[dict(r) for r in sets])
    return record


def search_problems(
    db: Database,
    query: str,
    *,
    mode: str = "embedding",
    limit: int = 10,
    model: str | None = None,
    split: str | None = None,
) -> list[dict[str, Any]]:
    """Nearest problems by embedding (cosine) or by full-text match (`mode='text'`)."""
    filters = " AND p.split = :split" if split else ""
    if mode == "text":
        sql = (
            "SELECT p.id, p.source, p.split, p.subject, "
            "ts_rank(to_tsvector('english', p.text), q) AS score, p.text FROM problem p, "
            "websearch_to_tsquery('english', :q) q WHERE to_tsvector('english', p.text) @@ q"
            + filters
            + " ORDER BY score DESC, p.id LIMIT :limit"
        )
        params = {"q": query}
    elif mode == "embedding":
        embedder = get_embedder(model)
        m = embedder.name.replace("'", "''")
        dist = f"e.embedding::vector({embedder.dim}) <=> CAST(:v AS vector({embedder.dim}))"
        sql = (
            f"SELECT p.id, p.source, p.split, p.subject, 1 - ({dist}) AS score, p.text "
            f"FROM problem_embedding e JOIN problem p ON p.id = e.problem_id WHERE e.model = '{m}'"
            + filters
            + f" ORDER BY {dist}, p.id LIMIT :limit"
        )
        params = {"v": embedder.encode([query])[0]}
    else:
        raise InputError("mode must be 'embedding' or 'text'", field="--mode")
    stmt = sa.text(sql).bindparams(vector_param("v")) if "v" in params else sa.text(sql)
    with db.engine.connect() as conn:
        return [dict(r) for r in conn.execute(stmt, {**params, "limit": limit, "split": split}).mappings()]
