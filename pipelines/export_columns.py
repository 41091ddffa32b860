"""Columnar reads for the exports: a query's rows as an Arrow table without a Python object per value."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from kb.errors import NotFound


def fetch_columns(conn, query: str, params: dict, schema: pa.Schema, order_by: str) -> pa.Table:
    """QUERY's columns (named as in SCHEMA: int64, float64 or string) as an Arrow table, ordered by ORDER_BY.

    The numbers of a row come back packed into one bytea record (big-endian), all rows' records in one bytea;
    each string column as one bytea of UTF-8 values, each ended by a NUL byte (which PostgreSQL text cannot
    hold), NULL written as 0xFF (which UTF-8 never uses). Arrow wraps them without a Python object per value
    and the server runs one aggregate per string column, not three: what makes 10^6-row exports fast. A bytea
    is limited to 1 GB, which bounds one export's text column at about that size.
    """
    agg = "string_agg({}, ''::bytea ORDER BY " + order_by + ")"
    numbers = [f for f in schema if not pa.types.is_string(f.type)]
    strings = [f for f in schema if pa.types.is_string(f.type)]
    sends = [
        f'{"int8send" if pa.types.is_integer(f.type) else "float8send"}(q."{f.name}"::'
        f"{'int8' if pa.types.is_integer(f.type) else 'float8'})"
        for f in numbers
    ]
    aggs = [agg.format(" || ".join(sends))] if numbers else []
    aggs += [
        agg.format(
            f"""CASE WHEN q."{f.name}" IS NULL THEN '\\xff00'::bytea """
            f"""ELSE convert_to(q."{f.name}", 'UTF8') || '\\x00'::bytea END"""
        )
        for f in strings
    ]
    with conn.connection.driver_connection.cursor(binary=True) as cur:
        cur.execute(f"SELECT count(*), {', '.join(aggs)} FROM ({query}) AS q", params)
        n, *values = cur.fetchone()
    if not n:
        return schema.empty_table()
    arrays = dict(_number_arrays(n, values.pop(0), numbers)) if numbers else {}
    arrays.update({f.name: _string_array(n, raw) for f, raw in zip(strings, values)})
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _number_arrays(n: int, raw, fields: list[pa.Field]):
    record = np.dtype([(f.name, ">i8" if pa.types.is_integer(f.type) else ">f8") for f in fields])
    if len(raw or b"") != n * record.itemsize:
        raise NotFound("a numeric column of the export has NULLs")
    rows = np.frombuffer(raw, dtype=record)
    for f in fields:
        data = rows[f.name].astype("<i8" if pa.types.is_integer(f.type) else "<f8")
        yield f.name, pa.Array.from_buffers(f.type, n, [None, pa.py_buffer(data)])


def _string_array(n: int, raw) -> pa.Array:
    buf = np.frombuffer(raw or b"", dtype=np.uint8)
    ends = np.flatnonzero(buf == 0)
    starts = np.concatenate([[0], ends[:-1] + 1])
    null = (ends - starts == 1) & (buf[np.minimum(starts, len(buf) - 1)] == 0xFF)
    keep = buf != 0
    keep[starts[null]] = False
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.where(null, 0, ends - starts), out=offsets[1:])
    validity = pa.py_buffer(np.packbits(~null, bitorder="little")) if null.any() else None
    return pa.Array.from_buffers(
        pa.string(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(buf[keep])], null_count=int(null.sum())
    )


# ---- trajectories as navigator-contract conversations -----------------------------------------------------

# Trajectories and their steps come back as columns (fetch_columns), not rows: a 10^6-pair export reads half a
# million trajectories, and a Python object per row and per array was most of its time. Hints come as the
# recorded JSON text and are read once per distinct value (_HINTS_SQL); a missing step bound is 0. The
