"""What a session offers the statements the router runs itself over several shards (the
:class:`~.multishard.MultiShardHost` side of :class:`~.session.ClientSession`): running a plan, the
client's bytes for a plan that reads them (COPY FROM), statements on the client's own coordinator
connection, and the two-phase commit pieces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, cast

from . import protocol as p
from . import wire
from .context import DatabaseRoute, RouterContext
from .extended import ExtendedRouter
from .backend import BackendError, WorkerConnection
from .logical import LogicalNames, names_for
from .pool import Leases, PoolExhausted
from .refpart import CoordinatorPart
from .routes import MultiShard, Shard
from .routing import Routing
from .multishard import run_guarded
from .twophase import TwoPhase
from .upstream import ServerSide

if TYPE_CHECKING:
    from .multishard import MultiShardHost


DESCRIBE_SECONDS = 1.0  # the coordinator's RowDescription of a multi-shard read, at most this late


class PlanHost:
    """Mixed into the session, which sets these attributes and defines ``_write`` and ``_routed_done``."""

    context: RouterContext
    client: asyncio.Transport | None
    server: ServerSide | None  # the coordinator connection
    db_route: DatabaseRoute | None  # the routing of the session's database
    extended: ExtendedRouter
    held: list[bytes]  # client bytes that arrived while a statement ran
    listener: Callable[[bytes], None] | None  # a running plan that reads the client's bytes

    user: str  # the client's login role
    search_path: tuple[str, ...]  # the session's effective schemas
    superuser: bool  # ... is a superuser (reported by the coordinator)
    leases: Leases  # the worker connections the session holds
    busy: bool  # a statement runs in the router: client bytes wait
    streaming: bool  # the running plan's rows may be streamed (a simple Query, or see :mod:`.extmulti`)
    stream_head: bytes | None  # sent before streamed rows instead of their RowDescription
    streamed: bool  # the running plan sent part of its reply with ``stream``
    paced: Sequence[WorkerConnection]  # connections whose reading pauses while the client's buffer is full
    client_full: bool  # the client's transport asked to pause writing
    describing = False  # the running plan answers a simple Query: its RowDescription should be the coordinator's

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self.busy = True
        self.context.spawn(coro)

    def wait_for_answer(self) -> None:
        self.busy = True

    async def worker(self, node: str) -> WorkerConnection:
        """A pooled connection to ``node``'s primary that this session holds until it is idle again."""
        return await self.leases.lease(node)

    def drop_worker(self, node: str) -> None:
        self.leases.drop(node)

    @property
    def routing(self) -> Routing | None:
        """The routing of the session's database (None: relayed)."""
        return self.db_route.routing if self.db_route is not None else None

    def logical(self) -> LogicalNames | None:
        """Shard names and oids → the logical tables' (:mod:`.logical`), for routed replies."""
        return names_for(self.db_route.routing.topology) if self.db_route is not None else None

    def coordinator_part(self, sql: str) -> tuple[Shard, CoordinatorPart] | None:
        """A reference-table write that the coordinator may run as a participant of the session's router
        transaction (:mod:`.refpart`): its route there and what it writes; None otherwise."""
        routing = self.routing
        if routing is None or not routing.topology.coordinator:
            return None
        write = routing.cache.reference_write(sql, routing.topology, self.search_path)
        return None if write is None else (Shard(routing.topology.coordinator, -1, (), sql), write)

    def role_on(self, conn: WorkerConnection) -> str:
        """The role a routed statement runs as: the client's, or for a superuser the router's login (the
        workers' copies of coordinator roles are not superusers)."""
        return conn.user if self.superuser else self.user

    def _write(self, data: bytes) -> None:
        raise NotImplementedError

    def _routed_done(self, reply: bytes | None, raw: bytes) -> None:
        raise NotImplementedError

    async def _run_multishard(self, plan: MultiShard, raw: bytes) -> None:
        """A statement the router runs itself over several shards (:mod:`.multishard`)."""
        self.streaming = self.describing = True
        try:
            reply = await run_guarded(plan, cast("MultiShardHost", self))  # the session is the whole host
        finally:
            self.streaming = self.describing = False
        self._routed_done(reply, raw)

    async def described(self, sql: str) -> bytes | None:
        return await self.coordinator_description(sql) if self.describing else None

    async def coordinator_description(self, sql: str) -> bytes | None:
        """The RowDescription payload the coordinator gives ``sql`` (Parse and Describe of the unnamed statement
        on a pooled connection with the session's settings: nothing runs), or None."""
        routing = self.routing
        if routing is None or not routing.topology.coordinator:
            return None
        request = p.Parse("", sql, ()).encode() + p.Describe("S", "").encode() + p.Sync().encode()
        try:  # not worth a wait for a free connection: the result's own description will do
            reply = await asyncio.wait_for(self.leases.roundtrip_once(routing.topology.coordinator, request),
                                           DESCRIBE_SECONDS)
        except (BackendError, PoolExhausted, TimeoutError):
            return None
        return next((payload for type_byte, payload in wire.Framer().feed(reply) if type_byte == b"T"), None)

    # --- flow control: the client's transport calls pause_/resume_writing --------------------------------
    def pause_writing(self) -> None:
        self._client_full(True)

    def resume_writing(self) -> None:
        self._client_full(False)

    def _client_full(self, full: bool) -> None:
        """Stop (or resume) reading what would be written to the client: the coordinator's replies and the
        paced worker connections."""
        self.client_full = full
        if self.server and self.server.transport:
            (self.server.transport.pause_reading if full else self.server.transport.resume_reading)()
        for conn in self.paced:
            conn.pause(full)

    def pause_client(self) -> None:
        if self.client:
            self.client.pause_reading()

    def resume_client(self) -> None:
        if self.client:
            self.client.resume_reading()

    def stream(self, data: bytes) -> None:
        self.streamed = True
        self._write(data)

    def pace(self, conns: Sequence[WorkerConnection]) -> None:
        for conn in self.paced:
            if conn not in conns:
                conn.pause(False)
        self.paced = conns
        if self.client_full:
            for conn in conns:
                conn.pause(True)

    async def coordinator(self, sql: str) -> list[tuple[bytes, bytes]]:
        reply: asyncio.Future[list[tuple[bytes, bytes]]] = asyncio.get_running_loop().create_future()
        self.extended.capture_reply(p.Query(sql).encode(), reply.set_result)
        return await reply

    def listen(self, listener: Callable[[bytes], None] | None) -> None:
        self.listener = listener
        if listener is not None:
            held, self.held = self.held, []
            for i, chunk in enumerate(held):
                if self.listener is not listener:  # it stopped listening: the rest stays held, in order
                    self.held.extend(held[i:])
                    break
                listener(chunk)

    def hold(self, data: bytes) -> None:
        self.held.insert(0, data)

    @property
    def twophase(self) -> TwoPhase | None:
        return self.db_route.twophase if self.db_route is not None else None
