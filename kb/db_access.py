"""SQL access for tools: a libpq URL, psql, and the embedded server served on 127.0.0.1.

The embedded server listens on a Unix socket only. `serve` opens a TCP port on 127.0.0.1 and relays
each connection to that socket, rewriting the connection's start-up message so that whatever user
a client names, it logs in as the read-only role `reasonflux_reader` (SELECT on the tables and views,
nothing else) with the password `serve` set. PostgreSQL itself checks that password: serving adds a
`local ... reasonflux_reader scram-sha-256` line to the top of the server's pg_hba.conf.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kb.errors import InputError, KbError
from kb.reader import READER_ROLE  # the role `reasonflux sql` runs as, too

HBA_LINE = f"local all {READER_ROLE} scram-sha-256"
PROTOCOL_3 = 3
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


def libpq_url(url: str) -> str:
    """URL as libpq (psql, psycopg, SQLAlchemy's default driver) spells it: no '+driver' suffix."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def psql_path() -> str:
    path = shutil.which("psql")
    if path is None:
        raise KbError("psql is not installed (e.g. `apt-get install postgresql-client`); "
                      "`reasonflux db url` prints the URL for any other client")
    return path


def socket_path(url: str) -> Path:
    """The Unix socket of a server whose URL names a socket directory (the embedded server's)."""
    u = make_url(url)
    host = u.query.get("host") or (u.host if u.host and u.host.startswith("/") else None)
    if not host:
        raise InputError(f"{u.render_as_string(hide_password=True)} is a TCP server: tools can reach it as it "
                         "is (`reasonflux db url`); serving is for the embedded server", field="database")
    return Path(host) / f".s.PGSQL.{u.port or 5432}"


def ensure_reader(engine: sa.Engine, password: str) -> None:
    """The read-only login role (kb.reader: the one definition of what it may do) with PASSWORD set and
    required by pg_hba for socket logins. The password is also left, readable by this user only, in the
    data directory, where `reasonflux sql` (which logs in as the same role) finds it."""
    from kb.reader import PASSWORD_FILE, ensure_reader_role

    ensure_reader_role(engine)
    quoted = password.replace("'", "''")
    with engine.begin() as conn:
        conn.execute(sa.text(f"ALTER ROLE {READER_ROLE} LOGIN PASSWORD '{quoted}'"))
        hba = Path(conn.execute(sa.text("SHOW hba_file")).scalar())
        data_dir = Path(conn.execute(sa.text("SHOW data_directory")).scalar())
    secret = data_dir / PASSWORD_FILE
    secret.touch(mode=0o600, exist_ok=True)
    secret.write_text(password)
    lines = hba.read_text().splitlines()
    if HBA_LINE not in lines:
        hba.write_text("\n".join([HBA_LINE, *lines]) + "\n")  # first match wins: before the trust lines
    with engine.connect() as conn:
        if not conn.execute(sa.text("SELECT pg_reload_conf()")).scalar():
            raise KbError("the server did not reload pg_hba.conf; the reader's password is not enforced")


def new_password() -> str:
    return secrets.token_urlsafe(18)


def _rewrite_startup(body: bytes, user: str, database: str) -> bytes:
    """A StartupMessage (after its length) with `user` and `database` replaced."""
    (protocol,) = struct.unpack("!I", body[:4])
    fields = body[4:].split(b"\x00")
    pairs = dict(zip(fields[0:-2:2], fields[1:-2:2]))
    pairs[b"user"], pairs[b"database"] = user.encode(), database.encode()
    payload = struct.pack("!I", protocol) + b"".join(k + b"\x00" + v + b"\x00" for k, v in pairs.items()) + b"\x00"
    return struct.pack("!I", len(payload) + 4) + payload


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    if not 8 <= length <= 10_000:
        raise ValueError("not a PostgreSQL start-up packet")
    return await reader.readexactly(length - 4)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


class ReaderRelay:
    """127.0.0.1:PORT -> the server's Unix socket, every session as the read-only role."""

    def __init__(self, socket: Path, database: str, *, port: int = 0, role: str = READER_ROLE):
        self.socket, self.database, self.port, self.role = socket, database, port, role
        self.server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            body = await _read_message(reader)
            while struct.unpack("!I", body[:4])[0] in (SSL_REQUEST, GSSENC_REQUEST):
                writer.write(b"N")  # no TLS on loopback; the client goes on in plain text
                await writer.drain()
                body = await _read_message(reader)
            code = struct.unpack("!I", body[:4])[0]
            if code == CANCEL_REQUEST:
                packet = struct.pack("!I", len(body) + 4) + body
            elif code >> 16 == PROTOCOL_3:
                packet = _rewrite_startup(body, self.role, self.database)
            else:
                raise ValueError("unsupported protocol")
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket))
        except (ValueError, OSError, asyncio.IncompleteReadError, struct.error):
            writer.close()
            return
        up_writer.write(packet)
        await up_writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def serve(self, on_ready: Callable[[int], None], stop: asyncio.Event) -> None:
        on_ready(await self.start())
        async with self.server:
            await stop.wait()
