"""``COPY dist_table [(cols)] FROM STDIN`` (text or CSV) run by the router.

The router answers CopyInResponse itself and reads the client's CopyData (:class:`ClientCopy`, a
listener of the session). It cuts the data into whole records, reads only the key field of each
(:mod:`pgfleet.copyroute`, as ``load_copy`` does) and sends every shard its records unchanged, as one
``COPY shard FROM STDIN`` per shard and chunk, on the session's connection to the shard's node, inside
one transaction per node under the client's role; the nodes work concurrently, and the next chunk is cut
while they insert the previous one. At CopyDone: one node → COMMIT; several → two-phase commit with the
decision recorded on the coordinator (:mod:`.twophase`; :mod:`.recovery` finishes what a crash leaves).

Bad data fails on the shard that gets it, with the error one server gives (renamed to the logical table,
:func:`.shardcopy.logical_error`); CopyFail and a client that goes away roll everything back. Data the
fast split cannot decide (a NULL or non-decimal key, escapes that change record boundaries, carriage
returns, a key outside every shard …) is not guessed at: the shards' transactions are rolled back and the
client's original COPY runs on the coordinator with every byte received so far replayed (they are kept in
a spooled temporary file for that), so PostgreSQL's own parser decides and reports."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Protocol

from psycopg import sql

from . import protocol as p
from . import wire
from ..copyroute import RecordCutter, ShardTargets, drop_header
from ..copytext import CannotSplit
from ..topology.model import Shard
from .backend import BackendError, WorkerConnection
from .multishard import MultiShardHost
from .rewrite import qualified
from .routes import MultiShard
from .shardcopy import begin_everywhere, logical_error, open_nodes, rollback, shard_failure
from .snapshot import RoutedTable
from .twophase import TwoPhase, commit_prepared, first_error, prepare_everywhere, tags

log = logging.getLogger(__name__)

CHUNK_BYTES = 4 << 20  # cut and routed while the workers insert the previous chunk
HIGH_WATER = 16 << 20  # client bytes buffered before reading from the client pauses
SPOOL_IN_MEMORY = 4 << 20  # data kept for a replay on the coordinator, in memory up to this, then on disk
QUERY_CANCELED = "57014"

if TYPE_CHECKING:  # copyplan imports this module
    from .copyplan import CopyOptions


class CopySource(Protocol):
    """Where a COPY FROM's data comes from: the client (:class:`ClientCopy`), or rows another server sends."""

    end: str | None  # done | fail | unexpected | lost (None: more may come)
    fail_message: str

    async def take(self, want: int) -> bytes: ...

    async def drain(self) -> None: ...


class CopyDataBuffer:
    """CopyData payloads buffered as they come and handed out by :meth:`take`; a subclass stops what sends
    them while too much waits and lets it go on in :meth:`_resume`."""

    def __init__(self) -> None:
        self.parts: list[bytes | memoryview] = []
        self.size = 0
        self.end: str | None = None  # done | fail | unexpected | lost (None: more may come)
        self.fail_message = ""
        self.paused = False
        self._waiter: asyncio.Future[None] | None = None

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _resume(self) -> None:
        raise NotImplementedError

    async def take(self, want: int) -> bytes:
        """At least ``want`` bytes of CopyData (less once the data ended): everything buffered."""
        while self.size < want and self.end is None:
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        data = b"".join(self.parts)
        self.parts, self.size = [], 0
        self._resume()
        return data


class ClientCopy(CopyDataBuffer):
    """The client's COPY FROM STDIN messages, as the session hands its bytes over (a listener): CopyData
    payloads buffered, the end (CopyDone, CopyFail, another message, the client gone) remembered, and
    what follows the end given back to the session."""

    def __init__(self, host: MultiShardHost) -> None:
        super().__init__()
        self.host = host
        self.framer = wire.Framer(limit=wire.frontend_limit)

    def feed(self, data: bytes) -> None:
        if self.end is not None:
            self.host.hold(data)
            return
        if not data:
            self._finish("lost", [], b"")
            return
        try:
            messages = self.framer.feed(data)
        except wire.ProtocolViolation as exc:
            self._finish("unexpected", [], b"")
            self.fail_message = str(exc)
            return
        for i, (type_byte, payload) in enumerate(messages):
            if type_byte == b"d":
                self.parts.append(payload)
                self.size += len(payload)
            elif type_byte in (b"H", b"S"):
                continue  # as the server: Flush and Sync are ignored during COPY FROM STDIN
            else:
                if type_byte == b"f":
                    self.fail_message = payload[:-1].decode(errors="replace")
                else:
                    self.fail_message = f"unexpected message type 0x{type_byte[0]:02X} during COPY from stdin"
                end = {b"c": "done", b"f": "fail"}.get(type_byte, "unexpected")
                self._finish(end, messages[i + 1:], self.framer.take_buffer())
                return
        if self.size >= HIGH_WATER and not self.paused:
            self.paused = True
            self.host.pause_client()
        self._wake()

    def _finish(self, end: str, after: list[tuple[bytes, bytes]], rest: bytes) -> None:
        self.end = end
        self.host.listen(None)
        leftover = b"".join(wire.frame(t, payload) for t, payload in after) + rest
        if leftover:
            self.host.hold(leftover)
        self._resume()
        self._wake()

    def _resume(self) -> None:
        if self.paused:
            self.paused = False
            self.host.resume_client()

    async def drain(self) -> None:
        """Discard CopyData until the client ends the COPY (as the server does after an error)."""
        while self.end is None:
            await self.take(HIGH_WATER)
        self.parts, self.size = [], 0

    def close(self) -> None:
        if self.end is None:
            self.end = "lost"
            self.host.listen(None)
            self._resume()


@dataclass(frozen=True, eq=False)
class CopyIn(MultiShard):
    description = "COPY FROM"

    table: RoutedTable
    shards: tuple[Shard, ...]
    statements: tuple[str, ...]  # COPY shard (cols) FROM STDIN (options without HEADER), per shard
    columns: tuple[str, ...]  # as the client named them; () = every column of the table
    options: CopyOptions
    original: str  # the client's statement, for the coordinator when the data cannot be split here
    coordinator: str  # the coordinator's node name ('' unknown: no replay possible)

    async def run(self, host: MultiShardHost) -> bytes | None:
        nodes = list(dict.fromkeys(s.node for s in self.shards))
        if len(nodes) > 1 and host.twophase is None:
            return None  # no atomic commit over several nodes here: the coordinator loads it
        try:
            targets = ShardTargets(self.table.method, self.shards, self.table.key_type)
        except CannotSplit:
            return None
        conns = await open_nodes(host, nodes)
        if conns is None or not await begin_everywhere(host, conns, "BEGIN"):
            return None
        columns = self.columns or await self._copied_columns(conns[self.shards[0].node])
        if columns is None or str(self.table.key) not in columns:
            await rollback(host, conns)
            return None
        host.stream(p.CopyInResponse(0, (0,) * len(columns)).encode())
        reader = ClientCopy(host)
        host.listen(reader.feed)
        try:
            return await _Load(self, host, conns, reader, targets, columns.index(str(self.table.key))).run()
        except Exception:  # a bug: no node's transaction may stay open on the session's connections
            await rollback(host, conns)
            raise
        finally:
            reader.close()

    async def _copied_columns(self, conn: WorkerConnection) -> tuple[str, ...] | None:
        """The columns COPY without a column list reads (not generated ones), from the first shard."""
        first = self.shards[0]
        query = sql.SQL("SELECT attname FROM pg_attribute WHERE attrelid = {}::regclass AND attnum > 0 "
                        "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum").format(
            sql.Literal(sql.Identifier(first.shard_schema, first.shard_table).as_string(None))).as_string(None)
        try:
            reply = await conn.exchange(query)
        except BackendError:
            return None
        if first_error(reply) is not None:
            return None
        rows = [p.decode_backend(t, body) for t, body in wire.Framer().feed(reply) if t == b"D"]
        return tuple(r.values[0].decode() for r in rows if isinstance(r, p.DataRow) and r.values[0] is not None)


class _Load:
    """One COPY FROM STDIN in progress (the plan is immutable and shared: its state lives here)."""

    replays = True  # keeps what it read, for the coordinator to load when the data cannot be split here

    def __init__(self, plan: CopyIn, host: MultiShardHost, conns: dict[str, WorkerConnection], reader: CopySource,
                 targets: ShardTargets, column: int) -> None:
        self.plan = plan
        self.host = host
        self.conns = conns
        self.reader = reader
        self.targets = targets
        self.column = column
        self.sending: dict[str, asyncio.Task[tuple[int, bytes | None]]] = {}
        self.rows = 0
        self.spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 - closed by run()

    async def run(self) -> bytes:
        try:
            return await self._run()
        finally:
            for task in self.sending.values():
                task.cancel()
            self.spool.close()

    async def _run(self) -> bytes:
        fmt = self.plan.options.fmt
        cutter = RecordCutter(fmt)
        header = self.plan.options.header
        while True:
            block = await self.reader.take(CHUNK_BYTES)
            if self.replays:
                self.spool.write(block)
            end = self.reader.end
            if end is not None and end != "done":
                return await self._abandon()
            piece = cutter.feed(block) + (cutter.finish() if end == "done" else b"")
            try:
                if header and piece:
                    piece, header = drop_header(piece, fmt), False
                parts = self.targets.split(piece, self.column, fmt, len(self.plan.shards)) if piece else []
            except CannotSplit as why:
                return await self._via_coordinator(str(why))
            if parts and (failed := await self._send(parts)) is not None:
                return await self._failed(failed)
            if end == "done":
                break
        for node in list(self.sending):
            if (failed := await self._sent(node)) is not None:
                return await self._failed(failed)
        return await self._commit()

    # --- sending to the shards -------------------------------------------------------------------------
    async def _send(self, parts: list[bytes]) -> bytes | None:
        """Start each node's part of a chunk once its previous part is in; an error ends the load."""
        by_node: dict[str, list[int]] = {}
        for pos, part in enumerate(parts):
            if part:
                by_node.setdefault(self.plan.shards[pos].node, []).append(pos)
        for node, positions in by_node.items():
            if (failed := await self._sent(node)) is not None:
                return failed
            work = [(self.plan.statements[pos], parts[pos]) for pos in positions]
            self.sending[node] = asyncio.ensure_future(_copy_parts(self.conns[node], work))
        return None

    async def _sent(self, node: str) -> bytes | None:
        task = self.sending.pop(node, None)
        if task is None:
            return None
        rows, failure = await task
        self.rows += rows
        if failure is None:
            return None
        if not failure:
            self.host.drop_worker(node)
        return shard_failure(failure or None, node, self.plan.table, self.plan.shards)

    async def _failed(self, error: bytes) -> bytes:
        """A shard refused its data: the client gets the error now (as from one server, which then ignores
        the rest of the COPY data), everything is rolled back."""
        self.host.stream(error + p.ReadyForQuery("I").encode())
        await self._stop()
        await self.reader.drain()
        return b""

    async def _stop(self) -> None:
        for task in self.sending.values():
            task.cancel()
        await asyncio.gather(*self.sending.values(), return_exceptions=True)
        self.sending.clear()
        await rollback(self.host, self.conns)

    async def _abandon(self) -> bytes:
        await self._stop()
        if self.reader.end == "fail":
            message = f"COPY from stdin failed: {self.reader.fail_message}"
            return p.error_response(QUERY_CANCELED, message, severity="ERROR").encode() + p.ReadyForQuery("I").encode()
        if self.reader.end == "unexpected":
            return p.error_response(wire.PROTOCOL_VIOLATION, self.reader.fail_message,
                                    severity="ERROR").encode() + p.ReadyForQuery("I").encode()
        return b""  # the client is gone

    # --- the end ----------------------------------------------------------------------------------------
    def tag(self) -> str:
        return f"COPY {self.rows}"

    async def _commit(self) -> bytes:
        done = p.CommandComplete(self.tag()).encode() + p.ReadyForQuery("I").encode()
        if len(self.conns) == 1:
            [(node, conn)] = self.conns.items()
            try:
                reply: bytes | None = await conn.exchange("COMMIT")
            except BackendError:
                self.host.drop_worker(node)
                reply = None
            if reply is not None and tags(reply) == ["COMMIT"]:
                return done
            return shard_failure(reply, node, self.plan.table, self.plan.shards) + p.ReadyForQuery("I").encode()
        twophase = self.host.twophase
        assert twophase is not None  # checked before anything ran
        error = await commit_everywhere(self.host, twophase, self.conns)
        return error + p.ReadyForQuery("I").encode() if error is not None else done

    # --- data the split cannot decide ---------------------------------------------------------------------
    async def _via_coordinator(self, why: str) -> bytes:
        """Roll the shards back and run the client's COPY on the coordinator with every byte so far."""
        await self._stop()
        log.info("COPY into %s goes through the coordinator: %s", self.plan.table.name, why)
        if not self.plan.coordinator:
            await self.reader.drain()
            return p.error_response("0A000", f"pgfleet router: cannot route this COPY data ({why}); nothing was loaded",
                                    severity="ERROR", hint="run the COPY on the coordinator").encode() + p.ReadyForQuery("I").encode()
        try:
            conn = await self.host.worker(self.plan.coordinator)
            role = self.host.role_on(conn)
            if role != conn.user:
                await conn.exchange(f"SET ROLE {qualified(role)}")
            reply = await self._replay(conn)
            if role != conn.user:
                await conn.exchange("RESET ROLE")
        except BackendError:
            self.host.drop_worker(self.plan.coordinator)
            await self.reader.drain()
            return p.error_response("08006", "pgfleet router: the connection to the coordinator was lost during COPY; "
                                    "it may or may not have taken effect", severity="ERROR").encode() + p.ReadyForQuery("I").encode()
        out = []
        for type_byte, body in wire.Framer().feed(reply):
            if type_byte == b"E":  # postgres_fdw's error names the shard table
                error = p.decode_backend(type_byte, body)
                assert isinstance(error, p.ErrorResponse)
                out.append(logical_error(error, self.plan.table, self.plan.shards))
            elif type_byte not in (b"G", b"S"):  # the client had the router's CopyInResponse
                out.append(wire.frame(type_byte, body))
        return b"".join(out)

    async def _replay(self, conn: WorkerConnection) -> bytes:
        reader = self.reader
        assert isinstance(reader, ClientCopy)  # the data is the client's
        future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()

        def answered(reply: bytes | None) -> None:
            if not future.done():
                future.set_result(reply)

        conn.send(p.Query(self.plan.original).encode(), answered)
        transport = conn.transport
        assert transport is not None
        self.spool.seek(0)
        while piece := self.spool.read(CHUNK_BYTES):
            transport.write(wire.frame(b"d", piece))
        while reader.end is None:
            transport.write(wire.frame(b"d", await reader.take(CHUNK_BYTES)))
        if reader.parts:
            transport.write(wire.frame(b"d", await reader.take(0)))
        if reader.end == "done":
            transport.write(wire.frame(b"c", b""))
        else:
            transport.write(p.CopyFail(reader.fail_message or "the client went away").encode())
        reply = await future
        if reply is None:
            raise BackendError("coordinator connection lost")
        return reply


async def _copy_parts(conn: WorkerConnection, work: list[tuple[str, bytes]]) -> tuple[int, bytes | None]:
    """The COPYs of one node's shard parts as one Query of several statements, each followed by its data
    (the server reads a COPY's data when it reaches it; after an error it skips the rest of the Query and
    ignores the data still coming): one round trip. (rows loaded, None when all went in, else the failing
    reply or b'' when the connection broke)."""
    query = p.Query(";\n".join(statement for statement, _ in work)).encode()
    request = query + b"".join(wire.frame(b"d", part) + wire.frame(b"c", b"") for _, part in work)
    try:
        reply = await conn.roundtrip(request)
    except BackendError:
        return 0, b""
    if first_error(reply) is not None:
        return 0, reply
    return sum(int(tag[5:]) for tag in tags(reply) if tag.startswith("COPY ")), None


async def commit_everywhere(host: MultiShardHost, twophase: TwoPhase, conns: dict[str, WorkerConnection]) -> bytes | None:
    """Two-phase commit over the nodes (their transactions are idle): None when committed (or decided
    committed and left to recovery), else the client's error (everything rolled back or left to recovery)."""
    with twophase.gids.issued() as gid:
        return await _prepare_and_commit(host, twophase, conns, gid)


async def _prepare_and_commit(host: MultiShardHost, twophase: TwoPhase, conns: dict[str, WorkerConnection],
                              gid: str) -> bytes | None:
    failed = await prepare_everywhere(gid, conns, host.drop_worker)
    if failed is not None:
        return failed.error.encode() if failed.error is not None else p.error_response(
            "08006", "pgfleet router: the COPY could not be prepared on every worker; nothing was loaded",
            severity="ERROR", hint="retry the COPY").encode()
    return await commit_prepared(twophase, gid, conns, host.drop_worker, what="COPY")
