"""The router's own connections to workers: the wire protocol as an asyncio protocol, authenticated with
SCRAM-SHA-256 as the cluster superuser (its password comes from the cluster's files, in memory only).

A routed statement's reply is collected as the bytes that came (scanned only to find ReadyForQuery) and
written to the client in one piece. For a client that is the login role itself, the statement is sent
as it is, in one round trip. Otherwise it runs as ``SET ROLE <client user>; <statement>; RESET ROLE`` in
one simple Query, so it has the client's privileges and runs in one implicit transaction: if the statement fails, the
transaction aborts and the role change is undone with it."""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import hmac
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from . import protocol as p
from . import wire
from .rewrite import qualified

CONNECT_TIMEOUT = 10.0
Sink = Callable[[bytes | None, list[tuple[bytes, int, int]], bool], None]


class BackendError(Exception):
    """The worker connection could not be opened or broke."""


@dataclass(frozen=True)
class WorkerLogin:
    host: str
    port: int
    user: str
    password: str
    database: str


CANNOT_CONNECT = "08006"  # connection_failure


def lost_in_flight(node: str) -> bytes:
    """What the client gets when the worker connection broke while its routed statement ran: an error
    and an idle session (the statement may or may not have run there, so it is not run again)."""
    error = p.error_response(CANNOT_CONNECT, f"pgfleet router: the connection to worker {node} was lost while "
                             "it ran this statement; it may or may not have taken effect", severity="ERROR",
                             hint="check the row, then retry")
    return error.encode() + p.ReadyForQuery("I").encode()


INSUFFICIENT_PRIVILEGE = "42501"
UNDEFINED_TABLE = "42P01"


def denied(messages: list[tuple[bytes, bytes]]) -> bool:
    """The worker refused the statement for lack of a privilege (42501). It ran in one implicit transaction
    that the error aborted, so the coordinator runs it again and answers with its own message."""
    return _refused(messages, INSUFFICIENT_PRIVILEGE)


def vanished(messages: list[tuple[bytes, bytes]]) -> bool:
    """The worker no longer has a table the routed statement names (42P01): a reshard or undistribute dropped
    the shard after the router's topology snapshot was read (a write that waited for the shard's lock during
    a reshard meets this). The statement ran in one implicit transaction that the error aborted, so the
    coordinator, whose catalog has the table's current shards, runs it again."""
    return _refused(messages, UNDEFINED_TABLE)


def _refused(messages: list[tuple[bytes, bytes]], sqlstate: str) -> bool:
    for type_byte, body in messages:
        if type_byte == b"E":
            error = p.decode_backend(type_byte, body)
            if isinstance(error, p.ErrorResponse) and error.sqlstate == sqlstate:
                return True
    return False


class _Scram:
    """Client side of SCRAM-SHA-256 without channel binding (RFC 5802/7677), from the password or from the
    ClientKey and ServerKey it derives (:mod:`.reauth`)."""

    def __init__(self, password: str, keys: tuple[bytes, bytes] | None = None) -> None:
        self.password = password
        self.keys = keys
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise BackendError("SCRAM: the server's nonce does not extend ours")
        if self.keys is not None:
            client_key, server_key = self.keys
        else:
            salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
            client_key = hmac.digest(salted, b"Client Key", "sha256")
            server_key = hmac.digest(salted, b"Server Key", "sha256")
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = dict(part.split("=", 1) for part in server_final.decode().split(","))
        if not hmac.compare_digest(base64.b64decode(attrs.get("v", "")), self.server_signature):
            raise BackendError("SCRAM: the server's signature does not match")


class WorkerConnection(asyncio.Protocol):
    """One connection to a worker, as an asyncio protocol: messages are read during the handshake, and a
    routed statement's reply is collected as the bytes that came (scanned for ReadyForQuery, not decoded)
    and handed on in one piece."""

    def __init__(self, user: str) -> None:
        self.user = user  # the login role
        self.address: tuple[str, int] = ("", 0)
        self.cancel_key: tuple[int, bytes] | None = None  # the worker backend's, to cancel a routed statement
        self.transport: asyncio.Transport | None = None
        self.broken = False
        self._framer = wire.Framer()
        self._handshake = True  # messages are decoded until the first ReadyForQuery
        self._messages: collections.deque[tuple[bytes, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._reply: list[bytes] = []
        self._ready_seen = False
        self._done: Callable[[bytes | None], None] | None = None
        self._sink: Sink | None = None  # a reply handed on in pieces (:meth:`stream`)
        self._cutter = wire.MessageCutter()
        self.flagged = False  # the last reply had an ErrorResponse or a NoticeResponse (see :mod:`.logical`)
        self.statements: dict[tuple[str, tuple[int, ...]], str] = {}  # (text, parameter types) -> name parsed here
        self.status = b"I"  # the transaction status of the last ReadyForQuery (b"?": not known)
        self.generation = 0  # the pool's generation it was opened in (a failover starts a new one)
        self.cancelled = False  # a cancel request was sent for it: it may still arrive, so it is not reused
        self.superuser = False  # the login is a superuser (is_superuser reported at startup)

    @classmethod
    async def open(cls, login: WorkerLogin, settings: tuple[tuple[str, str], ...] = (), *,
                   startup: tuple[tuple[str, str], ...] | None = None,
                   keys: tuple[bytes, bytes] | None = None) -> WorkerConnection:
        """A logged-in connection. ``startup``: these startup parameters instead of the login's user and
        database with ``settings``; ``keys``: SCRAM ClientKey and ServerKey instead of the password."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: cls(login.user), login.host, login.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise BackendError(f"cannot connect to {login.host}:{login.port}: {exc}") from None
        try:
            await asyncio.wait_for(conn._authenticate(login, settings, startup, keys), CONNECT_TIMEOUT)
        except BaseException:
            conn.close()
            raise
        return conn

    async def _authenticate(self, login: WorkerLogin, settings: tuple[tuple[str, str], ...],
                            startup: tuple[tuple[str, str], ...] | None, keys: tuple[bytes, bytes] | None) -> None:
        params = startup if startup is not None else (
            ("user", login.user), ("database", login.database), ("application_name", "pgfleet router"), *settings)
        self._send(wire.StartupMessage(wire.PROTOCOL_3_0, params).encode())
        scram: _Scram | None = None
        while True:
            type_byte, payload = await self.read()
            message = p.decode_backend(type_byte, payload)
            if isinstance(message, p.ErrorResponse):
                raise BackendError(f"{login.host}:{login.port}: {message.message}")
            if isinstance(message, p.Authentication):
                if message.code == 10:
                    scram = _Scram(login.password, keys)
                    self._send(p.sasl_initial_response("SCRAM-SHA-256", scram.first()).encode())
                elif message.code == 11 and scram is not None:
                    self._send(p.AuthResponse(scram.final(message.data)).encode())
                elif message.code == 12 and scram is not None:
                    scram.verify(message.data)
                elif message.code != 0:
                    raise BackendError(f"unsupported authentication request {message.code} from {login.host}:{login.port}")
            elif isinstance(message, p.BackendKeyData):
                self.cancel_key = (message.process_id, message.secret)
            elif isinstance(message, p.ParameterStatus) and message.name == "is_superuser":
                self.superuser = message.value == "on"
            elif isinstance(message, p.ReadyForQuery):
                if self._messages or self._framer.buffered:
                    raise BackendError(f"{login.host}:{login.port} sent messages after ReadyForQuery")
                self._handshake = False
                return

    # --- asyncio.Protocol ---------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.address = (peer[0], peer[1]) if peer else ("", 0)

    def data_received(self, data: bytes) -> None:
        try:
            if self._handshake:
                self._messages.extend(self._framer.feed(data))
                self._wake()
                return
            if self._sink is not None:
                self._stream_data(data)
                return
            if self._done is None:  # nothing asked: the server is ending the session (or misbehaving)
                self._fail()
                return
            types = self._framer.scan(data)
        except wire.ProtocolViolation:
            self._fail()
            return
        self._reply.append(data)
        if b"E" in types or b"N" in types:
            self.flagged = True
        if b"Z" in types:
            self._ready_seen = True
        if self._ready_seen and self._framer.at_boundary:
            reply, done = b"".join(self._reply), self._done
            self._reply, self._done, self._ready_seen = [], None, False
            self.status = reply[-1:] if reply[-6:-5] == b"Z" else b"?"
            done(reply)

    def _stream_data(self, data: bytes) -> None:
        messages, marks = self._cutter.feed(data)
        if not messages:
            return
        last = bool(marks) and marks[-1][0] == b"Z" and marks[-1][2] == len(messages)
        sink = self._sink
        assert sink is not None
        if last:
            self.status = messages[-1:]
            self._sink = None
        sink(messages, marks, last)

    def connection_lost(self, exc: Exception | None) -> None:
        self.broken = True
        self._fail()

    def _fail(self) -> None:
        self.broken = True
        self._wake()
        done, self._done = self._done, None
        sink, self._sink = self._sink, None
        self._reply = []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()
        if done is not None:
            done(None)
        if sink is not None:
            sink(None, [], True)

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _send(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            self.broken = True
            raise BackendError("worker connection lost")
        self.transport.write(data)

    @property
    def reusable(self) -> bool:
        """Idle outside a transaction block, nothing asked and not answered, no cancel on its way: another
        session may use it."""
        return self.status == b"I" and self._done is None and self._sink is None and not self.broken and not self.cancelled \
            and not self._handshake

    # --- use ------------------------------------------------------------------------------------------
    def send(self, request: bytes, done: Callable[[bytes | None], None]) -> None:
        """Send complete messages ending in a Sync or a Query; ``done`` gets every reply byte up to and
        including ReadyForQuery, or None when the connection broke (then nothing of the reply is kept)."""
        if self._done is not None or self._sink is not None or self._handshake:
            raise BackendError("the worker connection is busy")
        self._done = done
        self.flagged = False
        try:
            self._send(request)
        except BackendError:
            self._done = None
            raise

    def stream(self, request: bytes, sink: Sink, bulk: bytes = b"D") -> None:
        """Like :meth:`send`, but the reply goes to ``sink`` in pieces as it comes: ``sink(messages, marks,
        last)`` with complete messages only (see :class:`.wire.MessageCutter` for ``marks`` and ``bulk``),
        ``last`` when they end with ReadyForQuery; ``sink(None, [], True)`` when the connection broke."""
        if self._done is not None or self._sink is not None or self._handshake:
            raise BackendError("the worker connection is busy")
        self._sink = sink
        if self._cutter.bulk != bulk:
            self._cutter = wire.MessageCutter(bulk)
        self.flagged = False
        try:
            self._send(request)
        except BackendError:
            self._sink = None
            raise

    def pause(self, paused: bool) -> None:
        """Stop (or resume) reading the worker's reply while the client cannot take more."""
        if self.transport is not None and not self.transport.is_closing():
            (self.transport.pause_reading if paused else self.transport.resume_reading)()

    async def read(self) -> tuple[bytes, bytes]:
        """The next message of the handshake."""
        while not self._messages:
            if self.broken:
                raise BackendError("worker connection lost")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        return self._messages.popleft()

    async def exchange(self, sql: str) -> bytes:
        """Run one simple Query; every reply byte up to and including ReadyForQuery, as it came."""
        return await self.roundtrip(p.Query(sql).encode())

    async def roundtrip(self, request: bytes) -> bytes:
        """Send messages ending in a Sync or a Query; every reply byte up to and including ReadyForQuery."""
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def done(reply: bytes | None) -> None:
            if not future.done():
                future.set_result(reply)

        self.send(request, done)
        reply = await future
        if reply is None:
            raise BackendError("worker connection lost")
        return reply

    async def request(self, sql: str) -> list[tuple[bytes, bytes]]:
        """Run one simple Query; its messages up to and including ReadyForQuery."""
        return wire.Framer().feed(await self.exchange(sql))

    async def run_as(self, role: str, sql: str) -> tuple[bool, list[tuple[bytes, bytes]]]:
        """Run ``sql`` under ``role``; (whether the role could be set, the statement's messages up to and
        including ReadyForQuery, without those of SET ROLE and RESET ROLE)."""
        if role == self.user:  # already that role: one statement, no role switch
            return True, await self.request(sql)
        text = f"SET ROLE {qualified(role)};\n{sql}\n;\nRESET ROLE"  # the newline ends a trailing -- comment
        messages = await self.request(text)
        first = messages[0]
        if first[0] == b"E":
            return False, messages  # the role does not exist on the worker, or may not be set
        if first != (b"C", b"SET\0"):
            self.broken = True
            raise BackendError(f"unexpected first answer {first[0]!r} to SET ROLE")
        body = messages[1:]
        if len(body) >= 2 and body[-2] == (b"C", b"RESET\0"):
            del body[-2]
        return True, body

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(p.Terminate().encode())
            self.transport.close()
