"""Logging a client session in again after its coordinator connection was lost (the coordinator restarted or
failed over), so that a session that was idle keeps working without reconnecting (issue 9, failover).

The router keeps no passwords. What it keeps, in memory only, is what the client's own SCRAM-SHA-256 login
showed it as it relayed the exchange (:class:`ScramRecord`): the messages and the client's proof. With the
role's StoredKey, read from ``pg_authid`` on the coordinator's new primary by the router's superuser login,
the proof gives the ClientKey: ``ClientKey = ClientProof XOR HMAC(StoredKey, AuthMessage)``, checked by
``H(ClientKey) = StoredKey`` (so a changed password ends the session instead). That key is what PostgreSQL
18's own SCRAM pass-through logs in with (libpq's ``scram_client_key``, postgres_fdw's
``use_scram_passthrough``). The new login is a fresh exchange with a nonce of its own; nothing of the old
one is replayed. Sessions that logged in any other way (md5, password, trust) end as before.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass

from psycopg import sql

from . import wire
from .backend import BackendError, WorkerConnection, WorkerLogin

_I32 = struct.Struct("!i")
MECHANISM = b"SCRAM-SHA-256"


@dataclass
class ScramRecord:
    """The client's SCRAM-SHA-256 exchange with the coordinator, as relayed (no channel binding)."""

    client_first_bare: bytes = b""
    server_first: bytes = b""
    client_final_bare: bytes = b""  # client-final-message-without-proof
    proof: bytes = b""
    complete: bool = False  # the exchange ended with AuthenticationOk
    unusable: bool = False  # another mechanism, channel binding, or something unexpected

    def client_message(self, payload: bytes) -> None:
        """A PasswordMessage-family message ('p') the client sent during authentication."""
        if self.unusable or self.complete:
            return
        try:
            if not self.client_first_bare:  # SASLInitialResponse: mechanism, length, client-first-message
                end = payload.index(b"\0")
                if payload[:end] != MECHANISM:
                    self.unusable = True
                    return
                length = _I32.unpack_from(payload, end + 1)[0]
                first = payload[end + 5:end + 5 + length]
                if not (first.startswith(b"n,,") or first.startswith(b"y,,")):
                    self.unusable = True  # channel binding ("p=…") or an authzid: not recorded
                    return
                self.client_first_bare = first[3:]
            elif not self.proof:  # SASLResponse: client-final-message
                bare, _, proof = payload.rpartition(b",p=")
                self.client_final_bare, self.proof = bare, base64.b64decode(proof, validate=True)
        except (ValueError, struct.error):
            self.unusable = True

    def server_message(self, payload: bytes) -> None:
        """An Authentication message ('R') of the coordinator's, during authentication."""
        if self.unusable or len(payload) < 4:
            return
        code = _I32.unpack_from(payload, 0)[0]
        if code == 11 and not self.server_first:
            self.server_first = payload[4:]
        elif code == 0:
            self.complete = bool(self.client_first_bare and self.server_first and self.proof)
        elif code not in (10, 12):
            self.unusable = True  # another method (md5, cleartext password, …)

    @property
    def usable(self) -> bool:
        return self.complete and not self.unusable

    def client_key(self, stored_key: bytes) -> bytes | None:
        """The ClientKey the proof was made with, when ``stored_key`` is the role's (else None)."""
        auth_message = b",".join((self.client_first_bare, self.server_first, self.client_final_bare))
        signature = hmac.digest(stored_key, auth_message, "sha256")
        if len(signature) != len(self.proof):
            return None
        key = bytes(a ^ b for a, b in zip(self.proof, signature, strict=True))
        return key if hmac.compare_digest(hashlib.sha256(key).digest(), stored_key) else None


@dataclass(frozen=True)
class ScramKeys:
    client_key: bytes
    server_key: bytes  # to check the server's signature


def parse_secret(secret: str) -> tuple[bytes, bytes] | None:
    """(StoredKey, ServerKey) of a ``pg_authid.rolpassword`` SCRAM secret
    (``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``), None for anything else."""
    try:
        method, _, keys = secret.split("$")
        stored, server = keys.split(":")
        if method != "SCRAM-SHA-256":
            return None
        return base64.b64decode(stored, validate=True), base64.b64decode(server, validate=True)
    except ValueError:
        return None


SECRET_READS = 2  # superuser connections one router process opens at once to read roles' secrets


class SecretReader:
    """Reads roles' SCRAM secrets from the coordinator's ``pg_authid`` (as the router's superuser login) for
    sessions logged in again. A failover carries many idle sessions over at once: sessions of one role that
    ask at the same time share one read, and at most :data:`SECRET_READS` connections are open at once, so
    the new primary does not get one superuser connection per session."""

    def __init__(self) -> None:
        self._reads: dict[tuple[str, str, int], asyncio.Future[str | None]] = {}
        self._slots: asyncio.Semaphore | None = None  # made in the event loop

    async def secret(self, user: str, login: WorkerLogin) -> str | None:
        """The role's ``rolpassword`` (None: no such role, or no password); raises BackendError."""
        key = (user, login.host, login.port)
        read = self._reads.get(key)
        if read is None:
            read = self._reads[key] = asyncio.ensure_future(self._read(user, login))
            read.add_done_callback(lambda _: self._reads.pop(key, None))
        return await asyncio.shield(read)

    async def _read(self, user: str, login: WorkerLogin) -> str | None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(SECRET_READS)
        async with self._slots:
            conn = await WorkerConnection.open(login)
            try:
                query = sql.SQL("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = {}").format(sql.Literal(user))
                messages = await conn.request(query.as_string())
            finally:
                conn.close()
        rows = [payload for type_byte, payload in messages if type_byte == b"D"]
        if len(rows) != 1:
            return None
        reader = wire.Reader(rows[0], "DataRow")
        if reader.int16() != 1:
            return None
        length = reader.int32()
        return reader.data[reader.pos:reader.pos + length].decode() if length >= 0 else None


def keys_for(record: ScramRecord, rolpassword: str | None) -> ScramKeys | None:
    """The keys to log the client of ``record`` in with again; None when the role's secret is not SCRAM or
    no longer matches the proof."""
    secret = parse_secret(rolpassword) if rolpassword is not None else None
    if secret is None:
        return None
    client_key = record.client_key(secret[0])
    return ScramKeys(client_key, secret[1]) if client_key is not None else None


async def login_again(host: str, port: int, params: tuple[tuple[str, str], ...], keys: ScramKeys) -> WorkerConnection:
    """A connection to the coordinator at host:port logged in as the client (its startup parameters, a SCRAM
    exchange with ``keys``), after its ReadyForQuery; raises BackendError."""
    login = WorkerLogin(host, port, "", "", "")
    conn = await WorkerConnection.open(login, startup=params, keys=(keys.client_key, keys.server_key))
    if conn.status != b"I":
        conn.close()
        raise BackendError("the new coordinator session is not idle")
    return conn
