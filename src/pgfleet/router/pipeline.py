"""Pipelines in a router transaction (psycopg's ``executemany``, its ``pipeline()``, libpq pipeline mode):
several Parse/Bind/Execute groups before one Sync, split into one statement of the transaction each.

Inside a transaction block a pipeline is a sequence of statements: an error fails the transaction, the
server skips what follows up to the Sync and answers it with ReadyForQuery 'E'. So the router cuts the
pipeline after each Execute (at the next Parse, Bind or Flush), runs each piece as a batch of its own
with a Sync of the router's (on its worker, or on the coordinator when the transaction goes there, by
the rules of :mod:`.exttxn`), and drops the ReadyForQuery that answers the router's Sync, so the client
sees one ReadyForQuery, for its own Sync. After a piece failed, the rest is dropped up to the client's
Sync, which gets ReadyForQuery 'E', as on one server. Once the transaction moved to the coordinator, the
rest of the pipeline follows it there as it came. Outside a transaction a pipeline is one implicit
transaction (all or nothing): it goes to the coordinator whole, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .extended import ExtendedRouter

_CUT_AT = (b"P", b"B", b"H")  # a new statement begins (or the client waits for what came so far)


class ReadyStripper:
    """Drops the next ``pending`` ReadyForQuery messages from the bytes written to the client (whole
    messages: a message cut between two writes is kept until it is complete)."""

    def __init__(self) -> None:
        self.pending = 0
        self._buf = b""

    @property
    def active(self) -> bool:
        return bool(self.pending or self._buf)

    def feed(self, data: bytes) -> bytes:
        buf = self._buf + data if self._buf else data
        out: list[bytes] = []
        pos = start = 0
        while self.pending and len(buf) - pos >= 5:
            end = pos + 1 + int.from_bytes(buf[pos + 1:pos + 5], "big")
            if end > len(buf):
                break
            if buf[pos] == 90:  # 'Z'
                out.append(buf[start:pos])
                start = end
                self.pending -= 1
            pos = end
        if self.pending:
            out.append(buf[start:pos])
            self._buf = buf[pos:]
        else:
            out.append(buf[start:])
            self._buf = b""
        return b"".join(out)


class PipelineSplitter:
    """One session's pipelines in router transactions (see the module's docstring)."""

    def __init__(self, router: ExtendedRouter) -> None:
        self.router = router
        self.active = False  # pieces of the client's pipeline ran; its Sync ends it
        self.stripper = ReadyStripper()

    def before(self, type_byte: bytes) -> None:
        """Called before each client message of an extended-protocol session: cut the pipeline here?"""
        router = self.router
        if router.forwarding or router.discarding:
            return
        txn = router.session.transactions.txn
        if self.active:
            if txn is None:  # the transaction moved to the coordinator: the rest follows it as it comes
                router.forwarding = True  # up to and including the client's Sync
                router._to_coordinator(router.batch)
                router.batch = []
                self.active = False
                return
            if txn.failed:  # a piece failed: the rest is skipped up to the Sync, as on one server
                router.discarding = True
                router.batch, router.stateful = [], False
                self.active = False
                return
            if type_byte == b"S":
                self.active = False  # the last piece ends with the client's own Sync
                return
        if txn is None or type_byte not in _CUT_AT or not any(t == b"E" for t, _ in router.batch):
            return
        self.active = True
        self.stripper.pending += 1
        router.batch.append((b"S", b""))
        router._complete()
