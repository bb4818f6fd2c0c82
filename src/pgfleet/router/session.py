"""One client connection of the router.

Phases: STARTUP (SSLRequest/GSSENCRequest answered 'N', a CancelRequest forwarded, the startup message
kept), CONNECTING (a connection to the coordinator opens; what the client sends meanwhile is kept),
AUTH (the startup message and the whole authentication exchange relayed: the coordinator decides, the
router stores no password; the coordinator's BackendKeyData is replaced by the router's own key), then
RELAY from the first ReadyForQuery on: server bytes go to the client untouched, client bytes are framed
(to count statements and enforce message limits) and sent on as they came.

Both sides are asyncio protocols (no stream wrappers, one write per chunk) with flow control: when one
side's send buffer is full, reading from the other side pauses.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import cast

from . import ddl, reconnect
from . import protocol as p
from . import wire
from .keyfill import KeyFill, cached_keys
from .rowsource import RowSource
from .seqstate import SessionSequences
from .routes import Coordinator, MultiShard, Shard
from .backend import WorkerConnection
from .backend import CANNOT_CONNECT
from .context import Address, RouterContext
from .extended import ExtendedRouter
from .exttxn import WithParse
from .keys import CancelKey
from .routedquery import RoutedQueries
from .pool import Leases
from .reauth import ScramRecord
from .routing import READY_IDLE, Decision, Routing, deallocates_all, decide, may_change, parse_search_path
from .settings import SessionSettings, SettingChange
from .txn import TransactionControl
from .txnreply import ReplySkipper
from .upstream import Phase, ServerSide, coordinator_lost

log = logging.getLogger(__name__)

class ClientSession(RoutedQueries, SessionSettings, asyncio.Protocol):
    def __init__(self, context: RouterContext) -> None:
        self.context = context
        self.phase = Phase.STARTUP
        self.client: asyncio.Transport | None = None
        self.server: ServerSide | None = None
        self.framer = wire.Framer(initial=True, limit=wire.frontend_limit)
        self.server_framer = wire.Framer()
        self.startup: bytes = b""
        self.pending: list[bytes] = []
        self.address: Address | None = None
        self.client_key: CancelKey | None = None
        self.server_key: CancelKey | None = None
        self.user = ""
        self.database = ""
        # routing to workers (simple protocol, autocommit, single shard)
        self.startup_params: tuple[tuple[str, str], ...] = ()
        self.reported: dict[str, str] = {}  # ParameterStatus of the coordinator at startup
        self.search_path: tuple[str, ...] = ()
        self.db_route = context.main  # the routing of the session's database (set again when it is known)
        self.pinned = context.routing is None  # True: everything goes to the coordinator from now on
        self.busy = False  # a routed statement is running: client bytes wait in ``held``
        self.streaming = False  # the running plan's rows may be streamed (:meth:`PlanHost._run_multishard`)
        self.stream_head: bytes | None = None
        self.streamed = False
        self.paced: Sequence[WorkerConnection] = ()  # worker connections paused while the client's buffer is full
        self.client_full = False
        self.held: list[bytes] = []
        self.listener: Callable[[bytes], None] | None = None  # a running plan that reads the client's bytes
        self.outstanding = 0  # Query and Sync messages sent to the coordinator and not yet answered
        self.leases = Leases(context.pools)  # worker connections held until the session is idle again
        self.running_on: WorkerConnection | None = None  # the worker running this session's routed statement
        self.superuser = False  # the login role is a superuser (reported by the coordinator)
        self.extended = ExtendedRouter(self)  # extended-protocol batches, from the first one on
        self.transactions = TransactionControl(self, context.stats, context.twophase)
        self.coordinator_txn = False  # the router began a transaction on the coordinator: relay until it ends
        self.skipper: ReplySkipper | None = None  # drops the coordinator's answer to that BEGIN
        self.partial: list[tuple[bytes, list[bytes]]] = []  # reads of messages not yet whole, in a transaction
        self.scram = ScramRecord()  # the client's login as relayed, to log in again (reconnect.py)
        self.terminating = False  # the client sent Terminate
        self.reply_shaper: Callable[[bytes], bytes] | None = None  # the next answer of the transaction machine
        self.rewriter: ddl.ReplyRewriter | None = None  # reshapes the reply to a Query that router/ddl.py rewrote
        self.role_change = False  # sent a statement that may change roles: copy them when it has ended
        self.topology_change = False  # ... that may change the distributed tables: routing waits for a new snapshot
        self.session_settings: dict[str, str] = {}  # SET values carried to routed statements (settings.py)
        self.pending_setting: SettingChange | None = None  # a SET sent to the coordinator, not answered yet
        self.setting_reply: list[bytes] = []
        self.settings_changed = False  # a SET ran on the coordinator: a new backend there would lack it
        self.sequences = SessionSequences()  # the keys the router drew for this session (lastval, currval)

    # --- client side ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)
        self.context.stats.clients_total += 1
        self.context.stats.clients_active += 1

    def data_received(self, data: bytes) -> None:
        try:
            if self.phase is Phase.STARTUP:
                self._startup(data)
            elif self.phase is not Phase.CLOSED:
                roles, topology = may_change(data)
                if roles:
                    self.role_change = True
                    self.context.roles_changed(refresh=False)
                if topology:
                    self.topology_change = True
                if self.busy:
                    (self.listener or self.held.append)(data)
                    return
                whole = self.framer.at_boundary  # this chunk starts a message (checked with the end below)
                if not self.pinned and self.phase is Phase.RELAY and self.extended.takes(data, whole):
                    self.extended.client_data(data)
                    return
                types = self.framer.scan(data)
                if self.partial or (self.transactions.txn is not None and whole and not self.framer.at_boundary):
                    self.partial.append((data, types))  # inside a transaction messages are handled whole
                    if not self.framer.at_boundary:
                        return
                    data, types, whole = b"".join(d for d, _ in self.partial), [t for _, ts in self.partial for t in ts], True
                    self.partial.clear()
                if types == [b"Q"] and self.sequences.known and whole and self.framer.at_boundary:
                    answered = self.sequences.answered(data[5:-1].decode(errors="replace"))
                    data = data if answered is None else p.Query(answered).encode()  # lastval(): seqstate.py
                if not self.pinned and self.phase is Phase.RELAY and self._try_route(types, data, whole):
                    return
                self._from_client(types, data)
        except wire.ProtocolViolation as exc:
            self.context.stats.protocol_errors += 1
            self.refuse(exc.sqlstate, str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.context.stats.clients_active -= 1
        if self.client_key is not None:
            self.context.sessions.pop(self.client_key.process_id, None)
            self.context.keys.release(self.client_key.process_id)
        self.leases.close()
        if self.listener is not None:
            self.listener(b"")
        self._close()

    def _startup(self, data: bytes) -> None:
        messages = self.framer.feed(data)
        while messages and self.phase is Phase.STARTUP:
            [(_, payload)] = messages
            self._initial(wire.decode_initial(payload), payload)
            if self.phase is Phase.STARTUP:
                messages = self.framer.feed(b"")
        if self.phase is Phase.CONNECTING and self.framer.buffered:
            rest = self.framer.take_buffer()
            self._from_client(self.framer.scan(rest), rest)

    def _initial(self, message: wire.InitialMessage, payload: bytes) -> None:
        if isinstance(message, wire.SSLRequest | wire.GSSENCRequest):
            self._write(b"N")  # no TLS / GSS encryption (yet): the client goes on in plain text
            self.framer.expect_initial()
        elif isinstance(message, wire.CancelRequest):
            self.context.cancel(message)
            self.phase = Phase.CLOSED
            self._close()
        else:
            self.startup = wire.int32(len(payload) + 4) + payload
            self.user = message.get("user") or ""
            self.database = message.get("database") or self.user
            self.startup_params = message.parameters
            if self.context.main is None or message.get("replication") is not None:
                self.pin()
            self.framer.expect_typed()
            self.phase = Phase.CONNECTING
            self.context.spawn(self._connect())

    def _from_client(self, types: list[bytes], raw: bytes) -> None:
        self.sequences.relayed(types, raw)  # it may call nextval there (seqstate.py)
        if types == [b"Q"]:
            raw = self._translated(raw)
        stats = self.context.stats
        for type_byte in types:
            if type_byte == b"Q":
                stats.queries += 1
                self.outstanding += 1
            elif type_byte == b"E":
                stats.executes += 1
            elif type_byte == b"S":
                self.outstanding += 1
            elif type_byte == b"X":
                self.terminating = True  # the coordinator closing the connection now is no news
        if self.phase is not Phase.RELAY and b"p" in types:  # the login, kept to log in again (reconnect.py)
            for type_byte, payload in wire.Framer().feed(raw):
                if type_byte == b"p":
                    self.scram.client_message(payload)
        if self.phase is Phase.CONNECTING:
            self.pending.append(raw)
        elif self.server and self.server.transport:
            self.server.transport.write(raw)

    def _translated(self, raw: bytes) -> bytes:
        """A Query declaring foreign keys of distributed tables, as pgfleet's SQL API (router/ddl.py)."""
        routing = self.routing
        if routing is not None and self.phase is Phase.RELAY:
            found = ddl.rewrite_query(raw, routing.topology, self.search_path)
            if found is not None:
                raw, self.rewriter = found
        return raw

    # --- server side ------------------------------------------------------------------------------
    async def _connect(self) -> None:
        # the database's routing, read from its catalog on its first session
        route = None if self.pinned else await self.context.route_for(self.database)
        if route is None:
            self.db_route = None
            self.pin()
        elif route is not self.db_route:
            self.db_route = route
            self.leases = Leases(route.pools)
            self.transactions = TransactionControl(self, self.context.stats, route.twophase)
        loop = asyncio.get_running_loop()
        host, port = self.address = self.context.upstream()
        try:
            _, server = await loop.create_connection(lambda: ServerSide(self), host, port)
        except OSError as exc:
            self.refuse(CANNOT_CONNECT, f"pgfleet router: cannot connect to the coordinator at {host}:{port}: "
                        f"{exc.strerror or exc}", hint="start the cluster ('pgfleet up') or check its state with 'pgfleet status'")
            return
        if self.phase is Phase.CLOSED:
            assert server.transport is not None
            server.transport.close()
            return
        self.server = server
        self.phase = Phase.AUTH
        assert server.transport is not None
        server.transport.write(self.startup + b"".join(self.pending))
        self.pending.clear()

    def from_server(self, data: bytes) -> None:
        if self.role_change and READY_IDLE in data:
            self.role_change = False
            self.context.roles_changed(refresh=True)
        if self.topology_change and READY_IDLE in data and self.routing is not None:
            self.topology_change = False  # committed or rolled back: what the client sends next waits for it
            self.spawn(self._fresh_topology(self.routing))
        if self.phase is Phase.RELAY:
            if self.extended.capture is not None:  # the router's own exchange for a batch
                rest = self.extended.server_data(data)
                if not rest:
                    return
                data = rest
            if self.skipper is not None:
                data = self.skipper.feed(data)
                if self.skipper.done:
                    self.skipper = None
                if not data:
                    return
            if self.rewriter is not None:
                data = self.rewriter.feed(data)
                if self.rewriter.done:
                    self.rewriter = None
                if not data:
                    return
            if reconnect.holds_back(self, data):  # the backend of an idle session says it ends: carried over
                return
            if b"search_path\x00" in data:  # SET search_path: the names the DDL rewrite resolves follow it
                for text in wire.search_path_statuses(data):
                    self.reported["search_path"], self.search_path = text, parse_search_path(text, self.user)
            if not self.pinned:  # follow ReadyForQuery: routing needs an idle session
                try:
                    types = self.server_framer.scan(data)
                    self.outstanding = max(0, self.outstanding - types.count(b"Z"))
                    self.extended.statements.replies(types)
                    if self.pending_setting is not None:
                        self.setting_reply.append(data)
                        if b"Z" in types:
                            self._setting_answered()
                except wire.ProtocolViolation:
                    self.pin()
            self._write(data)
            return
        try:
            messages = self.server_framer.feed(data)
            out: list[bytes] = []
            for type_byte, payload in messages:
                if type_byte == b"R":
                    self.scram.server_message(payload)
                if type_byte == b"K" and self.phase is Phase.AUTH:
                    out.append(self._replace_key(payload))
                    continue
                out.append(wire.frame(type_byte, payload))
                if type_byte == b"S" and self.phase is Phase.AUTH:
                    status = p.decode_backend(type_byte, payload)
                    assert isinstance(status, p.ParameterStatus)
                    self.reported[status.name] = status.value
                if type_byte == b"Z":
                    self.phase = Phase.RELAY  # everything after the first ReadyForQuery goes through untouched
                    self._relay_started(payload)
            if self.phase is Phase.RELAY:
                out.append(self.server_framer.take_buffer())
            self._write(b"".join(out))
        except wire.ProtocolViolation as exc:
            log.warning("invalid message from the coordinator: %s", exc)
            self.refuse(wire.PROTOCOL_VIOLATION, f"pgfleet router: invalid message from the coordinator: {exc}")

    # --- routing -----------------------------------------------------------------------------------
    def pin(self) -> bool:
        if not self.pinned:
            self.pinned = True
            if self.phase is Phase.RELAY:
                self.context.stats.pinned_sessions += 1
        return False

    def _relay_started(self, ready: bytes) -> None:
        self.server_framer.last_status = ready[:1]
        self.search_path = parse_search_path(self.reported.get("search_path", ""), self.user)
        if self.reported.get("client_encoding") != "UTF8" or self.reported.get("standard_conforming_strings") != "on":
            self.pin()
        # Any role is routed: its roles, memberships and privileges are on the workers (sql/grants.sql)
        # and tables with row-level security are not routed. A superuser runs as the router's login.
        self.superuser = self.reported.get("is_superuser") == "on"
        self.leases.settings = self._worker_settings()  # the pooled connections this session may use

    def _try_route(self, types: list[bytes], data: bytes, starts_message: bool) -> bool:
        """Send one Query straight to a worker when it is provably single-shard and the session is idle
        and stateless; keep the session on the coordinator from the first message that may carry state."""
        routing = self.routing
        if types == [b"X"] or not types:
            return False
        if routing is None or types != [b"Q"] or not starts_message or not self.framer.at_boundary \
                or self.outstanding:
            return self.transactions.unsupported() or self.pin()  # extended protocol, COPY, pipelining
        if self.server_framer.last_status != b"I":
            if self.coordinator_txn:
                return False  # a transaction the router began on the coordinator: it ends there
            return self.pin()
        self.coordinator_txn = False
        try:
            sql = data[5:-1].decode(errors="strict" if self.transactions.txn is None else "replace")
        except UnicodeDecodeError:
            return False
        if deallocates_all(sql):  # psycopg's after a ROLLBACK: the session is not pinned
            return self.extended.txns.deallocate_all(sql, data)
        rework = routing.cache.insert_rework(sql, routing.topology, self.search_path)
        if rework is not None and (self.superuser or routing.roles_current) and self.fills_keys(rework):
            if not isinstance(rework, KeyFill) or (keys := cached_keys(routing.keys, rework, self.key_role)) is None:
                self.spawn(self._rework_then_route(rework, sql, data))  # then _route_query with the new text
                return True
            self.used_keys(rework, keys)  # from the process's cache: no round trip, no task
            sql = rework.sql_with(sql, keys)
            data = p.Query(sql).encode()
        return self._route_query(sql, data)

    def fills_keys(self, rework: KeyFill | RowSource | None = None) -> bool:
        """Whether an INSERT that leaves its key to a sequence gets its keys here (:mod:`.keyfill`), and an
        INSERT … SELECT of constants its rows (:mod:`.rowsource`): in autocommit, as a transaction's first
        statement (the transaction then runs on the workers: ORMs begin with such INSERTs, and what they send
        next — SQLAlchemy's multi-row INSERT with parameters, Django's bulk_create — is reworked the same
        way), and in a transaction that wrote on workers (where the coordinator could not run it); not in a
        transaction that only read on workers, which the coordinator may still take. An INSERT … SELECT that
        reads tables (``rework``) only in autocommit: in a transaction its SELECT would not see the
        transaction's own writes."""
        txn = self.transactions.txn
        if self.routing is None or not self.routing.topology.coordinator:
            return False
        if isinstance(rework, RowSource) and rework.reads:
            return txn is None
        return txn is None or (not txn.failed and (not txn.participants or txn.has_written()))

    def _route_query(self, sql: str, data: bytes) -> bool:
        """The Query ``sql`` (``data``) of an idle session: the transaction's, routed, or (False) the coordinator's."""
        routing = self.routing
        assert routing is not None
        if self.transactions.handle(sql, data):
            self.context.stats.queries += 1
            return True
        if self.transactions.txn is None and self.follow_setting(sql):
            return False
        try:
            decision = decide(sql, routing.topology, self.search_path, routing.cache)
        except Exception:  # a bug in analysis must not lose the client's statement: the coordinator runs it
            log.exception("routing analysis failed; the session stays on the coordinator")
            self.pin()
            return False
        if not decision.keeps_state:
            self.pin()
            return False
        if not isinstance(decision.route, Shard | MultiShard):
            return False
        if not self.superuser and not routing.roles_current:
            return False  # the workers do not have the coordinator's roles yet
        self.busy = True
        self.context.stats.queries += 1
        if isinstance(decision.route, MultiShard):
            self.spawn(self._run_multishard(decision.route, data))
        else:
            self._route(decision.route, data)
        return True

    # --- hooks of the transaction state machine (txn.Host) -------------------------------------------------
    def route(self, sql: str) -> Decision | None:
        routing = self.routing
        assert routing is not None
        if not self.superuser and not routing.roles_current:
            return Decision(Coordinator("the workers do not have the coordinator's roles yet"), True)
        try:
            return decide(sql, routing.topology, self.search_path, routing.cache)
        except Exception:
            log.exception("routing analysis failed; the statement goes to the coordinator")
            return None

    def to_coordinator(self, setup: str, raw: bytes) -> None:
        self.sequences.forget()  # the statement may call nextval there
        self.skipper = ReplySkipper(extra_parse=isinstance(raw, WithParse))
        self.coordinator_txn = True
        self.outstanding += 1  # the setup's ReadyForQuery is not counted
        self.reply_shaper = None  # the coordinator answers
        if self.extended.active:  # the prepared statements the batch creates or closes there
            for type_byte, payload in wire.Framer().feed(raw):
                self.extended.statements.sent(type_byte, payload)
        if raw[:1] == b"Q" and wire.Framer().scan(raw) == [b"Q"]:
            raw = self._translated(raw)
        if self.server and self.server.transport:
            self.server.transport.write(p.Query(setup).encode() + raw)

    async def _fresh_topology(self, routing: Routing) -> None:
        await asyncio.to_thread(routing.refresh)
        if self.phase is not Phase.CLOSED:
            self.resume()

    def resume(self) -> None:
        """The routed statement is answered: what the client sent meanwhile, in order."""
        self.busy = False
        if self.leases.held and self.transactions.txn is None:
            self.leases.release()  # idle: the worker connections go back to the pool
        held, self.held = self.held, []
        for i, chunk in enumerate(held):
            if self.busy:
                self.held.extend(held[i:])
                break
            self.data_received(chunk)

    def _replace_key(self, payload: bytes) -> bytes:
        message = p.decode_backend(b"K", payload)
        assert isinstance(message, p.BackendKeyData)
        self.server_key = CancelKey(message.process_id, message.secret)
        self.client_key = self.context.keys.allocate(len(message.secret))
        self.context.sessions[self.client_key.process_id] = self
        return p.BackendKeyData(self.client_key.process_id, self.client_key.secret).encode()

    def server_lost(self) -> None:
        if reconnect.may_reconnect(self):  # an idle session: logged in again, the client does not notice
            self.busy = True
            self.context.spawn(reconnect.carry_over(self))
            return
        if self.phase is not Phase.CLOSED:
            if self.phase is Phase.RELAY and not self.terminating:
                self._write(coordinator_lost(self.address))
            self.phase = Phase.CLOSED
            if self.client:
                self.client.close()  # what was written is sent first

    # --- ending -----------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.extended.pipelines.stripper.active:  # the answer to a Sync of the router's (:mod:`.pipeline`)
            data = self.extended.pipelines.stripper.feed(data)
        if self.client and not self.client.is_closing():
            self.client.write(data)

    def write(self, data: bytes) -> None:
        """The transaction machine's answer to the client (reshaped once for an extended-protocol batch)."""
        shaper, self.reply_shaper = self.reply_shaper, None
        self._write(shaper(data) if shaper is not None else data)

    def refuse(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Tell the client what went wrong (an ErrorResponse), then close both connections."""
        self._write(p.error_response(sqlstate, message, hint=hint).encode())
        self.phase = Phase.CLOSED
        self._close()

    def _close(self) -> None:
        self.phase = Phase.CLOSED
        if self.client and not self.client.is_closing():
            self.client.close()
        if self.server and self.server.transport and not self.server.transport.is_closing():
            self.server.transport.close()
