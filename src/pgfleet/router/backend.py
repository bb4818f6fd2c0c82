"""The router's own connections to workers: the wire protocol over asyncio streams, authenticated with
SCRAM-SHA-256 as the cluster superuser (its password comes from the cluster's files, in memory only).

A routed statement runs as ``SET ROLE <client user>; <statement>; RESET ROLE`` in one simple Query, so it
has the client's privileges and runs in one implicit transaction: if the statement fails, the
transaction aborts and the role change is undone with it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

from . import protocol as p
from . import wire
from .rewrite import qualified

CONNECT_TIMEOUT = 10.0


class BackendError(Exception):
    """The worker connection could not be opened or broke."""


@dataclass(frozen=True)
class WorkerLogin:
    host: str
    port: int
    user: str
    password: str
    database: str


class _Scram:
    """Client side of SCRAM-SHA-256 without channel binding (RFC 5802/7677)."""

    def __init__(self, password: str) -> None:
        self.password = password
        self.nonce = base64.b64encode(os.urandom(18)).decode()
        self.first_bare = f"n=,r={self.nonce}"
        self.server_signature = b""

    def first(self) -> bytes:
        return ("n,," + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
        if not attrs["r"].startswith(self.nonce):
            raise BackendError("SCRAM: the server's nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(hashlib.sha256(client_key).digest(), auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        self.server_signature = hmac.digest(hmac.digest(salted, b"Server Key", "sha256"), auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify(self, server_final: bytes) -> None:
        attrs = dict(part.split("=", 1) for part in server_final.decode().split(","))
        if not hmac.compare_digest(base64.b64decode(attrs.get("v", "")), self.server_signature):
            raise BackendError("SCRAM: the server's signature does not match")


class WorkerConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: str) -> None:
        self.user = user  # the login role
        self.address = writer.get_extra_info("peername")[:2]
        self.cancel_key: tuple[int, bytes] | None = None  # the worker backend's, to cancel a routed statement
        self.reader = reader
        self.writer = writer
        self.broken = False

    @classmethod
    async def open(cls, login: WorkerLogin, settings: tuple[tuple[str, str], ...] = ()) -> WorkerConnection:
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(login.host, login.port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise BackendError(f"cannot connect to {login.host}:{login.port}: {exc}") from None
        conn = cls(reader, writer, login.user)
        params = (("user", login.user), ("database", login.database), ("application_name", "pgfleet router"), *settings)
        writer.write(wire.StartupMessage(wire.PROTOCOL_3_0, params).encode())
        scram: _Scram | None = None
        while True:
            type_byte, payload = await conn.read()
            message = p.decode_backend(type_byte, payload)
            if isinstance(message, p.ErrorResponse):
                raise BackendError(f"{login.host}:{login.port}: {message.message}")
            if isinstance(message, p.Authentication):
                if message.code == 10:
                    scram = _Scram(login.password)
                    writer.write(p.sasl_initial_response("SCRAM-SHA-256", scram.first()).encode())
                elif message.code == 11 and scram is not None:
                    writer.write(p.AuthResponse(scram.final(message.data)).encode())
                elif message.code == 12 and scram is not None:
                    scram.verify(message.data)
                elif message.code != 0:
                    raise BackendError(f"unsupported authentication request {message.code} from {login.host}:{login.port}")
            elif isinstance(message, p.BackendKeyData):
                conn.cancel_key = (message.process_id, message.secret)
            elif isinstance(message, p.ReadyForQuery):
                return conn

    async def read(self) -> tuple[bytes, bytes]:
        try:
            header = await self.reader.readexactly(5)
            length = int.from_bytes(header[1:5], "big", signed=True)
            if length < 4:
                raise BackendError(f"invalid message length {length} from a worker")
            return header[:1], await self.reader.readexactly(length - 4)
        except (OSError, asyncio.IncompleteReadError) as exc:
            self.broken = True
            raise BackendError(f"worker connection lost: {exc}") from None

    async def run_as(self, role: str, sql: str) -> tuple[bool, list[tuple[bytes, bytes]]]:
        """Run ``sql`` under ``role``; (whether the role could be set, the statement's messages up to and
        including ReadyForQuery, without those of SET ROLE and RESET ROLE)."""
        if role == self.user:  # already that role: one statement, no role switch
            self.writer.write(p.Query(sql).encode())
            return True, await self._until_ready()
        text = f"SET ROLE {qualified(role)};\n{sql}\n;\nRESET ROLE"  # the newline ends a trailing -- comment
        self.writer.write(p.Query(text).encode())
        messages = await self._until_ready()
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

    async def _until_ready(self) -> list[tuple[bytes, bytes]]:
        messages: list[tuple[bytes, bytes]] = []
        while True:
            type_byte, payload = await self.read()
            messages.append((type_byte, payload))
            if type_byte == b"Z":
                return messages

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.write(p.Terminate().encode())
            self.writer.close()
