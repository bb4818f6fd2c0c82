"""Extended-protocol batches in a router transaction, and transaction control sent with the extended
protocol: the path of every ORM (BEGIN as a Query or a prepared statement, then Parse/Bind/Execute/Sync
with ``$n`` values, COMMIT as either).

A batch is one statement of the transaction (:class:`.txn.TransactionControl` keeps its state):

* bound to a transaction-control statement (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, …): the transaction
  machine runs it as if it came in a Query; its answer gets the BindComplete (and NoData) the client's
  Bind (and Describe) expect;
* routed to one shard: on that worker, as a participant. A worker that joins gets its setup (BEGIN
  <modes>, SET LOCAL ROLE, the open savepoints) as Parse/Bind/Execute of the unnamed statement before
  the client's messages, in the same round trip; the replies to the setup are dropped;
* needing the coordinator: as a simple statement would (the transaction moves there when nothing was
  written on workers, else 0A000 and the transaction fails);
* only Parse/Describe/Close: answered by the coordinator (outside the transaction: statements are not
  transactional), with the transaction's ReadyForQuery status.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from psycopg import sql

from . import protocol as p
from . import wire
from .routes import Coordinator, Shard
from .backend import BackendError, WorkerConnection
from .batches import Message, Plan, Statement, Statements, client_reply, read_bind, read_parse
from .routing import Decision
from .twophase import messages, status_of
from .txnstmt import Kind, control
from .refpart import CoordinatorPart
from .txnstate import Transaction
from .txnreply import CONNECTION_FAILURE, IN_FAILED_TRANSACTION, NOT_SUPPORTED, error, ready

if TYPE_CHECKING:
    from .extended import ExtendedRouter

log = logging.getLogger(__name__)

BIND_COMPLETE = p.BindComplete().encode()
MAX_WORKER_STATEMENTS = 1000  # named statements per worker connection; then the unnamed one, parsed each time
_names = itertools.count(1)
MAX_BATCH = 64  # messages kept before a Sync; a longer batch goes to the coordinator as it comes
NO_DATA = p.NoData().encode()


class WithParse(bytes):
    """Messages for the coordinator after the setup Query, beginning with a Parse of the unnamed statement
    that the router sends again (the Query dropped it): its ParseComplete is not the client's."""


def frames(batch: list[Message] | tuple[Message, ...]) -> bytes:
    return b"".join(wire.frame(t, payload) for t, payload in batch)


class Capture:
    """The coordinator's reply to the router's own Parse/Describe/Sync, read whole up to ReadyForQuery."""

    def __init__(self, done: Callable[[list[Message]], None]) -> None:
        self.framer = wire.Framer()
        self.messages: list[Message] = []
        self.done = done

    def feed(self, data: bytes) -> bytes | None:
        """None while the reply is incomplete; then what came after it (normally nothing)."""
        messages = self.framer.feed(data)
        for i, (type_byte, _) in enumerate(messages):
            if type_byte == b"Z":
                self.messages += messages[:i + 1]
                return frames(messages[i + 1:]) + self.framer.take_buffer()
        self.messages += messages
        return None


def worker_request(conn: WorkerConnection, plan: Plan, route: Shard,
                   statement: Statement) -> tuple[bytes, Callable[[], None] | None]:
    """[Parse of the rewritten statement,] the client's Bind renamed to it and the rest of its batch, for
    this worker connection; and, when the request parses it, what records it as parsed there."""
    assert statement.param_types is not None
    key = (route.sql, statement.param_types)
    name = conn.statements.get(key)
    parse = name is None
    if name is None:
        name = f"pgfleet_{next(_names)}" if len(conn.statements) < MAX_WORKER_STATEMENTS else ""
    bind_payload = plan.tail[0][1]
    skip = len(plan.bind.statement.encode()) + 2  # the (empty) portal name and the client's statement name
    request = b"".join((
        p.Parse(name, route.sql, statement.param_types).encode() if parse else b"",
        wire.frame(b"B", b"\0" + _cstr(name) + bind_payload[skip:]),
        _framed(plan.tail[1:])))

    def parsed() -> None:
        if name:
            conn.statements[key] = name

    return request, parsed if parse else None


@functools.lru_cache(maxsize=256)
def _cstr(name: str) -> bytes:
    return wire.cstr(name)


@functools.lru_cache(maxsize=64)
def _framed(messages: tuple[Message, ...]) -> bytes:
    """A batch's messages after its Bind (Describe portal, Execute, Sync: the same bytes statement after
    statement), framed once."""
    return frames(messages)


def setup_messages(statements: list[str]) -> bytes:
    """Parse/Bind/Execute of each statement (unnamed statement and portal), sent before a batch's own
    messages: they run in the batch's implicit transaction, or in the transaction block BEGIN opens."""
    return b"".join(p.Parse("", text, ()).encode() + p.Bind("", "").encode() + p.Execute("", 0).encode()
                    for text in statements)


def role_setup(role: str) -> str:
    return f"SET LOCAL ROLE {sql.Identifier(role).as_string()}"


def after_setup(reply: bytes, count: int) -> tuple[bytes, bool]:
    """(the reply without the answers to ``count`` setup statements, whether all of them succeeded); their
    notices (SET LOCAL outside a transaction block warns) are dropped too, and the worker's ParameterStatus
    messages (is_superuser after SET ROLE: the client's session is the coordinator's). A failed setup
    leaves its error and the ReadyForQuery (the rest of the batch was skipped)."""
    if count == 0:
        return reply, True
    out = messages(reply)
    done = at = 0
    while done < count and at < len(out) and out[at][0] in (b"1", b"2", b"C", b"N"):
        done += out[at][0] == b"C"
        at += 1
    return frames([m for m in out[at:] if m[0] != b"S"]), done == count


def control_reply(data: bytes, describe: bool) -> bytes:
    """The transaction machine's answer to a Query (notices, CommandComplete or an error, ReadyForQuery) as
    the answer to Bind [Describe portal] Execute Sync of the same statement."""
    out: list[bytes] = []
    bound = False
    for type_byte, payload in messages(data):
        if not bound and type_byte in (b"N", b"C", b"E"):  # the statement's notices come after the Bind's answer
            out.append(BIND_COMPLETE + (NO_DATA if describe else b""))
            bound = True
        out.append(wire.frame(type_byte, payload))
    return b"".join(out)


def first_refused(batch: list[Message], statements: Statements) -> int | None:
    """The index of the first message of ``batch`` that PostgreSQL refuses in a failed transaction (25P02):
    a Parse of anything but COMMIT / ROLLBACK [TO SAVEPOINT] / PREPARE TRANSACTION, a Describe of a
    statement that returns rows; None when there is none (Close, Describe of other statements)."""
    for at, (type_byte, payload) in enumerate(batch):
        if type_byte == b"P":
            text = read_parse(payload).sql
            ctl = control(text)
            ends = ctl is not None and (ctl.kind in (Kind.COMMIT, Kind.ROLLBACK, Kind.ROLLBACK_TO)
                                        or ctl.tag == "PREPARE TRANSACTION")
            if text.strip() and not ends:  # an empty statement is accepted
                return at
        elif type_byte == b"D" and payload[:1] == b"S":
            known = statements.get(payload[1:-1].decode(errors="replace"))
            if known is not None and known.columns:
                return at
    return None


class ExtendedTransactions:
    """The transaction side of one session's :class:`.extended.ExtendedRouter`."""

    def __init__(self, router: ExtendedRouter) -> None:
        self.router = router
        self.session = router.session

    # --- transaction control ---------------------------------------------------------------------------
    def control(self, plan: Plan, batch: list[Message], statement: Statement, answered: bytes, *, exchanged: bool) -> None:
        """A batch that binds a transaction-control statement: the transaction machine runs it."""
        session = self.session
        tail = plan.tail if exchanged else tuple(batch)
        session._write(answered)
        describe = plan.describe
        session.reply_shaper = lambda data: control_reply(data, describe)
        session.busy = False
        if session.transactions.handle(statement.sql, frames(tail)):
            session.context.stats.queries += 1
        else:  # not a transaction matter here (SAVEPOINT outside a transaction, …): the coordinator answers
            session.reply_shaper = None
            self.router._to_coordinator(tail)
        if not session.busy:
            session.resume()

    # --- statements ----------------------------------------------------------------------------------
    def aborted(self) -> None:
        self.session.transactions._aborted()

    def statement_messages(self, batch: list[Message], *, forget: bool = False, flushed: bool = False) -> None:
        """Parse/Describe/Close only, or a DEALLOCATE ALL Query (``forget``): the coordinator answers (outside
        the transaction: prepared statements are not transactional), the status is the transaction's. With
        ``flushed`` they came with a Flush instead of a Sync: the router sends its own Sync and the client
        gets no ReadyForQuery. In a
        failed transaction a Parse (other than of COMMIT / ROLLBACK [TO]) or a Describe of a statement that
        returns rows is refused with 25P02 as PostgreSQL does, and the rest of the batch skipped; what came
        before it (a Close) is still answered by the coordinator."""
        session = self.session
        router = self.router
        txn = session.transactions.txn
        refused = first_refused(batch, router.statements) if txn is not None and txn.failed else None
        if refused is not None:
            aborted = error(IN_FAILED_TRANSACTION, "current transaction is aborted, commands ignored until end of "
                            "transaction block")
            router.discarding = flushed  # then the client's messages up to its Sync are skipped, as the server does
            if refused == 0:
                session._write(aborted + (b"" if flushed else ready("E")))
                return
            batch = [*batch[:refused], (b"S", b"")]
        elif flushed:
            batch = [*batch, (b"S", b"")]
        session.busy = True
        for type_byte, payload in batch:
            router.statements.sent(type_byte, payload)

        def done(reply: list[Message]) -> None:
            router.statements.replies([t for t, _ in reply])
            if forget:
                router.statements.clear()
            txn = session.transactions.txn
            if txn is not None and any(t == b"E" for t, _ in reply):
                txn.failed = True  # as an error at Parse fails a transaction on one server
            status = "I" if txn is None else "E" if txn.failed else "T"
            if flushed and any(t == b"E" for t, _ in reply):
                router.discarding = True  # as the server skips the client's messages up to its Sync
            session._write(frames([m for m in reply if m[0] != b"Z"]) + (aborted if refused is not None else b"")
                           + (b"" if flushed else ready(status)))
            session.resume()

        router.capture_reply(frames(batch), done)

    def partial_batch(self, batch: list[Message]) -> None:
        """A Flush (or a long batch) before Sync: the client waits for replies to what came so far. A
        transaction that has not run anything yet moves to the coordinator with it (the rest follows as it
        comes); one that runs on workers refuses it (0A000, the transaction fails) and the rest of the batch
        is dropped up to its Sync, as after an error on one server."""
        tc = self.session.transactions
        txn = tc.txn
        assert txn is not None
        if not txn.failed and not txn.participants:
            tc._to_coordinator(txn, self._for_coordinator(batch))
            return
        self.router.discarding = True
        if txn.failed:
            self.session._write(error(IN_FAILED_TRANSACTION, "current transaction is aborted, commands ignored until "
                                      "end of transaction block"))
            return
        txn.failed = True
        self.session._write(error(NOT_SUPPORTED, "pgfleet router: a pipeline (a Flush before Sync, or more than "
                                  f"{MAX_BATCH} messages) in a transaction that runs on worker "
                                  f"{', '.join(txn.participants)} is not supported",
                                  "send one statement per Sync in such transactions (psycopg: execute in a loop "
                                  "rather than executemany or a pipeline), or make it the transaction's first statement"))

    def deallocate_all(self, text: str, raw: bytes) -> bool:
        """A DEALLOCATE ALL Query: the statements are forgotten. In autocommit the coordinator runs it (False:
        relay it); in a transaction the coordinator answers it outside (a failed one answers 25P02)."""
        txn = self.session.transactions.txn
        if txn is None:
            self.router.statements.clear()
            return False
        if txn.failed:
            return self.session.transactions.handle(text, raw)
        self.statement_messages([(b"Q", raw[5:])], forget=True)
        return True

    def elsewhere(self, messages_: list[Message] | tuple[Message, ...], answered: bytes, reason: str,
                  *, pin: bool = False) -> None:
        """A statement of the transaction that the coordinator must run (``messages_``: what is left of
        the batch): as a simple statement, the transaction moves there or is refused."""
        session = self.session
        tc = session.transactions
        txn = tc.txn
        assert txn is not None
        session._write(answered)
        raw = self._for_coordinator(messages_)
        decision = Decision(Coordinator(reason), not pin)
        if txn.failed:
            tc._aborted()
        elif (move := tc.elsewhere(txn, decision, raw)) is not None:
            tc._background(lambda: move)
            return
        if session.busy:
            session.resume()

    def _for_coordinator(self, messages_: list[Message] | tuple[Message, ...]) -> bytes:
        """The messages, after the Query that begins the transaction there: a Bind of the unnamed statement
        not parsed in them gets its Parse again first."""
        raw = frames(messages_)
        for type_byte, payload in messages_:
            if type_byte == b"P" and read_parse(payload).name == "":
                break
            if type_byte == b"B":
                bind = read_bind(payload)
                known = self.router.statements.get("")
                if bind is not None and bind.statement == "" and known is not None:
                    return WithParse(p.Parse("", known.sql, known.client_types).encode() + raw)
                break
        return raw

    def on_worker(self, plan: Plan, route: Shard, statement: Statement, answered: bytes,
                  write: CoordinatorPart | None = None) -> None:
        """``write``: the statement is a reference-table write on the coordinator (:mod:`.refcopies`)."""
        session = self.session
        tc = session.transactions
        txn = tc.txn
        assert txn is not None
        session._write(answered)
        if route.shard_index >= 0 and tc.refused_stale(txn, statement.sql):
            if session.busy:
                session.resume()
            return
        if route.node not in txn.participants and txn.participants and tc.twophase is None:
            tc._fail(txn, NOT_SUPPORTED, "pgfleet router: this router cannot commit over several workers")
            if session.busy:
                session.resume()
            return
        joined = txn.participants.get(route.node)
        if write is None and joined is not None and route.shard_index >= 0:
            self._run_joined(txn, plan, route, statement, joined)  # the usual statement: no task
        else:
            tc._background(lambda: self._run(txn, plan, route, statement, write))

    def _run_joined(self, txn: Transaction, plan: Plan, route: Shard, statement: Statement,
                    conn: WorkerConnection) -> None:
        """:meth:`_run` on a worker already in the transaction, with a callback (see :mod:`.txnjoined`)."""
        session = self.session
        tc = session.transactions
        request, commit_name = worker_request(conn, plan, route, statement)

        def answered(reply: bytes) -> None:
            out, parsed = client_reply(reply, parsed=commit_name is not None, statement=statement, bind=plan.bind)
            if parsed and commit_name is not None:
                commit_name()
            if conn.flagged and (names := session.logical()) is not None:
                out = names.reported(route.shard_ids, out)
            session.context.stats.executes += 1
            tc._answered(txn, route, statement.sql, out, write=session._write)

        tc.send_joined(txn, route.node, conn, request, answered)

    async def _run(self, txn: Transaction, plan: Plan, route: Shard, statement: Statement,
                   write: CoordinatorPart | None) -> None:
        session = self.session
        tc = session.transactions
        conn = txn.participants.get(route.node)
        setup: list[str] = []
        if conn is None:
            try:
                conn = await session.worker(route.node)
            except BackendError as exc:
                if not txn.participants:  # nothing ran yet: the coordinator takes the transaction
                    log.warning("cannot reach %s, the transaction goes to the coordinator: %s", route.node, exc)
                    tc._to_coordinator(txn, self._for_coordinator(plan.as_sent.tail))
                else:
                    tc._fail(txn, CONNECTION_FAILURE, f"pgfleet router: cannot connect to worker {route.node}: {exc}",
                             "roll back (to a savepoint) and retry")
                return
            setup = tc._setup(txn, conn)
        before, copies = tc.copies_setup(txn, conn, write) if write is not None else ([], False)
        request, commit_name = worker_request(conn, plan, route, statement)
        session.running_on = conn
        try:
            reply = await conn.roundtrip(setup_messages(setup + before) + request)
        except BackendError:
            await tc._lost(txn, route.node)
            return
        finally:
            session.running_on = None
        if setup:
            txn.participants[route.node] = conn
        reply, ok = after_setup(reply, len(setup) + len(before))
        out, parsed = client_reply(reply, parsed=commit_name is not None, statement=statement, bind=plan.bind)
        if ok and parsed and commit_name is not None:
            commit_name()
        if copies and write is not None and status_of(out) != b"E":
            def request_for(conn: WorkerConnection, setup: list[str]) -> tuple[bytes, Callable[[], None] | None]:
                request, parsed = worker_request(conn, plan, route, statement)
                return setup_messages(setup) + request, parsed

            copied = await tc.write_copies(txn, write, out, request_for)
            if copied is None:
                return
            out = copied
        if conn.flagged and (names := session.logical()) is not None:  # the RowDescription is the coordinator's
            out = names.reported(route.shard_ids, out)
        session.context.stats.executes += 1
        tc._answered(txn, route, statement.sql, out, resume=False, write=session._write)  # _background resumes

