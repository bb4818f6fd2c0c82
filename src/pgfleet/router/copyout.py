"""``COPY dist_table [(cols)] TO STDOUT`` run by the router: ``COPY shard TO STDOUT`` on every shard (the
nodes concurrently, the shards of one node in turn, each node in one read-only transaction under the
client's role), each shard's CopyData streamed to the client as it arrives, whole messages at a time (reading
a worker pauses while the client cannot take more); then CopyDone and ``COPY n`` with the total. With HEADER
the header line comes once, from a query of no rows."""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from . import protocol as p
from . import wire
from .backend import BackendError, WorkerConnection
from .multishard import MultiShardHost
from .routes import MultiShard
from .shardcopy import begin_everywhere, open_nodes, rollback, shard_failure
from .snapshot import RoutedTable
from ..topology.model import Shard

_I32 = struct.Struct("!i")
_TAIL = b"c\x00\x00\x00\x04C"  # CopyDone, then the CommandComplete's type byte


@dataclass(frozen=True)
class ShardOutput:
    response: bytes  # the CopyOutResponse message
    data: bytes  # the CopyData messages (and any notices among them), as they came
    rows: int


def copy_output(reply: bytes) -> ShardOutput | None:
    """A worker's reply to one COPY TO STDOUT (CopyOutResponse, CopyData…, CopyDone, CommandComplete,
    ReadyForQuery) cut without framing every row; None when it is anything else (an error)."""
    if reply[:1] != b"H" or reply[-6:-5] != b"Z" or len(reply) < 5:
        return None
    start = 1 + _I32.unpack_from(reply, 1)[0]
    done = reply.rfind(_TAIL, start, len(reply) - 6)
    if done < 0 or done + 6 + _I32.unpack_from(reply, done + 6)[0] != len(reply) - 6:
        return None
    tag = reply[done + 10:len(reply) - 7]
    if not tag.startswith(b"COPY ") or not tag[5:].isdigit():
        return None
    return ShardOutput(reply[:start], reply[start:done], int(tag[5:]))


@dataclass(frozen=True, eq=False)
class CopyOut(MultiShard):
    description = "COPY TO"

    table: RoutedTable
    shards: tuple[Shard, ...]
    statements: tuple[str, ...]  # COPY shard TO STDOUT, per shard
    header: str | None  # the header line's query (on the first shard's node), when HEADER was asked

    async def run(self, host: MultiShardHost) -> bytes | None:
        nodes = list(dict.fromkeys(s.node for s in self.shards))
        conns = await open_nodes(host, nodes)
        if conns is None or not await begin_everywhere(host, conns, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"):
            return None
        try:
            return await self._stream(host, conns)
        finally:
            await rollback(host, conns)  # read only: nothing to commit

    async def _stream(self, host: MultiShardHost, conns: dict[str, WorkerConnection]) -> bytes:
        run = _CopyRun(host, self)
        if self.header is not None:
            first = self.shards[0]
            reply = await _exchange(conns[first.node], self.header)
            out = copy_output(reply) if reply is not None else None
            if out is None:
                return shard_failure(reply, first.node, self.table, self.shards) + p.ReadyForQuery("I").encode()
            host.stream(out.response + out.data)
            run.started = True
        by_node: dict[str, list[tuple[Shard, str]]] = {}
        for shard, statement in zip(self.shards, self.statements, strict=True):
            by_node.setdefault(shard.node, []).append((shard, statement))
        host.pace(list(conns.values()))
        try:
            await asyncio.gather(*(run.node_shards(conns[node], items) for node, items in by_node.items()))
        finally:
            host.pace(())
        if run.failure is not None:
            return run.failure + p.ReadyForQuery("I").encode()
        if not run.started:  # no shard (cannot happen for a distributed table): still a COPY's reply
            host.stream(p.CopyOutResponse(0, ()).encode())
        return wire.frame(b"c", b"") + p.CommandComplete(f"COPY {run.rows}").encode() + p.ReadyForQuery("I").encode()


class _CopyRun:
    """The shards' COPY TO replies streamed to the client as they arrive, cut at message boundaries: the first
    CopyOutResponse, then every node's CopyData (whole messages, so rows stay whole); a shard's error or a
    lost connection ends it (the nodes' other replies are read to their end and dropped)."""

    def __init__(self, host: MultiShardHost, plan: CopyOut) -> None:
        self.host = host
        self.plan = plan
        self.started = False  # the CopyOutResponse went to the client
        self.rows = 0
        self.failure: bytes | None = None  # the client's error

    async def node_shards(self, conn: WorkerConnection, items: Sequence[tuple[Shard, str]]) -> None:
        for shard, statement in items:
            if self.failure is not None:
                return
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                conn.stream(p.Query(statement).encode(), functools.partial(self._received, shard, done), bulk=b"d")
            except BackendError:
                self._received(shard, done, None, [], True)
            await done

    def _received(self, shard: Shard, done: asyncio.Future[None], messages: bytes | None,
                  marks: list[tuple[bytes, int, int]], last: bool) -> None:
        if messages is None:
            self.host.drop_worker(shard.node)
            self._fail(shard, None)
        else:
            wire.hand_on(messages, marks, self._data,
                         lambda type_byte, start, end: self._message(shard, type_byte, messages[start:end]))
        if last and not done.done():
            done.set_result(None)

    def _message(self, shard: Shard, type_byte: bytes, message: bytes) -> None:
        if type_byte == b"H" and not self.started and self.failure is None:
            self.host.stream(message)
            self.started = True
        elif type_byte == b"E":
            self._fail(shard, message)
        elif type_byte == b"C":
            tag = message[5:-1]
            self.rows += int(tag[5:]) if tag.startswith(b"COPY ") and tag[5:].isdigit() else 0

    def _data(self, data: bytes) -> None:
        if self.failure is None:
            self.host.stream(data)

    def _fail(self, shard: Shard, error: bytes | None) -> None:
        if self.failure is None:
            self.failure = shard_failure(error, shard.node, self.plan.table, self.plan.shards)


async def _exchange(conn: WorkerConnection, statement: str) -> bytes | None:
    try:
        return await conn.exchange(statement)
    except BackendError:
        return None
