"""The pieces of a router transaction's replies to the client: SQLSTATEs, ErrorResponse / NoticeResponse /
CommandComplete / ReadyForQuery as bytes, workers' replies without the answers to the router's own setup
statements, and :class:`ReplySkipper`, which drops the coordinator's answer to the router's setup Query."""

from __future__ import annotations

from . import protocol as p
from . import wire
from .twophase import COMPLETION_UNKNOWN as COMPLETION_UNKNOWN  # re-exported with the other SQLSTATEs
from .twophase import TRANSACTION_ROLLBACK as TRANSACTION_ROLLBACK
from .twophase import messages

NOT_SUPPORTED = "0A000"
IN_FAILED_TRANSACTION = "25P02"
ACTIVE_TRANSACTION = "25001"
NO_TRANSACTION = "25P01"
NO_SAVEPOINT = "3B001"
CONNECTION_FAILURE = "08006"


def error(sqlstate: str, message: str, hint: str | None = None) -> bytes:
    return p.error_response(sqlstate, message, severity="ERROR", hint=hint).encode()


def warning(sqlstate: str, message: str) -> bytes:
    return p.NoticeResponse((("S", "WARNING"), ("V", "WARNING"), ("C", sqlstate), ("M", message))).encode()


def ready(status: str) -> bytes:
    return p.ReadyForQuery(status).encode()


def complete(tag: str) -> bytes:
    return p.CommandComplete(tag).encode()


def without_parameter_status(reply: bytes) -> bytes:
    """A worker's reply without its ParameterStatus messages: when the transaction aborts, SET LOCAL ROLE
    ends and the worker reports is_superuser of its login; the client's session is the coordinator's."""
    out = messages(reply)
    return b"".join(wire.frame(t, payload) for t, payload in out if t != b"S") if any(t == b"S" for t, _ in out) else reply


def without_setup(reply: bytes, count: int) -> bytes:
    """A reply without the CommandComplete messages of the first ``count`` statements (BEGIN, SET LOCAL
    ROLE, SAVEPOINTs); an error among them stays (the statement after it did not run)."""
    out = messages(reply)
    skipped = 0
    while skipped < count and out and out[0][0] == b"C":
        out.pop(0)
        skipped += 1
    return b"".join(wire.frame(t, payload) for t, payload in out) if skipped else reply


class ReplySkipper:
    """Drops the coordinator's answer to the setup Query (up to and including its ReadyForQuery) from the
    bytes relayed to the client, and with ``extra_parse`` the ParseComplete of a Parse the router sent again
    after it (a Query drops the unnamed statement)."""

    def __init__(self, extra_parse: bool = False) -> None:
        self._buf = b""
        self.done = False
        self.extra_parse = extra_parse
        self._ready = False  # the setup's ReadyForQuery came

    def feed(self, data: bytes) -> bytes:
        """What follows the skipped answer in ``data`` (b'' while it is still coming)."""
        if self.done:
            return data
        buf = self._buf + data
        pos = 0
        while len(buf) - pos >= 5:
            length = int.from_bytes(buf[pos + 1:pos + 5], "big")
            if len(buf) - pos < 1 + length:
                break
            type_byte = buf[pos:pos + 1]
            if self._ready:
                pos += 1 + length if type_byte == b"1" else 0
                self.done = True
                self._buf = b""
                return buf[pos:]
            pos += 1 + length
            if type_byte == b"Z" and self.extra_parse:
                self._ready = True
            elif type_byte == b"Z":
                self.done = True
                self._buf = b""
                return buf[pos:]
        self._buf = buf[pos:]
        return b""
