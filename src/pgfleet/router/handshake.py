"""The messages of a connection's startup and authentication exchange: the client's authentication
responses, the server's authentication requests, its cancel key and protocol negotiation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .message import Message
from .wire import MAX_CANCEL_KEY_LENGTH, ProtocolViolation, Reader, cstr, int32, value


@dataclass(frozen=True)
class AuthResponse(Message):
    """'p': PasswordMessage, SASLInitialResponse, SASLResponse or GSSResponse — which one depends on the
    authentication request it answers, so the payload stays raw (see :func:`sasl_initial_response`)."""

    TYPE = b"p"
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def read(cls, r: Reader) -> AuthResponse:
        return cls(r.rest())


def sasl_initial_response(mechanism: str, data: bytes | None) -> AuthResponse:
    return AuthResponse(cstr(mechanism) + value(data))


@dataclass(frozen=True)
class Authentication(Message):
    """'R' with its request code: 0 ok, 3 cleartext, 5 MD5 (data = salt), 7 GSS, 8 GSS continue, 9 SSPI,
    10 SASL (data = mechanism names), 11 SASL continue, 12 SASL final."""

    TYPE = b"R"
    code: int
    data: bytes = b""

    OK: ClassVar[int] = 0
    SASL: ClassVar[int] = 10

    def payload(self) -> bytes:
        return int32(self.code) + self.data

    @classmethod
    def read(cls, r: Reader) -> Authentication:
        return cls(r.int32(), r.rest())

    @property
    def mechanisms(self) -> tuple[str, ...]:
        return tuple(m.decode() for m in self.data.split(b"\0") if m) if self.code == self.SASL else ()


@dataclass(frozen=True)
class BackendKeyData(Message):
    TYPE = b"K"
    process_id: int
    secret: bytes  # 4 bytes in protocol 3.0, up to 256 in 3.2

    def payload(self) -> bytes:
        return int32(self.process_id) + self.secret

    @classmethod
    def read(cls, r: Reader) -> BackendKeyData:
        pid, secret = r.int32(), r.rest()
        if not 4 <= len(secret) <= MAX_CANCEL_KEY_LENGTH:
            raise ProtocolViolation(f"invalid BackendKeyData message: secret of {len(secret)} bytes")
        return cls(pid, secret)


@dataclass(frozen=True)
class NegotiateProtocolVersion(Message):
    TYPE = b"v"
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def payload(self) -> bytes:
        return int32(self.newest_minor) + int32(len(self.unrecognized)) + b"".join(cstr(o) for o in self.unrecognized)

    @classmethod
    def read(cls, r: Reader) -> NegotiateProtocolVersion:
        minor, n = r.int32(), r.int32()
        if n < 0:
            raise ProtocolViolation("invalid NegotiateProtocolVersion message: negative count")
        return cls(minor, tuple(r.cstring() for _ in range(n)))
