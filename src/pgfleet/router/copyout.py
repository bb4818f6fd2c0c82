"""``COPY dist_table [(cols)] TO STDOUT`` run by the router: ``COPY shard TO STDOUT`` on every shard (the
nodes concurrently, the shards of one node in turn, each node in one read-only transaction under the
client's role), each shard's CopyData streamed to the client as its reply arrives, then CopyDone and
``COPY n`` with the total. With HEADER the header line comes once, from a query of no rows."""

from __future__ import annotations

import asyncio
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
        outputs: asyncio.Queue[tuple[Shard, bytes | None]] = asyncio.Queue(maxsize=len(conns))
        started = False
        rows = 0
        if self.header is not None:
            first = self.shards[0]
            reply = await _exchange(conns[first.node], self.header)
            out = copy_output(reply) if reply is not None else None
            if out is None:
                return shard_failure(reply, first.node, self.table, self.shards) + p.ReadyForQuery("I").encode()
            host.stream(out.response + out.data)
            started = True

        async def node_shards(node: str, statements: Sequence[tuple[Shard, str]]) -> None:
            for shard, statement in statements:
                reply = await _exchange(conns[node], statement)
                await outputs.put((shard, reply))
                if reply is None or copy_output(reply) is None:
                    return

        by_node: dict[str, list[tuple[Shard, str]]] = {}
        for shard, statement in zip(self.shards, self.statements, strict=True):
            by_node.setdefault(shard.node, []).append((shard, statement))
        tasks = [asyncio.ensure_future(node_shards(node, items)) for node, items in by_node.items()]
        try:
            for _ in self.shards:
                shard, reply = await outputs.get()
                out = copy_output(reply) if reply is not None else None
                if out is None:
                    if reply is None:
                        host.drop_worker(shard.node)
                    return shard_failure(reply, shard.node, self.table, self.shards) + p.ReadyForQuery("I").encode()
                host.stream(out.data if started else out.response + out.data)
                started = True
                rows += out.rows
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return wire.frame(b"c", b"") + p.CommandComplete(f"COPY {rows}").encode() + p.ReadyForQuery("I").encode()


async def _exchange(conn: WorkerConnection, statement: str) -> bytes | None:
    try:
        return await conn.exchange(statement)
    except BackendError:
        return None
