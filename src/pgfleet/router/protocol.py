"""The PostgreSQL v3 wire protocol as data: typed messages of both directions with their encoding and
decoding. Framing, primitives and the untyped first message of a connection are in :mod:`.wire`.

Several type bytes mean different things in each direction ('C' is Close from a client and
CommandComplete from a server), hence one decoding table per direction.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .handshake import Authentication as Authentication  # re-exported: protocol is the codec's one name
from .handshake import AuthResponse as AuthResponse
from .handshake import BackendKeyData as BackendKeyData
from .handshake import NegotiateProtocolVersion as NegotiateProtocolVersion
from .handshake import sasl_initial_response as sasl_initial_response
from .message import Message as Message
from .message import empty as _empty
from .wire import (
    ProtocolViolation,
    Reader,
    cstr,
    int16,
    int32,
    value,
)


# --- messages ----------------------------------------------------------------------------------------
# The base class is in .message; the messages of the startup and authentication exchange in .handshake.
# Messages of both directions.
@dataclass(frozen=True)
class CopyData(Message):
    TYPE = b"d"
    data: bytes

    def payload(self) -> bytes:
        return self.data

    @classmethod
    def read(cls, r: Reader) -> CopyData:
        return cls(r.rest())


CopyDone = _empty(b"c", "CopyDone")


# Frontend messages.
@dataclass(frozen=True)
class Query(Message):
    TYPE = b"Q"
    sql: str

    def payload(self) -> bytes:
        return cstr(self.sql)

    @classmethod
    def read(cls, r: Reader) -> Query:
        return cls(r.cstring())


@dataclass(frozen=True)
class Parse(Message):
    TYPE = b"P"
    name: str
    sql: str
    param_types: tuple[int, ...] = ()

    def payload(self) -> bytes:
        return cstr(self.name) + cstr(self.sql) + int16(len(self.param_types)) + b"".join(
            struct.pack("!I", t) for t in self.param_types)

    @classmethod
    def read(cls, r: Reader) -> Parse:
        name, text = r.cstring(), r.cstring()
        return cls(name, text, tuple(r.int32() & 0xFFFF_FFFF for _ in range(r.count())))


@dataclass(frozen=True)
class Bind(Message):
    TYPE = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def payload(self) -> bytes:
        return b"".join((
            cstr(self.portal), cstr(self.statement),
            int16(len(self.param_formats)), *(int16(f) for f in self.param_formats),
            int16(len(self.params)), *(value(p) for p in self.params),
            int16(len(self.result_formats)), *(int16(f) for f in self.result_formats)))

    @classmethod
    def read(cls, r: Reader) -> Bind:
        portal, statement = r.cstring(), r.cstring()
        formats = tuple(r.int16() for _ in range(r.count()))
        params = tuple(r.value() for _ in range(r.count()))
        results = tuple(r.int16() for _ in range(r.count()))
        return cls(portal, statement, formats, params, results)


def _kind(r: Reader, what: str) -> str:
    kind = r.byte().decode("latin-1")
    if kind not in ("S", "P"):
        raise ProtocolViolation(f"invalid {what} message subtype {kind!r}")
    return kind


@dataclass(frozen=True)
class Describe(Message):
    TYPE = b"D"
    kind: str  # S statement | P portal
    name: str

    def payload(self) -> bytes:
        return self.kind.encode() + cstr(self.name)

    @classmethod
    def read(cls, r: Reader) -> Describe:
        return cls(_kind(r, "DESCRIBE"), r.cstring())


@dataclass(frozen=True)
class Close(Message):
    TYPE = b"C"
    kind: str  # S statement | P portal
    name: str

    def payload(self) -> bytes:
        return self.kind.encode() + cstr(self.name)

    @classmethod
    def read(cls, r: Reader) -> Close:
        return cls(_kind(r, "CLOSE"), r.cstring())


@dataclass(frozen=True)
class Execute(Message):
    TYPE = b"E"
    portal: str
    max_rows: int = 0

    def payload(self) -> bytes:
        return cstr(self.portal) + int32(self.max_rows)

    @classmethod
    def read(cls, r: Reader) -> Execute:
        return cls(r.cstring(), r.int32())


@dataclass(frozen=True)
class CopyFail(Message):
    TYPE = b"f"
    reason: str

    def payload(self) -> bytes:
        return cstr(self.reason)

    @classmethod
    def read(cls, r: Reader) -> CopyFail:
        return cls(r.cstring())


@dataclass(frozen=True)
class FunctionCall(Message):
    TYPE = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def payload(self) -> bytes:
        return b"".join((
            struct.pack("!I", self.function_oid), int16(len(self.arg_formats)), *(int16(f) for f in self.arg_formats),
            int16(len(self.args)), *(value(a) for a in self.args), int16(self.result_format)))

    @classmethod
    def read(cls, r: Reader) -> FunctionCall:
        oid = r.int32() & 0xFFFF_FFFF
        formats = tuple(r.int16() for _ in range(r.count()))
        args = tuple(r.value() for _ in range(r.count()))
        return cls(oid, formats, args, r.int16())


Sync = _empty(b"S", "Sync")
Flush = _empty(b"H", "Flush")
Terminate = _empty(b"X", "Terminate")


# Backend messages.
@dataclass(frozen=True)
class CommandComplete(Message):
    TYPE = b"C"
    tag: str

    def payload(self) -> bytes:
        return cstr(self.tag)

    @classmethod
    def read(cls, r: Reader) -> CommandComplete:
        return cls(r.cstring())


@dataclass(frozen=True)
class CopyInResponse(Message):
    TYPE = b"G"
    format: int  # 0 text, 1 binary
    column_formats: tuple[int, ...] = ()

    def payload(self) -> bytes:
        return bytes((self.format,)) + int16(len(self.column_formats)) + b"".join(int16(f) for f in self.column_formats)

    @classmethod
    def read(cls, r: Reader) -> CopyInResponse:
        fmt = r.byte()[0]
        return cls(fmt, tuple(r.int16() for _ in range(r.count())))


@dataclass(frozen=True)
class CopyOutResponse(CopyInResponse):
    TYPE = b"H"


@dataclass(frozen=True)
class CopyBothResponse(CopyInResponse):
    TYPE = b"W"


@dataclass(frozen=True)
class DataRow(Message):
    TYPE = b"D"
    values: tuple[bytes | None, ...]

    def payload(self) -> bytes:
        return int16(len(self.values)) + b"".join(value(v) for v in self.values)

    @classmethod
    def read(cls, r: Reader) -> DataRow:
        return cls(tuple(r.value() for _ in range(r.count())))


@dataclass(frozen=True)
class ErrorResponse(Message):
    """Fields by code: S severity, V severity (not localized), C SQLSTATE, M message, D detail, H hint, …"""

    TYPE = b"E"
    fields: tuple[tuple[str, str], ...]

    def payload(self) -> bytes:
        return b"".join(code.encode() + cstr(text) for code, text in self.fields) + b"\0"

    @classmethod
    def read(cls, r: Reader) -> ErrorResponse:
        fields: list[tuple[str, str]] = []
        while (code := r.byte()) != b"\0":
            fields.append((code.decode("latin-1"), r.cstring()))
        return cls(tuple(fields))

    def field(self, code: str) -> str | None:
        return next((text for c, text in self.fields if c == code), None)

    @property
    def sqlstate(self) -> str | None:
        return self.field("C")

    @property
    def message(self) -> str | None:
        return self.field("M")


@dataclass(frozen=True)
class NoticeResponse(ErrorResponse):
    TYPE = b"N"


@dataclass(frozen=True)
class FunctionCallResponse(Message):
    TYPE = b"V"
    result: bytes | None

    def payload(self) -> bytes:
        return value(self.result)

    @classmethod
    def read(cls, r: Reader) -> FunctionCallResponse:
        return cls(r.value())


@dataclass(frozen=True)
class NotificationResponse(Message):
    TYPE = b"A"
    process_id: int
    channel: str
    message: str

    def payload(self) -> bytes:
        return int32(self.process_id) + cstr(self.channel) + cstr(self.message)

    @classmethod
    def read(cls, r: Reader) -> NotificationResponse:
        return cls(r.int32(), r.cstring(), r.cstring())


@dataclass(frozen=True)
class ParameterDescription(Message):
    TYPE = b"t"
    type_oids: tuple[int, ...]

    def payload(self) -> bytes:
        return struct.pack("!H", len(self.type_oids)) + b"".join(struct.pack("!I", t) for t in self.type_oids)

    @classmethod
    def read(cls, r: Reader) -> ParameterDescription:
        # a count above 32767 is sent as an unsigned 16-bit number
        n = r.int16() & 0xFFFF
        return cls(tuple(r.int32() & 0xFFFF_FFFF for _ in range(n)))


@dataclass(frozen=True)
class ParameterStatus(Message):
    TYPE = b"S"
    name: str
    value: str

    def payload(self) -> bytes:
        return cstr(self.name) + cstr(self.value)

    @classmethod
    def read(cls, r: Reader) -> ParameterStatus:
        return cls(r.cstring(), r.cstring())


@dataclass(frozen=True)
class ReadyForQuery(Message):
    TYPE = b"Z"
    status: str  # I idle, T in a transaction, E in a failed transaction

    def payload(self) -> bytes:
        return self.status.encode()

    @classmethod
    def read(cls, r: Reader) -> ReadyForQuery:
        status = r.byte().decode("latin-1")
        if status not in ("I", "T", "E"):
            raise ProtocolViolation(f"invalid ReadyForQuery status {status!r}")
        return cls(status)


@dataclass(frozen=True)
class Field:
    """One column of a RowDescription."""

    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 0
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True)
class RowDescription(Message):
    TYPE = b"T"
    fields: tuple[Field, ...]

    def payload(self) -> bytes:
        return int16(len(self.fields)) + b"".join(
            cstr(f.name) + _FIELD.pack(f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format)
            for f in self.fields)

    @classmethod
    def read(cls, r: Reader) -> RowDescription:
        fields = []
        for _ in range(r.count()):
            name = r.cstring()
            fields.append(Field(name, *_FIELD.unpack(r._take(_FIELD.size))))
        return cls(tuple(fields))


ParseComplete = _empty(b"1", "ParseComplete")
BindComplete = _empty(b"2", "BindComplete")
CloseComplete = _empty(b"3", "CloseComplete")
NoData = _empty(b"n", "NoData")
EmptyQueryResponse = _empty(b"I", "EmptyQueryResponse")
PortalSuspended = _empty(b"s", "PortalSuspended")

FRONTEND: dict[bytes, type[Message]] = {m.TYPE: m for m in (
    Query, Parse, Bind, Describe, Close, Execute, Sync, Flush, Terminate, CopyData, CopyDone, CopyFail,
    FunctionCall, AuthResponse)}
BACKEND: dict[bytes, type[Message]] = {m.TYPE: m for m in (
    Authentication, BackendKeyData, ParseComplete, BindComplete, CloseComplete, CommandComplete, CopyData,
    CopyDone, CopyInResponse, CopyOutResponse, CopyBothResponse, DataRow, EmptyQueryResponse, ErrorResponse,
    FunctionCallResponse, NegotiateProtocolVersion, NoData, NoticeResponse, NotificationResponse,
    ParameterDescription, ParameterStatus, ParseComplete, PortalSuspended, ReadyForQuery, RowDescription)}


def _decode(table: dict[bytes, type[Message]], side: str, type_byte: bytes, payload: bytes) -> Message:
    cls = table.get(type_byte)
    if cls is None:
        raise ProtocolViolation(f"invalid {side} message type {type_byte!r}")
    r = Reader(payload, cls.__name__)
    message = cls.read(r)
    r.end()
    return message


def decode_frontend(type_byte: bytes, payload: bytes) -> Message:
    return _decode(FRONTEND, "frontend", type_byte, payload)


def decode_backend(type_byte: bytes, payload: bytes) -> Message:
    return _decode(BACKEND, "backend", type_byte, payload)


def error_response(sqlstate: str, message: str, *, severity: str = "FATAL", hint: str | None = None) -> ErrorResponse:
    fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
    if hint:
        fields.append(("H", hint))
    return ErrorResponse(tuple(fields))
