"""A Query the router sends straight to one worker, in autocommit (the hot path of routed point lookups
and writes): the :class:`RoutedQueries` side of :class:`~.session.ClientSession`.

On a pooled connection that is idle and logged in as the role the statement runs as, the Query goes out
with a callback and no task; otherwise a task first leases a connection (waiting for one when the pool is
exhausted) or runs the statement under the session's role (``SET ROLE``). A statement that could not be
sent goes to the coordinator; one that was sent and lost its connection is not run again (the client
gets an error). Replies are reshaped in the logical tables' names and oids (:mod:`.logical`)."""

from __future__ import annotations

import logging

from . import protocol as p
from . import wire
from .backend import BackendError, WorkerConnection, denied, lost_in_flight, vanished
from .keyfill import KeyFill, draw_keys, key_fill
from .logical import finish_routed
from .planhost import PlanHost
from .pool import PoolExhausted, exhausted_reply
from .routes import Shard
from .rowsource import RowSource, evaluate_rows
from .seqstate import SessionSequences
from .upstream import Phase

log = logging.getLogger(__name__)


class RoutedQueries(PlanHost):
    """Mixed into the session, which sets these attributes and defines ``resume`` and ``_from_client``."""

    phase: Phase
    topology_change: bool  # the session waits for a fresh topology snapshot after the coordinator's answer
    running_on: WorkerConnection | None  # the connection a routed statement runs on (for cancel requests)
    sequences: SessionSequences  # the keys drawn for this session (lastval, currval)

    def resume(self) -> None:
        raise NotImplementedError

    def _from_client(self, types: list[bytes], raw: bytes) -> None:
        raise NotImplementedError

    def _route_query(self, sql: str, data: bytes) -> bool:
        raise NotImplementedError

    @property
    def key_role(self) -> str | None:
        """The role keys are drawn and rows got as (None: a superuser, as the router's login)."""
        return None if self.superuser else self.user

    def used_keys(self, fill: KeyFill, keys: list[int]) -> None:
        """Keys drawn for one of this session's INSERTs: counted, and what its lastval() would give
        (:mod:`.seqstate`)."""
        self.context.stats.keys_drawn += fill.rows
        self.sequences.drew(fill.table.key_sequence, keys, fill.table.key_sequence_name)

    async def reworked(self, rework: KeyFill | RowSource, sql: str, bind: p.Bind | None = None,
                       param_types: tuple[int, ...] = ()) -> str | None:
        """``sql`` with the rows of its SELECT got first (:mod:`.rowsource`, with the client's ``bind`` values
        of the extended protocol) and its keys drawn (:mod:`.keyfill`); None when what it needs cannot be had
        (no privilege, no connection, an error): the statement then goes as it came."""
        routing = self.routing
        assert routing is not None
        fill = rework if isinstance(rework, KeyFill) else None
        text = sql
        if isinstance(rework, RowSource):
            rows = await evaluate_rows(self.leases, routing.topology.coordinator, rework, routing.type_names,
                                       self.key_role, bind, param_types)
            if rows is None:
                return None
            text = rework.insert_with(rows.values, rows.types)
            fill = key_fill(text, routing.topology, self.search_path)
            self.context.stats.rows_got_first += len(rows.values)
        if fill is not None:
            keys = await draw_keys(self.leases, routing.topology.coordinator, routing.keys, fill, self.key_role)
            if keys is None:
                return None
            text = fill.sql_with(text, keys)
            self.used_keys(fill, keys)
        return text

    async def _rework_then_route(self, rework: KeyFill | RowSource, sql: str, data: bytes) -> None:
        """An INSERT that leaves its distribution key to the key's sequence, or an INSERT … SELECT the router
        gets the rows of first (:meth:`reworked`): then it goes its way as if the client had sent it so."""
        text = await self.reworked(rework, sql) or sql
        if self.phase is Phase.CLOSED:
            return
        if text != sql:
            sql, data = text, p.Query(text).encode()
        self.busy = False
        if not self._route_query(sql, data):
            self._from_client([b"Q"], data)
        if not self.busy:
            self.resume()

    def _route(self, route: Shard, raw: bytes) -> None:
        conn = self.leases.free(route.node)
        if conn is None or self.role_on(conn) != conn.user:
            self.context.spawn(self._run_routed(route, raw))
        else:
            self._send_routed(conn, route, raw)

    def _send_routed(self, conn: WorkerConnection, route: Shard, raw: bytes) -> None:
        self.running_on = conn
        try:  # the hot path: no task, the reply's bytes go to the client as they came
            conn.send(p.Query(route.sql).encode(), lambda reply: self._routed_reply(route, raw, reply))
        except BackendError as exc:  # not sent: the coordinator runs it
            self.running_on = None
            self._drop_worker(route, exc)
            self._routed_done(None, raw)

    def _routed_reply(self, route: Shard, raw: bytes, reply: bytes | None) -> None:
        conn, self.running_on = self.running_on, None
        if reply is None:  # sent, and the connection broke: it may have run, so it is not run again
            self._drop_worker(route, BackendError("worker connection lost"))
            reply = lost_in_flight(route.node)
        elif conn is not None and conn.flagged and self._gone(reply):
            self._routed_done(None, raw)  # the coordinator runs it, with the table's current shards
            return
        elif conn is not None and (names := self.logical()) is not None:  # in the logical table's names and oids
            finish_routed(names, route, conn, reply, lambda out: self._routed_done(out, raw), self.spawn)
            return
        self._routed_done(reply, raw)

    def _gone(self, reply: bytes) -> bool:
        """Whether the routed statement's shard was dropped after the router read its topology
        (:func:`.backend.vanished`); then the session waits for a fresh snapshot after the coordinator answers."""
        if not vanished(wire.Framer().feed(reply)):
            return False
        self.topology_change = True
        return True

    def _drop_worker(self, route: Shard, exc: Exception) -> None:
        log.warning("routing to %s failed, sending the statement to the coordinator: %s", route.node, exc)
        self.drop_worker(route.node)

    async def _run_routed(self, route: Shard, raw: bytes) -> None:
        """Open the worker connection first, or run under another role than the login role."""
        reply: bytes | None = None
        try:
            conn = await self.worker(route.node)
        except PoolExhausted as exc:  # waited too long for a connection: not run
            self._routed_done(exhausted_reply(exc), raw)
            return
        except BackendError as exc:  # not sent: the coordinator runs it
            self._drop_worker(route, exc)
            self._routed_done(None, raw)
            return
        if self.role_on(conn) == conn.user:  # it waited for a connection: then as the hot path
            self._send_routed(conn, route, raw)
            return
        self.running_on = conn
        try:
            ok, messages = await conn.run_as(self.role_on(conn), route.sql)
            if ok and not denied(messages) and not vanished(messages):  # else the coordinator answers
                reply = b"".join(wire.frame(t, b) for t, b in messages)
                if (names := self.logical()) is not None:
                    reply = await names.shape(route, conn, reply, conn.flagged)
        except BackendError as exc:  # sent, and the connection broke: it may have run
            self._drop_worker(route, exc)
            reply = lost_in_flight(route.node)
        finally:
            self.running_on = None
        self._routed_done(reply, raw)

    def _routed_done(self, reply: bytes | None, raw: bytes) -> None:
        """A routed statement's reply to the client, or the statement to the coordinator when it could not
        run on the worker; then what the client sent meanwhile."""
        if self.phase is Phase.CLOSED:
            return
        if reply is not None:
            self.context.stats.routed += 1
            self._write(reply)
        else:
            self.context.stats.routing_fallbacks += 1
            self.context.stats.queries -= 1  # counted again on the way to the coordinator
            self._from_client([b"Q"], raw)
        self.resume()
