"""`reasonflux db serve`: the embedded server served on 127.0.0.1 to tools, as the read-only role.

The embedded server listens on a Unix socket only (reachable by this OS user alone, with `trust`).
`serve` opens a TCP port on 127.0.0.1 and relays each connection to that socket as the read-only role
`reasonflux_reader` (kb.reader_role: SELECT on the tables and views, nothing else), whatever user the
client names. The relay itself asks the client for the password `serve` printed (SCRAM-SHA-256, so
the password never crosses the wire) and opens a server session only for a client that gave it:
a client that connects and never logs in costs no server connection, is dropped after
--login-timeout, and at most --max-connections clients are served at once, so the owner's own
commands always find a free connection. The password is the relay's, not the role's: the reader may
change its role's password, which checks nothing here.

Each session starts with kb.reader_role.SETTINGS (read-only transactions, time limits) sent in its start-up
message, where they outrank whatever defaults the role has given itself; the relay checks that the
server reports the session read-only before the client gets it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import secrets
import struct
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from kb import defaults
from kb.errors import InputError, KbError
from kb.reader_role import READER_ROLE, SETTINGS  # the role `reasonflux sql` runs as, too

PROTOCOL_3 = 3
SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102
DEFAULT_MAX_CLIENTS = defaults.DB_SERVE_MAX_CLIENTS
DEFAULT_LOGIN_TIMEOUT_S = defaults.DB_SERVE_LOGIN_TIMEOUT_S
OWNER_SPARE_CONNECTIONS = 10  # server connections --max-connections must leave to the owner's commands
# Start-up parameters a client may choose; any other (options, replication, settings) is dropped.
CLIENT_PARAMETERS = frozenset(
    {
        "application_name",
        "client_encoding",
        "datestyle",
        "timezone",
        "intervalstyle",
        "extra_float_digits",
        "search_path",
    }
)
SCRAM_ITERATIONS = 4096


def socket_path(url: str) -> Path:
    """The Unix socket of a server whose URL names a socket directory (the embedded server's)."""
    u = make_url(url)
    host = u.query.get("host") or (u.host if u.host and u.host.startswith("/") else None)
    if not host:
        raise InputError(
            f"{u.render_as_string(hide_password=True)} is a TCP server: tools can reach it as it "
            "is (`reasonflux db url`); serving is for the embedded server",
            field="database",
        )
    return Path(host) / f".s.PGSQL.{u.port or 5432}"


def check_capacity(engine: sa.Engine, max_clients: int) -> None:
    """Refuse a --max-connections that would leave the owner's commands fewer than OWNER_SPARE_CONNECTIONS."""
    with engine.connect() as conn:
        total, reserved = conn.execute(
            sa.text(
                "SELECT current_setting('max_connections')::int, current_setting('superuser_reserved_connections')::int "
                "+ coalesce(current_setting('reserved_connections', true)::int, 0)"
            )
        ).one()
    room = total - reserved - OWNER_SPARE_CONNECTIONS
    if max_clients > room:
        raise InputError(
            f"{max_clients} is more than the server can serve while keeping {OWNER_SPARE_CONNECTIONS} "
            f"connections for the owner's commands (max_connections {total}, {reserved} reserved): "
            f"use at most {max(room, 0)}",
            field="--max-connections",
        )


def new_password() -> str:
    return secrets.token_urlsafe(18)


def _rewrite_startup(body: bytes, user: str, database: str) -> bytes:
    """A StartupMessage (after its length) as USER on DATABASE, with kb.reader_role.SETTINGS and only the
    client's harmless parameters (CLIENT_PARAMETERS)."""
    (protocol,) = struct.unpack("!I", body[:4])
    fields = body[4:].split(b"\x00")
    pairs = {
        k: v
        for k, v in zip(fields[0:-2:2], fields[1:-2:2])
        if k.decode("latin-1").lower() in CLIENT_PARAMETERS
    }
    pairs[b"user"], pairs[b"database"] = user.encode(), database.encode()
    pairs.update({k.encode(): v.encode() for k, v in SETTINGS.items()})
    payload = (
        struct.pack("!I", protocol) + b"".join(k + b"\x00" + v + b"\x00" for k, v in pairs.items()) + b"\x00"
    )
    return struct.pack("!I", len(payload) + 4) + payload


def _message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


def _error(code: str, text: str) -> bytes:
    """A FATAL ErrorResponse, which clients show as the reason the connection failed."""
    fields = b"".join(
        k + v.encode() + b"\x00" for k, v in ((b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", text))
    )
    return _message(b"E", fields + b"\x00")


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    """A start-up packet (no type byte), after its length."""
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    if not 8 <= length <= 10_000:
        raise ValueError("not a PostgreSQL start-up packet")
    return await reader.readexactly(length - 4)


async def _read_typed(reader: asyncio.StreamReader, limit: int = 10_000) -> tuple[bytes, bytes]:
    kind = await reader.readexactly(1)
    (length,) = struct.unpack("!I", await reader.readexactly(4))
    if not 4 <= length <= limit:
        raise ValueError("message too long")
    return kind, await reader.readexactly(length - 4)


class Scram:
    """SCRAM-SHA-256 (RFC 5802/7677) on the server side, for one password: what libpq speaks to
    PostgreSQL, spoken by the relay instead, without channel binding (the relay offers no TLS)."""

    def __init__(self, password: str):
        self.salt = secrets.token_bytes(16)
        salted = hashlib.pbkdf2_hmac("sha256", password.encode(), self.salt, SCRAM_ITERATIONS)
        self.stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
        self.server_key = hmac.digest(salted, b"Server Key", "sha256")

    async def authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """True when the client proved it knows the password; False (nothing sent yet) when it did not."""
        writer.write(_message(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\x00\x00"))
        await writer.drain()
        kind, body = await _read_typed(reader)
        mechanism, _, rest = body.partition(b"\x00")
        if kind != b"p" or mechanism != b"SCRAM-SHA-256":
            return False
        first = rest[4:].decode()
        gs2, _, bare = first.partition(",,")
        client_nonce = dict(a.split("=", 1) for a in bare.split(",") if "=" in a).get("r")
        if gs2 not in ("n", "y") or not client_nonce:
            return False
        nonce = client_nonce + base64.b64encode(secrets.token_bytes(18)).decode()
        server_first = f"r={nonce},s={base64.b64encode(self.salt).decode()},i={SCRAM_ITERATIONS}"
        writer.write(_message(b"R", struct.pack("!I", 11) + server_first.encode()))
        await writer.drain()
        kind, body = await _read_typed(reader)
        final = body.decode()
        without_proof, _, proof = final.rpartition(",p=")
        attrs = dict(a.split("=", 1) for a in without_proof.split(",") if "=" in a)
        if (
            kind != b"p"
            or attrs.get("r") != nonce
            or attrs.get("c") != base64.b64encode(f"{gs2},,".encode()).decode()
        ):
            return False
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(self.stored_key, auth_message, "sha256")
        try:
            client_key = bytes(
                a ^ b for a, b in zip(base64.b64decode(proof, validate=True), signature, strict=True)
            )
        except ValueError:
            return False
        if not hmac.compare_digest(hashlib.sha256(client_key).digest(), self.stored_key):
            return False
        server_signature = base64.b64encode(hmac.digest(self.server_key, auth_message, "sha256")).decode()
        writer.write(_message(b"R", struct.pack("!I", 12) + f"v={server_signature}".encode()))
        await writer.drain()
        return True


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
    """127.0.0.1:PORT -> the server's Unix socket, every session as the read-only role, for clients that
    know PASSWORD; at most MAX_CLIENTS at once, each logged in within LOGIN_TIMEOUT_S or dropped.

    PREPARE runs (in a thread) before each session is opened: `db serve` puts the role back as kb.reader_role
    describes it there, so what one session changed in its role is undone before the next one starts."""

    def __init__(
        self,
        socket: Path,
        database: str,
        password: str,
        *,
        port: int = 0,
        role: str = READER_ROLE,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        login_timeout_s: float = DEFAULT_LOGIN_TIMEOUT_S,
        prepare: Callable[[], None] | None = None,
    ):
        self.socket, self.database, self.port, self.role = socket, database, port, role
        self.scram, self.max_clients, self.login_timeout_s = Scram(password), max_clients, login_timeout_s
        self.prepare = prepare
        self.active = 0
        self.server: asyncio.Server | None = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.active >= self.max_clients:
            await self._refuse(reader, writer)
            return
        self.active += 1
        try:
            try:  # the client's part, bounded: a client that stalls is dropped, having cost no server session
                body = await asyncio.wait_for(self._log_in(reader, writer), self.login_timeout_s)
                upstream = None if body is None else await asyncio.wait_for(self._open(body, writer), 60)
            except (
                ValueError,
                OSError,
                asyncio.IncompleteReadError,
                struct.error,
                UnicodeDecodeError,
                TimeoutError,
            ):
                upstream = None
            if upstream is None:
                writer.close()
                return
            up_reader, up_writer = upstream
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        finally:
            self.active -= 1

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Too many clients: the error, where the client reads it (after its start-up packet, past any TLS
        request, so that it shows the reason), then close; bounded to a second."""
        with contextlib.suppress(
            ValueError, OSError, asyncio.IncompleteReadError, struct.error, TimeoutError
        ):
            async with asyncio.timeout(1):
                body = await _read_message(reader)
                if struct.unpack("!I", body[:4])[0] in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")
                    await _read_message(reader)
                writer.write(
                    _error(
                        "53300",
                        f"`reasonflux db serve` serves at most {self.max_clients} "
                        "connections at once (--max-connections); try again later",
                    )
                )
                await writer.drain()
        writer.close()

    async def _log_in(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """The client's start-up packet once it proved the password (or a cancel request); None when refused."""
        body = await _read_message(reader)
        while struct.unpack("!I", body[:4])[0] in (SSL_REQUEST, GSSENC_REQUEST):
            writer.write(b"N")  # no TLS on loopback; the client goes on in plain text
            await writer.drain()
            body = await _read_message(reader)
        code = struct.unpack("!I", body[:4])[0]
        if code == CANCEL_REQUEST:  # carries the session's secret key: the server checks it
            return body
        if code >> 16 != PROTOCOL_3:
            raise ValueError("unsupported protocol")
        if not await self.scram.authenticate(reader, writer):
            writer.write(_error("28P01", f'password authentication failed for user "{self.role}"'))
            await writer.drain()
            return None
        return body

    async def _open(self, body: bytes, writer: asyncio.StreamWriter):
        """A server session as the reader for a logged-in client (or the cancel request passed on)."""
        if struct.unpack("!I", body[:4])[0] == CANCEL_REQUEST:
            up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket))
            up_writer.write(struct.pack("!I", len(body) + 4) + body)
            await up_writer.drain()
            return up_reader, up_writer
        if self.prepare is not None:
            try:
                await asyncio.to_thread(self.prepare)
            except KbError as e:
                writer.write(_error("42501", str(e)))
                await writer.drain()
                return None
        up_reader, up_writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            up_writer.write(_rewrite_startup(body, self.role, self.database))
            await up_writer.drain()
            greeting = await self._session_greeting(up_reader)
        except BaseException:
            up_writer.close()
            raise
        writer.write(greeting)
        await writer.drain()
        if not greeting.startswith(_message(b"R", struct.pack("!I", 0))):
            up_writer.close()
            return None
        return up_reader, up_writer

    async def _session_greeting(self, up_reader: asyncio.StreamReader) -> bytes:
        """The server's messages up to ReadyForQuery, if the session is what the relay asked for: logged in
        without a password (the socket is trusted) and read-only; otherwise a FATAL error to pass on."""
        out, read_only = [], None
        while True:
            kind, body = await _read_typed(up_reader, limit=1 << 20)
            out.append(_message(kind, body))
            if kind == b"E":
                return b"".join(out)
            if kind == b"R" and body[:4] != struct.pack("!I", 0):
                return _error(
                    "28000",
                    "the server asked the relay for a password; `reasonflux db serve` "
                    "expects the embedded server's socket to trust this OS user",
                )
            if kind == b"S":
                name, value, _ = body.split(b"\x00", 2)
                if name == b"default_transaction_read_only":
                    read_only = value
            if kind == b"Z":
                break
        if read_only != b"on":
            return _error(
                "25006",
                "the server did not start the session read-only; `reasonflux db serve` refuses to serve it",
            )
        return b"".join(out)

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def serve(self, on_ready: Callable[[int], None], stop: asyncio.Event) -> None:
        on_ready(await self.start())
        async with self.server:
            await stop.wait()
