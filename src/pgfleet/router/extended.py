"""Routing of extended-protocol batches (Parse/Bind/Describe/Execute/Sync) for one client session.

From a session's first extended-protocol message on (while it is not pinned), its client bytes come
here as whole messages. Messages are kept until Sync; the batch then either goes to the coordinator as
it came, or, when the session is idle (autocommit, nothing owed by the coordinator), the shape is one
Bind/Execute of the unnamed portal (:func:`.batches.classify`) and the Bind's values place the
statement on one shard, runs on the owning worker:

1. Parse and Describe-statement messages before the Bind go to the coordinator, with a Describe of the
   bound statement and a Sync of the router's own (one round trip, skipped when the statement is known
   and described: a prepared statement's later executions, or the unnamed statement parsed again with
   the same text). The coordinator answers the client's Parse (ParseComplete or its error); its
   ParameterDescription and RowDescription are kept with the statement. So every statement a Bind can
   name exists on the coordinator, and a batch that is not routed after all goes there from the Bind on.
2. The worker gets Parse of the rewritten statement (once per worker connection and text, with the
   coordinator's parameter types, under a name the router chooses), the client's Bind renamed to it,
   Describe portal, Execute and Sync. Its reply goes to the client with the worker's ParseComplete
   dropped and the coordinator's RowDescription (see :func:`.batches.client_reply`); errors are the
   worker's, an error at Bind skipping to Sync as in PostgreSQL.

The worker runs the batch under the session's role: for another role than the router's login, Parse/
Bind/Execute of ``SET LOCAL ROLE`` come first in the same round trip (the batch is one implicit
transaction, so the role ends with it) and their replies are dropped; a refusal there (42501) sends the
batch to the coordinator, which answers in its own words.

A Flush before Sync sends what came so far to the coordinator and the rest of that batch follows it
there (the client waits for replies); batches with several Executes, named portals or Close go there
too. Statements that may change session state (SET, PREPARE, …) pin the session at their Parse;
transaction-control statements (BEGIN, COMMIT, SAVEPOINT, …) and every batch inside a router transaction
go to :mod:`.exttxn`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import protocol as p
from . import wire
from .analyze import Prepared
from .routes import Coordinator, Shard
from .backend import BackendError, WorkerConnection, denied, lost_in_flight, vanished
from .batches import (
    PARSE_COMPLETE,
    Message,
    Plan,
    Statement,
    Statements,
    classify,
    client_reply,
    parameter_values,
    read_parse,
)
from .pipeline import PipelineSplitter
from .extkeys import ExtendedKeys
from .extmulti import ExtendedMultiShard
from .exttxn import MAX_BATCH, Capture, ExtendedTransactions, after_setup, frames, role_setup, setup_messages, worker_request
from .pool import PoolExhausted, exhausted_reply
from .refpart import CoordinatorPart
from .routing import session_neutral
from .twophase import messages as reply_messages
from .txnstmt import Kind, control

if TYPE_CHECKING:
    from .session import ClientSession

log = logging.getLogger(__name__)

BATCH_TYPES = frozenset(b"PBDECHS")  # Parse Bind Describe Execute Close Flush Sync
INTERNAL_ERROR = "XX000"
class ExtendedRouter:
    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.active = False  # client bytes come here (until the session is pinned)
        self.framer = wire.Framer(limit=wire.frontend_limit)
        self.batch: list[Message] = []
        self.forwarding = False  # the rest of this batch goes to the coordinator as it comes (after a Flush)
        self.statements = Statements()
        self.capture: Capture | None = None
        self.stateful = False  # a Parse in this batch may change session state
        self.discarding = False  # a refused partial batch: its messages are dropped up to Sync, as after an error
        self.txns = ExtendedTransactions(self)
        self.multishard = ExtendedMultiShard(self)
        self.keys = ExtendedKeys(self)
        self.pipelines = PipelineSplitter(self)

    # --- client side ---------------------------------------------------------------------------------
    def takes(self, data: bytes, at_boundary: bool) -> bool:
        """Whether these client bytes are this router's: from the first extended-protocol message on."""
        if not self.active and at_boundary and data and data[0] in BATCH_TYPES:
            self.active = True
            self.statements.owed(self.session.outstanding)
        return self.active

    def client_data(self, data: bytes) -> None:
        self._process(self.framer.feed(data))

    def _process(self, messages: list[Message]) -> None:
        session = self.session
        pipelines = self.pipelines
        for i, (type_byte, payload) in enumerate(messages):
            if not session.busy and (pipelines.active or session.transactions.txn is not None):
                pipelines.before(type_byte)  # a pipeline in a transaction: cut into statements here?
            if session.busy:  # a batch runs: the rest waits, in order
                session.held.insert(0, frames(messages[i:]) + self.framer.take_buffer())
                return
            if not self._message(type_byte, payload):
                session.pin()
                self._release(messages[i:])
                return
            if session.pinned:  # by a Query the session forwarded
                self._release(messages[i + 1:])
                return

    def _message(self, type_byte: bytes, payload: bytes) -> bool:
        """Take one message; False when the session must be pinned before it."""
        if (type_byte == b"B" or type_byte == b"E" or type_byte == b"D") and not self.discarding \
                and not self.forwarding and len(self.batch) + 1 < MAX_BATCH:
            self.batch.append((type_byte, payload))  # the common case of what follows, in short
            return True
        if self.discarding and type_byte != b"X":
            if type_byte == b"S":
                self.discarding = False
                txn = self.session.transactions.txn
                self.session._write(p.ReadyForQuery("I" if txn is None else "E" if txn.failed else "T").encode())
            return True
        if type_byte == b"Q" and not self.batch and not self.forwarding:
            raw = wire.frame(type_byte, payload)
            if not self.session._try_route([b"Q"], raw, True):
                self.session._from_client([b"Q"], raw)
                self.statements.sent(type_byte, payload)
            return True
        if type_byte == b"X" and not self.batch and not self.forwarding:
            self.session._from_client([type_byte], wire.frame(type_byte, payload))  # Terminate: the session ends
            return True
        if type_byte[0] not in BATCH_TYPES:
            return False  # COPY data, a function call, a Query or Terminate inside a batch
        in_txn = self.session.transactions.txn is not None
        if type_byte == b"P":
            parse = read_parse(payload)
            routing = self.session.routing
            if control(parse.sql) is None and not session_neutral(
                    parse.sql, routing.topology.builtin_functions if routing is not None else frozenset()):
                if in_txn:
                    self.stateful = True  # the transaction's statement: pinned when it goes to the coordinator
                elif parse.name or self.batch or not self._idle() or not self.session.follow_setting(parse.sql):
                    return False  # a SET is carried when its batch starts with the unnamed statement (JDBC's)
        if type_byte == b"H" and self.batch and not self.forwarding and self._idle() \
                and all(t in (b"P", b"D") for t, _ in self.batch):
            # asyncpg prepares with Parse, Describe, Flush: the coordinator answers them now (outside any
            # transaction: statements are not transactional), and the Bind/Execute/Sync that follows is a
            # batch of its own, which may be routed
            batch, self.batch, self.stateful = self.batch, [], False
            self.txns.statement_messages(batch, flushed=True)
            return True
        if type_byte == b"H" and not self.batch and not self.forwarding:
            # nothing is waiting for a reply (psycopg flushes after its Sync): nothing to do, and what follows
            # may be a Query (SQLAlchemy's COMMIT after an executemany), not a batch to forward
            return True
        if in_txn and not self.forwarding and type_byte != b"S" and (type_byte == b"H" or len(self.batch) + 1 >= MAX_BATCH):
            # the client waits for replies before its Sync (psycopg's pipelines, executemany)
            batch, self.batch, self.stateful = [*self.batch, (type_byte, payload)], [], False
            self.txns.partial_batch(batch)
            self.forwarding = not self.discarding
            return True
        if self.forwarding:
            self._to_coordinator([(type_byte, payload)])
            self.forwarding = type_byte != b"S"
            return True
        self.batch.append((type_byte, payload))
        if type_byte == b"S":
            self._complete()
        elif type_byte == b"H" or len(self.batch) >= MAX_BATCH:
            self._to_coordinator(self.batch)
            self.batch, self.forwarding = [], True
        return True

    def _release(self, rest: list[Message]) -> None:
        """The session is pinned: what is kept here and what follows go to the coordinator as bytes."""
        raw = frames(self.batch) + frames(rest) + self.framer.take_buffer()
        self.batch, self.active, self.forwarding = [], False, False
        if raw:
            self.session._from_client(self.session.framer.scan(raw), raw)

    def _to_coordinator(self, messages: list[Message] | tuple[Message, ...]) -> None:
        raw = frames(messages)
        self.session._from_client([t for t, _ in messages], raw)
        for type_byte, payload in messages:
            self.statements.sent(type_byte, payload)

    # --- server side ---------------------------------------------------------------------------------
    def server_data(self, data: bytes) -> bytes | None:
        """Coordinator bytes while the router's own exchange runs; what is not part of it is returned."""
        assert self.capture is not None
        rest = self.capture.feed(data)
        if rest is not None:
            capture, self.capture = self.capture, None
            try:
                capture.done(capture.messages)
            except Exception:  # the client waits for this batch's reply, which cannot be made: say so and end
                log.exception("routing an extended-protocol batch failed after the coordinator answered")
                self.session.refuse(INTERNAL_ERROR, "pgfleet router: internal error while routing this statement",
                                    hint="see the router's log; the session can reconnect")
                return None
        return rest

    # --- a complete batch ----------------------------------------------------------------------------
    def _idle(self) -> bool:
        session = self.session
        return (not session.outstanding and session.server_framer.last_status == b"I" and self.statements.settled
                and self.capture is None)

    def _complete(self) -> None:
        batch, self.batch = self.batch, []
        stateful, self.stateful = self.stateful, False
        if stateful and self.session.transactions.txn is not None:
            self.txns.elsewhere(batch, b"", "a statement that may change session state", pin=True)
            return
        try:
            self._start(batch)
        except Exception:  # a bug in analysis must not lose the client's batch: the coordinator runs it
            log.exception("routing analysis failed; the session stays on the coordinator")
            self.session.pin()
            self.batch = batch

    def _start(self, batch: list[Message]) -> None:
        session = self.session
        routing = session.routing
        if session.coordinator_txn and self._idle():
            session.coordinator_txn = False  # the transaction the router began there has ended
        txn = session.transactions.txn
        plan = classify(batch) if routing is not None and self._idle() else None
        statement = plan.statement(self.statements) if plan is not None else None
        if plan is not None and statement is not None and (ctl := control(statement.sql)) is not None \
                and ctl.kind is not Kind.TWO_PHASE:
            if plan.prefix:
                self._exchange(plan, batch, lambda known, answered: self.txns.control(
                    plan, batch, known, answered, exchanged=True))
            else:
                self.txns.control(plan, batch, statement, b"", exchanged=False)
            return
        if txn is not None and (plan is None or statement is None):
            if all(t in b"PDCS" for t, _ in batch):
                self.txns.statement_messages(batch)
            else:
                self.txns.elsewhere(batch, b"", "not one statement of a known shape")
            return
        if txn is not None and txn.failed:
            self.txns.aborted()
            return
        if plan is None or statement is None or routing is None:
            self._to_coordinator(batch)
            return
        prepared = routing.cache.prepared(statement.sql, routing.topology, session.search_path)
        if isinstance(prepared, Coordinator):
            if txn is not None and (route := session.transactions.joining(txn, statement.sql)) is not None:
                self._coordinator_part(plan, batch, route, prepared.reason)
            elif (fill := self.keys.fill(statement.sql)) is not None:  # keys drawn, then routed (extkeys.py)
                self._described(plan, batch, lambda described, answered, exchanged: self.keys.run(
                    plan, batch, fill, described, answered, exchanged))
            elif self.multishard.candidate(statement.sql):  # not single-shard, but maybe the router's multi-shard work
                self._multishard_only(plan, batch, prepared.reason)
            else:
                self._coordinator(batch, prepared.reason)
            return
        known = self.statements.get(plan.bind.statement)
        if not plan.prefix and known is not None and known.described:
            self._run(plan, batch, prepared, known, b"", exchanged=False)
        elif self._parsed_again(plan, known):
            assert known is not None
            self._run(plan, batch, prepared, known, PARSE_COMPLETE, exchanged=False)
        elif all(f == 0 for f in plan.bind.param_formats) and \
                not isinstance(prepared.bind(parameter_values(plan.bind, ())), Shard) \
                and not self.multishard.candidate(statement.sql):
            self._coordinator(batch, "its values do not place it on one shard")  # no need to ask the coordinator
        else:
            self._exchange(plan, batch, lambda known, answered: self._run(plan, batch, prepared, known, answered,
                                                                          exchanged=True))

    def _multishard_only(self, plan: Plan, batch: list[Message], reason: str) -> None:
        """A statement single-shard analysis refused that a multi-shard plan may run: described by the
        coordinator first when it is not yet (the plan needs its parameter and result types)."""
        def run(statement: Statement, answered: bytes, exchanged: bool) -> None:
            if not self.multishard.run(plan, batch, statement, answered, exchanged):
                self._coordinator(plan.tail if exchanged else batch, reason, answered)
                if self.session.busy and self.session.transactions.txn is None:
                    self.session.resume()

        self._described(plan, batch, run)

    def _coordinator_part(self, plan: Plan, batch: list[Message], part: tuple[Shard, CoordinatorPart], reason: str) -> None:
        """A reference-table write that the coordinator runs as a participant of the transaction (see
        :mod:`.refpart`), once its parameter types are known."""
        def run(statement: Statement, answered: bytes, exchanged: bool) -> None:
            types = statement.param_types
            if types is None or len(types) != len(plan.bind.params):
                self._coordinator(plan.tail if exchanged else batch, reason, answered)  # refused there
            else:
                self.txns.on_worker(plan, part[0], statement, answered, part[1])

        self._described(plan, batch, run)

    def _described(self, plan: Plan, batch: list[Message], run: Callable[[Statement, bytes, bool], None]) -> None:
        """``run`` the batch's statement as the coordinator describes it: at once when it is known, else after
        the coordinator parsed and described it (``run`` then gets what the client is owed of that exchange)."""
        known = self.statements.get(plan.bind.statement)
        if not plan.prefix and known is not None and known.described:
            run(known, b"", False)
        elif self._parsed_again(plan, known):
            assert known is not None
            run(known, PARSE_COMPLETE, False)
        else:
            self._exchange(plan, batch, lambda described, answered: run(described, answered, True))

    def _coordinator(self, batch: list[Message] | tuple[Message, ...], reason: str, answered: bytes = b"") -> None:
        """The coordinator runs the batch: as it came in autocommit, as the transaction's statement in one."""
        if self.session.transactions.txn is not None:
            self.txns.elsewhere(batch, answered, reason)
        else:
            self.session._write(answered)
            self._to_coordinator(batch)

    @staticmethod
    def _parsed_again(plan: Plan, known: Statement | None) -> bool:
        """The unnamed statement parsed again as it is on the coordinator: answered here, as re-parsing
        the same text there would leave the same statement."""
        if len(plan.prefix) != 1 or known is None or not known.described:
            return False
        parse = plan.prefix[0]
        return (isinstance(parse, p.Parse) and parse.name == "" == plan.bind.statement and parse.sql == known.sql
                and parse.param_types == known.client_types)

    def capture_reply(self, request: bytes, done: Callable[[list[Message]], None]) -> None:
        """Send the router's own messages (ending in Sync) to the coordinator; ``done`` gets its reply."""
        session = self.session
        session.busy = True
        self.capture = Capture(done)
        assert session.server is not None and session.server.transport is not None
        session.server.transport.write(request)

    def _exchange(self, plan: Plan, batch: list[Message], then: Callable[[Statement, bytes], None]) -> None:
        """The client's Parse/Describe messages and a Describe of the bound statement, on the coordinator;
        ``then`` gets the described statement and the replies to the client's messages."""
        request = frames(batch[:len(plan.prefix)]) + p.Describe("S", plan.bind.statement).encode() + p.Sync().encode()
        self.capture_reply(request, lambda messages: self._exchanged(plan, messages, then))

    def _exchanged(self, plan: Plan, messages: list[Message], then: Callable[[Statement, bytes], None]) -> None:
        parses = [m for m in plan.prefix if isinstance(m, p.Parse)]
        if any(t == b"E" for t, _ in messages):  # the coordinator refused a Parse: its error ends the batch
            confirmed = sum(1 for t, _ in messages if t == b"1")
            for parse in parses[:confirmed]:
                self.statements.set(parse.name, Statement(parse.sql, parse.param_types))
            if len(parses) > confirmed and parses[confirmed].name == "":
                self.statements.drop("")
            txn = self.session.transactions.txn
            if txn is not None:  # as on one server, the error fails the transaction
                txn.failed = True
                messages = [*messages[:-1], (b"Z", b"E")]
            self.session._write(frames(messages))
            self.session.resume()
            return
        for parse in parses:
            self.statements.set(parse.name, Statement(parse.sql, parse.param_types))
        at = max(i for i, (t, _) in enumerate(messages) if t == b"t")
        params = p.decode_backend(*messages[at])
        columns = p.decode_backend(*messages[at + 1])
        assert isinstance(params, p.ParameterDescription)
        fields = columns.fields if isinstance(columns, p.RowDescription) else ()
        statement = plan.statement(self.statements)
        assert statement is not None
        statement = Statement(statement.sql, statement.client_types, params.type_oids, fields)
        self.statements.set(plan.bind.statement, statement)
        answered = frames([m for i, m in enumerate(messages[:-1]) if i not in (at, at + 1)])
        then(statement, answered)

    def _fallback(self, plan: Plan, batch: list[Message], answered: bytes, exchanged: bool) -> None:
        """Not routed after all: to the coordinator from the Bind on when its statement messages ran there."""
        in_txn = self.session.transactions.txn is not None  # then the transaction machine resumes the session
        plan = plan.as_sent
        if exchanged:  # the coordinator answered the statement messages: from the Bind on
            self._coordinator(plan.tail, "its values do not place it on one shard", answered)
        else:  # the whole batch, which the coordinator answers whole (a ParseComplete the router made is not sent)
            self._coordinator(batch, "its values do not place it on one shard")
        if self.session.busy and not in_txn:
            self.session.resume()

    # --- on the worker --------------------------------------------------------------------------------
    def _run(self, plan: Plan, batch: list[Message], prepared: Prepared, statement: Statement, answered: bytes,
             *, exchanged: bool) -> None:
        session = self.session
        types = statement.param_types
        if types is None or not statement.portable or len(types) != len(plan.bind.params):
            self._fallback(plan, batch, answered, exchanged)
            return
        route = prepared.bind(parameter_values(plan.bind, types))
        routing = session.routing
        assert routing is not None
        if not session.superuser and not routing.roles_current:
            self._fallback(plan, batch, answered, exchanged)  # the workers do not have the coordinator's roles yet
            return
        if not isinstance(route, Shard):
            if not self.multishard.run(plan, batch, statement, answered, exchanged):
                self._fallback(plan, batch, answered, exchanged)
            return
        if session.transactions.txn is not None:
            self.txns.on_worker(plan, route, statement, answered)
            return
        conn = session.leases.free(route.node)
        session.busy = True
        if conn is not None:
            self._send(conn, plan, batch, route, statement, answered, exchanged)
        else:
            session.context.spawn(self._open_then_send(plan, batch, route, statement, answered, exchanged))

    def _refused(self, as_role: bool, messages: list[Message]) -> bool:
        """Refused for lack of the session role's privilege, or its shard is gone (the session then waits for a
        fresh topology after the coordinator's answer): the coordinator runs it."""
        gone = vanished(messages)
        self.session.topology_change |= gone
        return gone or (as_role and denied(messages))

    async def _open_then_send(self, plan: Plan, batch: list[Message], route: Shard, statement: Statement,
                              answered: bytes, exchanged: bool) -> None:
        session = self.session
        try:
            conn = await session.worker(route.node)
        except PoolExhausted as exc:  # waited too long for a connection: not run
            session._write(answered + exhausted_reply(exc))
            session.resume()
            return
        except BackendError as exc:
            log.warning("routing to %s failed, sending the statement to the coordinator: %s", route.node, exc)
            session.context.stats.routing_fallbacks += 1
            self._fallback(plan, batch, answered, exchanged)
            return
        self._send(conn, plan, batch, route, statement, answered, exchanged)

    def _send(self, conn: WorkerConnection, plan: Plan, batch: list[Message], route: Shard, statement: Statement,
              answered: bytes, exchanged: bool) -> None:
        """Run the batch on the worker in one round trip, under the session's role (SET LOCAL ROLE first: the
        batch is one implicit transaction, so the role ends with it). A refusal for lack of a privilege
        (42501), or a role the worker cannot take, sends the batch to the coordinator, which answers."""
        session = self.session
        role = session.role_on(conn)
        setup = [role_setup(role)] if role != conn.user else []
        request, commit_name = worker_request(conn, plan, route, statement)

        def done(reply: bytes | None) -> None:
            session.running_on = None
            stats = session.context.stats
            if reply is None:  # sent, and the connection broke: it may have run, so it is not run again
                log.warning("the connection to worker %s was lost while it ran a routed statement", route.node)
                if session.leases.held.get(route.node) is conn:
                    session.drop_worker(route.node)
                stats.executes += 1
                stats.routed += 1
                session._write(answered + lost_in_flight(route.node))
                session.resume()
                return
            reply, ok = after_setup(reply, len(setup))
            out, parsed = client_reply(reply, parsed=commit_name is not None, statement=statement, bind=plan.bind)
            if ok and parsed and commit_name is not None:
                commit_name()
            if not ok or ((setup or conn.flagged) and self._refused(bool(setup), reply_messages(out))):
                stats.routing_fallbacks += 1  # the coordinator answers in its own words
                self._fallback(plan, batch, answered, exchanged)
                return
            stats.executes += 1
            stats.routed += 1
            if conn.flagged and (names := session.logical()) is not None:  # the RowDescription is the coordinator's
                out = names.reported(route.shard_ids, out)
            session._write(answered + out)
            session.resume()

        session.running_on = conn
        try:
            conn.send(setup_messages(setup) + request, done)
        except BackendError as exc:  # not sent: the coordinator runs it
            session.running_on = None
            log.warning("routing to %s failed, sending the statement to the coordinator: %s", route.node, exc)
            session.drop_worker(route.node)
            session.context.stats.routing_fallbacks += 1
            self._fallback(plan, batch, answered, exchanged)
