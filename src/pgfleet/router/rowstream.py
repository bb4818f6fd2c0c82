"""A plain scatter/gather read (no aggregate, no ORDER BY, no LIMIT: the shards' rows concatenated) streamed
to the client: each node's DataRow messages are handed on in the pieces they arrive in, cut at message
boundaries (:class:`.wire.MessageCutter`), so the router holds about one read per node however many rows
there are, and reading a worker pauses while the client cannot take more.

Nothing reaches the client before every node has sent its RowDescription: until then a node that cannot be
reached or refuses the client's role or privileges still lets the coordinator run the statement instead
(``None``), as the buffered read does (:mod:`.gather`). After that, rows from all nodes are interleaved, whole
messages at a time; an error of a shard ends the reply as PostgreSQL ends one (rows, then the
ErrorResponse), and the other nodes' rest is read and dropped so that their connections are idle again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

from . import protocol as p
from . import wire
from .backend import INSUFFICIENT_PRIVILEGE, BackendError, WorkerConnection, lost_in_flight
from .logical import Renames, renamed
from .multishard import MultiShardHost
from .rewrite import qualified

READY = p.ReadyForQuery("I").encode()
HOLD_BYTES = 256 << 10  # rows of a node held before every node has described them: then its reads pause


@dataclass
class _Node:
    node: str
    conn: WorkerConnection
    wrapped: bool  # SET ROLE …; query; RESET ROLE
    description: bytes | None = None  # its RowDescription message
    role_set: bool = False  # the SET ROLE's CommandComplete came
    rows_done: bool = False  # the query's CommandComplete came
    count: int = 0
    held: list[bytes] = field(default_factory=list)  # rows that came before every node had described them
    held_bytes: int = 0
    paused: bool = False  # its reads pause while HOLD_BYTES are held
    done: bool = False


def fitting_description(own: bytes, coordinator: bytes | None) -> bytes | None:
    """``coordinator`` (a RowDescription payload) when it describes ``own``'s columns with the same types and
    formats (then only the table oids, attribute numbers and type modifiers differ), else None."""
    if coordinator is None:
        return None
    theirs, ours = p.decode_backend(b"T", coordinator), p.decode_backend(b"T", own)
    if not isinstance(theirs, p.RowDescription) or not isinstance(ours, p.RowDescription) \
            or len(theirs.fields) != len(ours.fields) or any(
                a.type_oid != b.type_oid or a.format != b.format for a, b in zip(theirs.fields, ours.fields, strict=True)):
        return None
    return coordinator


class StreamedRead:
    """One run of a plain read over ``queries`` (node, SQL) on ``host``."""

    def __init__(self, host: MultiShardHost, queries: Sequence[tuple[str, str]], renames: Renames | None,
                 fall_back: bool, described: asyncio.Future[bytes | None] | None = None) -> None:
        self.host = host
        self.described = described  # the coordinator's RowDescription payload, on its way (MultiShardHost.described)
        self.queries = queries
        self.renames = renames
        self.fall_back = fall_back
        self.nodes: list[_Node] = []
        self.started = False  # the RowDescription went to the client: no falling back from here on
        self.error: bytes | None = None  # the first ErrorResponse payload of a shard
        self.role_refused = False
        self.lost: str | None = None  # a node whose connection broke
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(self) -> bytes | None:
        """The rest of the client's reply after what was streamed (CommandComplete or an ErrorResponse, then
        ReadyForQuery), or None when nothing was sent and the coordinator should run the statement."""
        conns = await asyncio.gather(*(self.host.worker(node) for node, _ in self.queries), return_exceptions=True)
        for (node, _), conn in zip(self.queries, conns, strict=True):
            if isinstance(conn, BaseException):
                if not isinstance(conn, BackendError):
                    raise conn
                self.host.drop_worker(node)
                return None
        opened = [c for c in conns if isinstance(c, WorkerConnection)]
        for (node, sql), conn in zip(self.queries, opened, strict=True):
            role = self.host.role_on(conn)
            state = _Node(node, conn, wrapped=role != conn.user)
            text = f"SET ROLE {qualified(role)};\n{sql}\n;\nRESET ROLE" if state.wrapped else sql
            self.nodes.append(state)
            try:
                conn.stream(p.Query(text).encode(), functools.partial(self._received, state))
            except BackendError:
                self._received(state, None, [], True)
        self.host.pace(opened)
        try:
            await self.finished
            if not self.started and self.described is not None:  # every node answered before the coordinator
                await asyncio.wait([self.described])
                self._start()
        finally:
            self.host.pace(())
        return self._ending()

    def _ending(self) -> bytes | None:
        if self.lost is not None:
            self.host.drop_worker(self.lost)
            return lost_in_flight(self.lost) if self.started else None
        if self.role_refused and not self.started:
            return None  # the coordinator decides
        if self.error is not None:
            error = p.decode_backend(b"E", self.error)
            if not isinstance(error, p.ErrorResponse):
                return wire.frame(b"E", self.error) + READY
            if self.fall_back and not self.started and error.sqlstate == INSUFFICIENT_PRIVILEGE:
                return None  # the coordinator refuses it in its own words
            if self.renames is not None:
                return p.ErrorResponse(renamed(error.fields, self.renames)).encode() + READY
            return wire.frame(b"E", self.error) + READY
        if not self.started:  # every node answered without rows or description: not a SELECT's reply
            return p.error_response("XX000", "pgfleet router: a worker's reply to a read had no row description",
                                    severity="ERROR").encode() + READY
        return p.CommandComplete(f"SELECT {sum(n.count for n in self.nodes)}").encode() + READY

    @property
    def _failed(self) -> bool:
        return self.error is not None or self.lost is not None or self.role_refused

    def _received(self, node: _Node, messages: bytes | None, marks: list[tuple[bytes, int, int]], last: bool) -> None:
        if messages is None:
            self.lost = self.lost or node.node
        else:
            wire.hand_on(messages, marks, lambda rows: self._rows(node, rows),
                         lambda type_byte, start, end: self._message(node, type_byte, messages, start, end))
        if self._failed:
            self._release()
        if last:
            node.done = True
            if all(n.done for n in self.nodes) and len(self.nodes) == len(self.queries) \
                    and not self.finished.done():
                self.finished.set_result(None)

    def _message(self, node: _Node, type_byte: bytes, messages: bytes, start: int, end: int) -> None:
        if type_byte == b"E":
            if node.wrapped and not node.role_set:
                self.role_refused = True
            elif self.error is None:
                self.error = messages[start + 5:end]
        elif type_byte == b"T":
            node.description = messages[start:end]
            self._start()
        elif type_byte == b"C":
            if node.wrapped and not node.role_set:
                node.role_set = True
            elif node.description is not None and not node.rows_done:
                tag = messages[start + 5:end - 1]
                node.count = int(tag[7:]) if tag.startswith(b"SELECT ") and tag[7:].isdigit() else 0
                node.rows_done = True
        # notices, parameter statuses and the ReadyForQuery are not handed on

    def _rows(self, node: _Node, rows: bytes) -> None:
        if self._failed:
            return
        if self.started:
            self.host.stream(rows)
        else:
            node.held.append(rows)
            node.held_bytes += len(rows)
            if node.held_bytes >= HOLD_BYTES and not node.paused:  # another node is slow to describe its rows
                node.paused = True
                node.conn.pause(True)

    def _release(self) -> None:
        """Drop what is held and read every node again (started, or failed: the rest is read and dropped)."""
        for n in self.nodes:
            n.held, n.held_bytes = [], 0
            if n.paused:
                n.paused = False
                n.conn.pause(False)

    def _start(self) -> None:
        if self.started or self._failed or len(self.nodes) != len(self.queries) \
                or any(n.description is None for n in self.nodes):
            return
        if self.described is not None and not self.described.done():
            self.described.add_done_callback(lambda _: self._start())
            return
        self.started = True
        first = self.nodes[0].description
        assert first is not None
        if self.described is not None and not self.described.cancelled():
            description = fitting_description(first[5:], self.described.result())
            first = first if description is None else wire.frame(b"T", description)
        held = [r for n in self.nodes for r in n.held]
        self._release()  # before the write below, which pauses every paced read again if the client is full
        head = self.host.stream_head
        self.host.stream(b"".join((first if head is None else head, *held)))
