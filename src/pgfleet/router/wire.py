"""Framing of the PostgreSQL v3 wire protocol: constants, field primitives, the incremental framer that
cuts a byte stream into messages with the server's length limits, and the violation error. No I/O.

A message is ``type byte + int32 length (itself included) + payload``, except the first message of a
connection (startup, SSLRequest, GSSENCRequest, CancelRequest), which has no type byte. Anything
malformed raises :class:`ProtocolViolation`, which the session answers with an ErrorResponse of
SQLSTATE 08P01 (protocol_violation).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable
from dataclasses import dataclass

PROTOCOL_3_0 = 3 << 16
PROTOCOL_3_2 = (3 << 16) | 2  # PostgreSQL 18: variable-length cancel keys
SSL_REQUEST_CODE = (1234 << 16) | 5679
GSSENC_REQUEST_CODE = (1234 << 16) | 5680
CANCEL_REQUEST_CODE = (1234 << 16) | 5678

MAX_STARTUP_LENGTH = 10_000  # as the server: MAX_STARTUP_PACKET_LENGTH
MAX_MESSAGE_LENGTH = 0x3FFF_FFFF  # PQ_LARGE_MESSAGE_LIMIT (1 GB - 1)
SMALL_MESSAGE_LIMIT = 10_000  # PQ_SMALL_MESSAGE_LIMIT: messages that never carry data
SMALL_FRONTEND_TYPES = frozenset(b"CDEHSXcf")  # Close Describe Execute Flush Sync Terminate CopyDone CopyFail
MAX_CANCEL_KEY_LENGTH = 256  # protocol 3.2 allows secrets up to 256 bytes

PROTOCOL_VIOLATION = "08P01"

_I16 = struct.Struct("!h")
_I32 = struct.Struct("!i")
_HEADER = struct.Struct("!ci")


class ProtocolViolation(Exception):
    """Bytes that are not a valid message; the peer gets ErrorResponse 08P01 and the connection ends."""

    sqlstate = PROTOCOL_VIOLATION


# --- primitives --------------------------------------------------------------------------------------
class Reader:
    """Reads the fields of one payload; running past its end or leaving bytes unread is a violation."""

    __slots__ = ("data", "pos", "what")

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolViolation(f"invalid {self.what} message: truncated")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int16(self) -> int:
        return int(_I16.unpack(self._take(2))[0])

    def int32(self) -> int:
        return int(_I32.unpack(self._take(4))[0])

    def byte(self) -> bytes:
        return self._take(1)

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolViolation(f"invalid {self.what} message: string without terminator")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise ProtocolViolation(f"invalid {self.what} message: string is not UTF-8") from None

    def value(self) -> bytes | None:
        """An int32 length then that many bytes; length -1 is NULL."""
        n = self.int32()
        if n == -1:
            return None
        if n < 0:
            raise ProtocolViolation(f"invalid {self.what} message: negative value length {n}")
        return self._take(n)

    def count(self) -> int:
        n = self.int16()
        if n < 0:
            raise ProtocolViolation(f"invalid {self.what} message: negative count {n}")
        return n

    def rest(self) -> bytes:
        return self._take(len(self.data) - self.pos)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolViolation(f"invalid {self.what} message: {len(self.data) - self.pos} unexpected trailing bytes")


def cstr(text: str) -> bytes:
    raw = text.encode()
    if b"\0" in raw:
        raise ValueError("a protocol string cannot contain a NUL byte")
    return raw + b"\0"


def int16(n: int) -> bytes:
    return _I16.pack(n)


def int32(n: int) -> bytes:
    return _I32.pack(n)


def value(data: bytes | None) -> bytes:
    return int32(-1) if data is None else int32(len(data)) + data


def frame(type_byte: bytes, payload: bytes) -> bytes:
    return _HEADER.pack(type_byte, len(payload) + 4) + payload


# --- the first message of a connection ---------------------------------------------------------------
@dataclass(frozen=True)
class SSLRequest:
    def encode(self) -> bytes:
        return int32(8) + int32(SSL_REQUEST_CODE)


@dataclass(frozen=True)
class GSSENCRequest:
    def encode(self) -> bytes:
        return int32(8) + int32(GSSENC_REQUEST_CODE)


@dataclass(frozen=True)
class CancelRequest:
    process_id: int
    secret: bytes

    def encode(self) -> bytes:
        return int32(12 + len(self.secret)) + int32(CANCEL_REQUEST_CODE) + int32(self.process_id) + self.secret


@dataclass(frozen=True)
class StartupMessage:
    version: int
    parameters: tuple[tuple[str, str], ...]

    def get(self, name: str, default: str | None = None) -> str | None:
        return next((v for k, v in self.parameters if k == name), default)

    def encode(self) -> bytes:
        body = int32(self.version) + b"".join(cstr(k) + cstr(v) for k, v in self.parameters) + b"\0"
        return int32(len(body) + 4) + body


InitialMessage = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


def decode_initial(payload: bytes) -> InitialMessage:
    """The body (after the length) of a connection's first message."""
    r = Reader(payload, "startup packet")
    code = r.int32()
    if code == SSL_REQUEST_CODE:
        r.end()
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        r.end()
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        pid, secret = r.int32(), r.rest()
        if not 4 <= len(secret) <= MAX_CANCEL_KEY_LENGTH:
            raise ProtocolViolation(f"invalid cancel request: key of {len(secret)} bytes")
        return CancelRequest(pid, secret)
    if code >> 16 != 3:
        raise ProtocolViolation(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: server supports 3.0 to 3.2")
    params: list[tuple[str, str]] = []
    while (name := r.cstring()) != "":
        params.append((name, r.cstring()))
    r.end()
    if not any(k == "user" for k, _ in params):
        raise ProtocolViolation("no PostgreSQL user name specified in startup packet")
    return StartupMessage(code, tuple(params))


# --- framing ------------------------------------------------------------------------------------------
class Framer:
    """Cuts a byte stream into messages as bytes arrive.

    ``initial`` frames the untyped first message of a connection, one at a time (after an SSLRequest
    the next is untyped again); :meth:`expect_typed` switches to typed messages. ``limit`` gives the
    largest length allowed for a type byte (frontend: small messages such as Sync may not exceed 10000
    bytes, as in the server)."""

    __slots__ = ("_buf", "_fixed_limit", "_limit", "_skip", "_typed", "last_status")

    def __init__(self, *, initial: bool = False, limit: Callable[[int], int] | None = None) -> None:
        self._buf = bytearray()
        self._skip = 0  # scan(): bytes of the current message still to come
        self.last_status = b""  # scan(): status of the last ReadyForQuery seen (I, T or E)
        self._typed = not initial
        self._limit = limit or (lambda _t: MAX_MESSAGE_LENGTH)
        self._fixed_limit = MAX_MESSAGE_LENGTH if limit is None else None  # scan() then calls no function
        # a limit is never below SMALL_MESSAGE_LIMIT, so a message no longer than that is not checked further

    def expect_typed(self) -> None:
        self._typed = True

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def at_boundary(self) -> bool:
        """Whether everything scanned so far ended exactly at a message boundary."""
        return not self._buf and not self._skip

    def take_buffer(self) -> bytes:
        """The bytes not yet framed (handed on unread, e.g. when switching to a raw relay)."""
        data = bytes(self._buf)
        self._buf.clear()
        return data

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Every complete message now buffered, as (type byte, payload); b'' type for an initial message."""
        if not self._buf and self._typed and type(data) is bytes:
            return self._feed_whole(data)
        buf = self._buf
        buf += data
        out: list[tuple[bytes, bytes]] = []
        pos = 0
        n = len(buf)
        while True:
            if not self._typed:
                if n - pos < 4:
                    break
                length = _I32.unpack_from(buf, pos)[0]
                if not 8 <= length <= MAX_STARTUP_LENGTH:
                    raise ProtocolViolation(f"invalid length of startup packet: {length}")
                if n - pos < length:
                    break
                out.append((b"", bytes(buf[pos + 4:pos + length])))
                pos += length
                break  # what follows depends on the answer: call expect_typed() or stay initial, feed(b"")
            if n - pos < 5:
                break
            type_byte, length = _HEADER.unpack_from(buf, pos)
            if length < 4 or length > self._limit(type_byte[0]):
                raise ProtocolViolation(f"invalid message length {length} for message type {type_byte!r}")
            if n - pos < length + 1:
                break
            out.append((type_byte, bytes(buf[pos + 5:pos + 1 + length])))
            pos += length + 1
        if pos:
            del buf[:pos]
        return out

    def _feed_whole(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """:meth:`feed` with nothing buffered (the usual case: a chunk of whole messages), sliced from ``data``
        itself; what is left of a message is buffered."""
        out: list[tuple[bytes, bytes]] = []
        pos, n, limit, fixed = 0, len(data), self._limit, self._fixed_limit
        while n - pos >= 5:
            type_byte, length = _HEADER.unpack_from(data, pos)
            if length < 4 or (length > SMALL_MESSAGE_LIMIT and length > (fixed if fixed is not None else limit(type_byte[0]))):
                raise ProtocolViolation(f"invalid message length {length} for message type {type_byte!r}")
            if n - pos < length + 1:
                break
            out.append((type_byte, data[pos + 5:pos + 1 + length]))
            pos += length + 1
        if pos < n:
            self._buf += data[pos:]
        return out

    def scan(self, data: bytes) -> list[bytes]:
        """The type bytes of the messages that start in ``data``, with the same length checks as
        :meth:`feed` but without keeping payloads (a relay forwards the bytes as they came). For the typed
        phase only; do not mix with :meth:`feed` on the same stream afterwards."""
        if self._buf:  # a header split across chunks (rare): join it with what follows
            data = bytes(self._buf) + data
            self._buf.clear()
        pos, n = 0, len(data)
        if self._skip:
            if self._skip >= n:
                self._skip -= n
                return []
            pos, self._skip = self._skip, 0
        types: list[bytes] = []
        fixed = self._fixed_limit
        while n - pos >= 5:
            type_byte, length = _HEADER.unpack_from(data, pos)
            if length < 4 or (length > SMALL_MESSAGE_LIMIT and length > (fixed if fixed is not None else self._limit(type_byte[0]))):
                raise ProtocolViolation(f"invalid message length {length} for message type {type_byte!r}")
            if type_byte == b"Z":
                if n - pos < 6:
                    break  # keep ReadyForQuery whole, for its status
                self.last_status = data[pos + 5:pos + 6]
            types.append(type_byte)
            pos += 1 + length
        if pos > n:
            self._skip = pos - n
        elif pos < n:
            self._buf += data[pos:]
        return types

    def expect_initial(self) -> None:
        """After answering SSLRequest/GSSENCRequest the client sends another untyped first message."""
        self._typed = False


def frontend_limit(type_byte: int) -> int:
    return SMALL_MESSAGE_LIMIT if type_byte in SMALL_FRONTEND_TYPES else MAX_MESSAGE_LENGTH


_SEARCH_PATH_STATUS = re.compile(rb"S(.{4})search_path\x00([^\x00]*)\x00", re.DOTALL)


def search_path_statuses(data: bytes) -> list[str]:
    """The values of the ParameterStatus messages for search_path in a chunk of backend messages (PostgreSQL 18
    reports SET search_path), read without framing the chunk: a match counts only when its length field is
    exactly that of such a message."""
    found = []
    for match in _SEARCH_PATH_STATUS.finditer(data):
        text = match.group(2)
        if int.from_bytes(match.group(1), "big") == 4 + len(b"search_path\x00") + len(text) + 1:
            found.append(text.decode("utf-8", "replace"))
    return found


def hand_on(piece: bytes, marks: list[tuple[bytes, int, int]], bulk: Callable[[bytes], None],
            marked: Callable[[bytes, int, int], None]) -> None:
    """A piece cut by :class:`MessageCutter`, in order: each run of unmarked messages to ``bulk`` as one
    slice, each marked message to ``marked`` as (type, start, end) in ``piece``."""
    pos = 0
    for type_byte, start, end in marks:
        if start > pos:
            bulk(piece[pos:start])
        marked(type_byte, start, end)
        pos = end
    if pos < len(piece):
        bulk(piece if pos == 0 else piece[pos:])


class MessageCutter:
    """Cuts a backend byte stream at message boundaries as it arrives, for a relay that forwards the bytes of
    many messages of one type at once (``bulk``: DataRow, or CopyData b"d"): each feed returns the complete
    messages now buffered, as they came, and where each message of another type lies in them. Cheaper than
    :meth:`Framer.scan`, which lists every message's type; a message longer than a read is joined once, when
    it is whole."""

    __slots__ = ("_have", "_need", "_parts", "bulk")

    def __init__(self, bulk: bytes = b"D") -> None:
        self.bulk = bulk
        self._parts: list[bytes] = []  # the start of a message not yet whole
        self._have = 0  # bytes in _parts
        self._need = 0  # bytes that message takes (0: its header is not whole yet)

    def feed(self, data: bytes) -> tuple[bytes, list[tuple[bytes, int, int]]]:
        """(the complete messages, [(type byte, start, end) of every message in them not of the bulk type])."""
        if self._parts:
            self._parts.append(data)
            self._have += len(data)
            if self._have < (self._need or 5):
                return b"", []
            data = b"".join(self._parts)
            self._parts, self._have, self._need = [], 0, 0
        n = len(data)
        pos = 0
        marks: list[tuple[bytes, int, int]] = []
        unpack = _HEADER.unpack_from
        bulk = self.bulk
        shortest = 6 if bulk == b"D" else 4  # a DataRow holds its column count
        while n - pos >= 5:
            type_byte, length = unpack(data, pos)
            end = pos + 1 + length
            if end > n or type_byte != bulk or length < shortest:  # the common case, a whole bulk message, in one test
                if not (shortest if type_byte == bulk else 4) <= length <= MAX_MESSAGE_LENGTH:
                    raise ProtocolViolation(f"invalid message length {length} for message type {type_byte!r}")
                if end > n:
                    self._need = end - pos
                    break
                marks.append((type_byte, pos, end))
            pos = end
        if pos == n:
            return data, marks
        rest = data[pos:]
        self._parts, self._have = [rest], len(rest)
        return data[:pos], marks
