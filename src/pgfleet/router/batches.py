"""Extended-protocol batches as data, for routing them (no I/O; :mod:`.extended` drives them).

A batch is what a client sends up to and including a Sync. :func:`classify` tells whether its shape can
run on a worker: statement messages answered by the coordinator first (Parse, Describe of a statement),
then one Bind of the unnamed portal, an optional Describe of that portal, one Execute of it, Sync.
:class:`Statements` keeps the session's prepared statements as the coordinator has them, confirmed
from the coordinator's replies (a Parse that failed there, e.g. a name already in use, leaves nothing).
:func:`parameter_values` reads a Bind's values as text for placing a key (text and binary formats of the
integer and text types); :func:`client_reply` turns a worker's reply into the coordinator's.
"""

from __future__ import annotations

import datetime
import functools
import math
import struct
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import overload

from . import protocol as p
from .shardmap import NotPlaced

FIRST_USER_OID = 16384  # FirstNormalObjectId: types from here on have other OIDs on each server
INT2, INT4, INT8, TEXT, VARCHAR = 21, 23, 20, 25, 1043
_BINARY_INTEGERS = {INT2: struct.Struct("!h"), INT4: struct.Struct("!i"), INT8: struct.Struct("!q")}
PARSE_COMPLETE = p.ParseComplete().encode()
_EPOCH = datetime.datetime(2000, 1, 1)  # PostgreSQL's binary dates and timestamps count from here
_INFINITE_64 = {(1 << 63) - 1: "infinity", -(1 << 63): "-infinity"}
_INFINITE_32 = {(1 << 31) - 1: "infinity", -(1 << 31): "-infinity"}


def _float(raw: bytes) -> str:
    value = struct.unpack("!d" if len(raw) == 8 else "!f", raw)[0]
    if math.isnan(value):
        return "NaN"
    return {math.inf: "Infinity", -math.inf: "-Infinity"}.get(value) or repr(value)


def _timestamp(raw: bytes, zone: str) -> str:
    (micros,) = struct.unpack("!q", raw)
    if micros in _INFINITE_64:
        return _INFINITE_64[micros]
    return (_EPOCH + datetime.timedelta(microseconds=micros)).isoformat(" ") + zone


def _date(raw: bytes) -> str:
    (days,) = struct.unpack("!i", raw)
    return _INFINITE_32.get(days) or (_EPOCH.date() + datetime.timedelta(days=days)).isoformat()


def _bool(raw: bytes) -> str:
    if raw not in (b"\x00", b"\x01"):
        raise ValueError("not a binary boolean")
    return "true" if raw == b"\x01" else "false"


# binary parameter values the router reads as PostgreSQL's text for that type (exact: no rounding)
_BINARY_TEXT: dict[int, Callable[[bytes], str]] = {
    16: _bool, 700: _float, 701: _float, 2950: lambda raw: str(uuid.UUID(bytes=raw)), 1082: _date,
    1114: lambda raw: _timestamp(raw, ""), 1184: lambda raw: _timestamp(raw, "+00"),
}

Message = tuple[bytes, bytes]  # (type byte, payload) as framed


@dataclass(frozen=True)
class Statement:
    """A prepared statement of the session: its text and what the coordinator said about it."""

    sql: str
    client_types: tuple[int, ...] = ()  # as the client's Parse gave them (0: let the server infer)
    param_types: tuple[int, ...] | None = None  # the coordinator's ParameterDescription; None: not described yet
    columns: tuple[p.Field, ...] | None = None  # the coordinator's RowDescription (() for NoData)

    @property
    def described(self) -> bool:
        return self.param_types is not None and self.columns is not None

    @functools.cached_property
    def portable(self) -> bool:
        """Whether it is described with built-in parameter and result types: the same OIDs on every server."""
        if self.param_types is None or self.columns is None:
            return False
        return all(t < FIRST_USER_OID for t in self.param_types) and all(f.type_oid < FIRST_USER_OID for f in self.columns)


@dataclass(slots=True)  # not frozen: made for every batch, and a frozen dataclass is made slower
class Plan:
    """A batch whose shape may run on a worker (not changed once made)."""

    prefix: tuple[p.Parse | p.Describe, ...]  # answered by the coordinator (or known already)
    bind: p.Bind
    describe: bool  # Describe of the unnamed portal after the Bind
    execute: p.Execute
    tail: tuple[Message, ...]  # Bind … Sync as they came
    # the batch as the client sent it, when this one is the router's rework of it (keys drawn for an
    # INSERT: extkeys.py); what goes to the coordinator when the batch is not routed after all
    original: Plan | None = None

    @property
    def as_sent(self) -> Plan:
        return self.original or self

    def statement(self, known: Statements) -> Statement | None:
        """The statement the Bind uses: parsed in this batch, or known to exist on the coordinator."""
        for message in reversed(self.prefix):
            if isinstance(message, p.Parse) and message.name == self.bind.statement:
                return Statement(message.sql, message.param_types)
        return known.get(self.bind.statement)


_DESCRIBE_UNNAMED_PORTAL = b"P\0"
_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")


def read_bind(payload: bytes) -> p.Bind | None:
    """A Bind of the unnamed portal, read fast (this is on every routed statement's path); None for a
    named portal or a malformed message (the coordinator reports it)."""
    try:
        if payload[0] != 0:
            return None
        end = payload.index(0, 1)
        statement = payload[1:end].decode()
        pos = end + 1
        (n,) = _I16.unpack_from(payload, pos)
        formats = () if n == 0 else _I16.unpack_from(payload, pos + 2) if n == 1 else \
            struct.unpack_from(f"!{n}h", payload, pos + 2)
        pos += 2 + 2 * n
        (n,) = _I16.unpack_from(payload, pos)
        pos += 2
        params: list[bytes | None] = []
        for _ in range(n):
            (length,) = _I32.unpack_from(payload, pos)
            pos += 4
            if length < 0:
                params.append(None)
            else:
                if pos + length > len(payload):
                    return None
                params.append(payload[pos:pos + length])
                pos += length
        (n,) = _I16.unpack_from(payload, pos)
        results = () if n == 0 else _I16.unpack_from(payload, pos + 2) if n == 1 else \
            struct.unpack_from(f"!{n}h", payload, pos + 2)
        if pos + 2 + 2 * n != len(payload):
            return None
    except (IndexError, ValueError, struct.error):  # UnicodeDecodeError is a ValueError
        return None
    return p.Bind("", statement, formats, tuple(params), results)


@functools.lru_cache(maxsize=512)
def read_parse(payload: bytes) -> p.Parse:
    """A Parse message (the same ones come again and again: -M extended parses before every execution)."""
    message = p.decode_frontend(b"P", payload)
    assert isinstance(message, p.Parse)
    return message


def classify(batch: Sequence[Message]) -> Plan | None:
    """The plan of a batch ending in Sync, or None when it goes to the coordinator as it came (several
    Executes, named portals, Close, a Describe of a portal before its Bind, …)."""
    n = len(batch)
    if n < 3 or batch[-1][0] != b"S" or batch[-2][0] != b"E":
        return None
    execute_payload = batch[-2][1]
    if execute_payload[:1] != b"\0" or len(execute_payload) != 5:
        return None  # a named portal (or malformed)
    describe = batch[-3][0] == b"D"
    at = n - 4 if describe else n - 3
    if at < 0 or batch[at][0] != b"B" or (describe and batch[-3][1] != _DESCRIBE_UNNAMED_PORTAL):
        return None
    bind = read_bind(batch[at][1])
    if bind is None:
        return None
    prefix: list[p.Parse | p.Describe] = []
    for type_byte, payload in batch[:at]:
        if type_byte not in (b"P", b"D"):
            return None
        message = read_parse(payload) if type_byte == b"P" else p.decode_frontend(type_byte, payload)
        if isinstance(message, p.Describe) and message.kind != "S":
            return None
        assert isinstance(message, p.Parse | p.Describe)
        prefix.append(message)
    return Plan(tuple(prefix), bind, describe, p.Execute("", _I32.unpack_from(execute_payload, 1)[0]), tuple(batch[at:]))


# --- statements as the coordinator has them ------------------------------------------------------------
@dataclass
class _Record:
    """The Parse and Close messages sent to the coordinator before one Sync (or a Query), in order."""

    ops: list[p.Parse | p.Close] = field(default_factory=list)
    confirmed: int = 0
    closed: bool = False  # its Sync (or Query) is sent: a ReadyForQuery ends it
    query: bool = False


class Statements:
    """The session's prepared statements by name ('' the unnamed one), as far as the coordinator's replies
    confirm them: ParseComplete and CloseComplete answer the Parse and Close messages in order, and an
    error skips the rest up to Sync, so the replies counted before ReadyForQuery tell which took effect."""

    def __init__(self) -> None:
        self._known: dict[str, Statement] = {}
        self._records: deque[_Record] = deque()

    def get(self, name: str) -> Statement | None:
        return self._known.get(name)

    def set(self, name: str, statement: Statement) -> None:
        self._known[name] = statement

    def drop(self, name: str) -> None:
        self._known.pop(name, None)

    def known(self) -> dict[str, Statement]:
        """The statements the coordinator confirmed, by name."""
        return dict(self._known)

    def clear(self) -> None:
        """DEALLOCATE ALL was sent (while nothing else was awaited)."""
        self._known.clear()

    @property
    def settled(self) -> bool:
        """No reply of the coordinator is awaited."""
        return not self._records

    def owed(self, count: int) -> None:
        """``count`` ReadyForQuery replies are owed for what was sent before tracking began."""
        for _ in range(count):
            self._records.append(_Record(closed=True))

    def sent(self, type_byte: bytes, payload: bytes) -> None:
        """A client message went to the coordinator."""
        if type_byte in b"PCSQ":
            if not self._records or self._records[-1].closed:
                self._records.append(_Record())
            record = self._records[-1]
            if type_byte in b"PC":
                message = p.decode_frontend(type_byte, payload)
                assert isinstance(message, p.Parse | p.Close)
                record.ops.append(message)
            else:
                record.closed = True
                record.query = type_byte == b"Q"

    def replies(self, types: Sequence[bytes]) -> None:
        """Types of the coordinator's messages, in order."""
        if not self._records:
            return
        for type_byte in types:
            if type_byte in (b"1", b"3") and self._records:
                record = self._records[0]
                if record.confirmed < len(record.ops):
                    self._apply(record.ops[record.confirmed])
                    record.confirmed += 1
            elif type_byte == b"Z" and self._records:
                record = self._records.popleft()
                failed = record.ops[record.confirmed:]
                if record.query or any(isinstance(m, p.Parse) and not m.name for m in failed):
                    self.drop("")  # a failed unnamed Parse and a simple Query leave no unnamed statement

    def _apply(self, op: p.Parse | p.Close) -> None:
        if isinstance(op, p.Parse):
            self._known[op.name] = Statement(op.sql, op.param_types)
        elif op.kind == "S":
            self.drop(op.name)


# --- values and replies ----------------------------------------------------------------------------------
class ParameterValues(Sequence[str | None]):
    """A Bind's values as text, read when asked: a value the router cannot read as its type's text
    (binary data of other types, invalid UTF-8) raises NotPlaced, so the statement goes to the coordinator."""

    def __init__(self, bind: p.Bind, types: Sequence[int]) -> None:
        self.bind = bind
        self.types = types

    def __len__(self) -> int:
        return len(self.bind.params)

    @overload
    def __getitem__(self, index: int) -> str | None: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str | None]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str | None] | None:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        raw = self.bind.params[index]
        if raw is None:
            return None
        formats = self.bind.param_formats
        binary = (formats[0] if len(formats) == 1 else formats[index] if formats else 0) == 1
        type_oid = self.types[index] if binary and index < len(self.types) else 0
        if binary and type_oid in _BINARY_INTEGERS:
            codec = _BINARY_INTEGERS[type_oid]
            if len(raw) != codec.size:
                raise NotPlaced(f"parameter ${index + 1}: {len(raw)} bytes of binary data for type {type_oid}")
            return str(codec.unpack(raw)[0])
        if binary and type_oid in _BINARY_TEXT:
            try:
                return _BINARY_TEXT[type_oid](raw)
            except (ValueError, OverflowError, struct.error):
                raise NotPlaced(f"parameter ${index + 1}: binary data of type {type_oid} the router cannot read") from None
        if binary and type_oid not in (TEXT, VARCHAR):
            raise NotPlaced(f"parameter ${index + 1}: binary data of type {type_oid} is not read by the router")
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise NotPlaced(f"parameter ${index + 1} is not valid UTF-8") from None

    def __iter__(self) -> Iterator[str | None]:
        return (self[i] for i in range(len(self)))


def parameter_values(bind: p.Bind, types: Sequence[int]) -> ParameterValues:
    return ParameterValues(bind, types)


@functools.lru_cache(maxsize=256)
def row_description(columns: tuple[p.Field, ...], result_formats: tuple[int, ...]) -> bytes:
    """The coordinator's RowDescription of a statement for a portal with these result formats."""
    if not result_formats:
        fields = tuple(columns)
    elif len(result_formats) == 1:
        fields = tuple(replace(f, format=result_formats[0]) for f in columns)
    else:
        fields = tuple(replace(f, format=fmt) for f, fmt in zip(columns, result_formats, strict=False))
    return p.RowDescription(fields).encode()


def client_reply(reply: bytes, *, parsed: bool, statement: Statement, bind: p.Bind) -> tuple[bytes, bool]:
    """(the worker's reply to [Parse] Bind [Describe portal] Execute Sync as the coordinator would send it,
    whether the worker's Parse succeeded): the worker's ParseComplete is dropped (the client's Parse was
    answered by the coordinator) and its RowDescription, which names the shard table, becomes the
    coordinator's."""
    pos = 0
    if parsed:
        if not reply.startswith(PARSE_COMPLETE):
            return reply, False  # the worker's error, then ReadyForQuery
        pos = len(PARSE_COMPLETE)
    at = pos + 5
    if reply[pos:pos + 1] == b"2" and reply[at:at + 1] == b"T" and statement.columns:
        length = int.from_bytes(reply[at + 1:at + 5], "big")
        if int.from_bytes(reply[at + 5:at + 7], "big") == len(statement.columns):
            described = row_description(statement.columns, bind.result_formats)
            return reply[pos:at] + described + reply[at + 1 + length:], True
    return reply[pos:], True
