"""Client transactions through the router, one state machine per session (extended-protocol batches come
through :mod:`.exttxn` as statements of the same transactions).

BEGIN / START TRANSACTION (and SET TRANSACTION before the first statement) is answered by the router
itself and only remembered. The first statement decides where the transaction runs:

* single-shard (routable) → on that worker, as ``BEGIN <options>; [SET LOCAL ROLE …;] <statement>`` in one
  round trip; a later statement routed to another worker joins that worker the same way, replaying the
  open savepoints after its BEGIN. COMMIT: a plain COMMIT with one participant, two-phase commit
  (:mod:`.twophase`) with several.
* not routable → the coordinator gets ``BEGIN <options>; <savepoints>`` (its answer is swallowed) and the
  statement, and the whole transaction stays there (the session relays until the coordinator is idle).

Semantics as on one server: an error makes the transaction failed (ReadyForQuery 'E'; further statements
get 25P02 until ROLLBACK or ROLLBACK TO SAVEPOINT), SAVEPOINT / RELEASE / ROLLBACK TO go to every
participant, COMMIT of a failed transaction answers ROLLBACK. A statement that needs the coordinator
once the transaction wrote on a worker (or holds a REPEATABLE READ snapshot there) is refused with 0A000
(the transaction becomes failed), as is a Query string with several statements: the router never gives
a stale or partial view. After plain SELECTs only, in READ COMMITTED, the transaction moves to the
coordinator instead. A write to a reference table is the exception (:mod:`.refpart`): the coordinator
joins the transaction as one more participant and commits last, carrying the commit decision."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from psycopg import sql

from . import protocol as p
from .routes import MultiShard, Shard
from .backend import BackendError, WorkerConnection
from .refcopies import DISARM
from .refpart import CoordinatorPart
from .routing import Decision
from .stats import RouterStats
from .twophase import (
    TwoPhase,
    Unprepared,
    commit_on_coordinator,
    commit_prepared,
    first_error,
    messages,
    prepare_everywhere,
    run_everywhere,
    status_of,
    tags,
)
from .txnreply import (
    ACTIVE_TRANSACTION,
    CONNECTION_FAILURE,
    IN_FAILED_TRANSACTION,
    NO_SAVEPOINT,
    NO_TRANSACTION,
    NOT_SUPPORTED,
    TRANSACTION_ROLLBACK,
    complete,
    error,
    ready,
    warning,
    without_setup,
)
from .txnplan import Finish, PlanInTransaction, in_transaction_status, runs_in_transaction
from .txnstmt import Control, Kind, control
from .txncoord import CoordinatorParts
from .txnjoined import JoinedStatements
from .txnstate import Host, Transaction

log = logging.getLogger(__name__)

class TransactionControl(CoordinatorParts, JoinedStatements):
    def __init__(self, host: Host, stats: RouterStats, twophase: TwoPhase | None) -> None:
        self.host = host
        self.stats = stats
        self.twophase = twophase
        self.txn: Transaction | None = None

    def handle(self, text: str, raw: bytes) -> bool:
        """Take a Query the session got while idle; False: not a transaction matter (autocommit path)."""
        ctl = control(text)
        txn = self.txn
        if txn is None:
            if ctl is not None and ctl.kind in (Kind.COMMIT, Kind.ROLLBACK) and not ctl.chain:
                self.host.write(warning(NO_TRANSACTION, "there is no transaction in progress") + complete(ctl.tag)
                                + ready("I"))  # as the server answers it, without pinning the session
                return True
            if ctl is None or ctl.kind is not Kind.BEGIN:
                return False
            self.txn = Transaction(ctl.options)
            self.host.write(complete(ctl.tag) + ready("T"))
        elif ctl is not None:
            self._control(txn, ctl, text, raw)
        elif txn.failed:
            self._aborted()
        else:
            self._statement(txn, text, raw)
        return True

    def unsupported(self) -> bool:
        """The client sent something else than one whole Query or a batch up to Sync (COPY, pipelined
        Queries, a Flush before Sync). A transaction that has not run anything yet moves to the coordinator
        (False: relay it there); one that runs on workers cannot take it: the session ends, which rolls the
        transaction back (True)."""
        txn = self.txn
        if txn is None:
            return False
        if not txn.participants:
            self._to_coordinator(txn, b"")
            return False
        self.txn = None
        self.host.refuse(NOT_SUPPORTED, "pgfleet router: COPY, pipelined Queries or a Flush in a transaction "
                         f"that runs on worker {', '.join(txn.participants)} are not supported; the transaction was "
                         "rolled back", hint="send one Query, or one batch up to Sync, at a time in such transactions")
        return True

    def _aborted(self) -> None:
        self.host.write(error(IN_FAILED_TRANSACTION, "current transaction is aborted, commands ignored until end "
                              "of transaction block") + ready("E"))

    def _fail(self, txn: Transaction, sqlstate: str, message: str, hint: str | None = None) -> None:
        txn.failed = True
        self.host.write(error(sqlstate, message, hint) + ready("E"))

    def _background(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``work`` while the session holds the client's next messages; resume after it in any case."""
        async def run() -> None:
            try:
                await work()
            except Exception:
                log.exception("transaction handling failed; the transaction is rolled back")
                await self._internal_failure()
            finally:
                self.host.resume()

        self.host.spawn(run())

    async def _internal_failure(self) -> None:
        txn, self.txn = self.txn, None
        if txn is not None:
            await run_everywhere(list(txn.participants.values()), "ROLLBACK")
        self.host.write(error("XX000", "pgfleet router: internal error in transaction handling; the "
                              "transaction was rolled back", "see the router's log") + ready("I"))

    # --- transaction-control statements -------------------------------------------------------------
    def _control(self, txn: Transaction, ctl: Control, text: str, raw: bytes) -> None:
        kind = ctl.kind
        if kind is Kind.COMMIT:
            self._background(lambda: self._commit(txn, ctl))
        elif kind is Kind.ROLLBACK:
            self._background(lambda: self._rollback(txn, ctl))
        elif txn.failed and kind is not Kind.ROLLBACK_TO:
            self._aborted()
        elif kind is Kind.BEGIN:
            self.host.write(warning(ACTIVE_TRANSACTION, "there is already a transaction in progress")
                            + complete(ctl.tag) + ready("T"))
        elif kind is Kind.SET_TRANSACTION:
            if txn.participants:
                self._fail(txn, NOT_SUPPORTED, "pgfleet router: SET TRANSACTION after the transaction's first "
                           "statement is not supported", "put the transaction modes in BEGIN")
            else:
                txn.options = txn.options.merged(ctl.options)
                self.host.write(complete(ctl.tag) + ready("T"))
        elif kind is Kind.TWO_PHASE:
            if txn.participants:
                self._fail(txn, NOT_SUPPORTED, f"pgfleet router: {ctl.tag} in a transaction that runs on workers "
                           "is not supported", "the router commits such transactions itself: use COMMIT")
            else:
                self._to_coordinator(txn, raw)
        elif kind in (Kind.RELEASE, Kind.ROLLBACK_TO) and ctl.savepoint not in txn.savepoints:
            self._fail(txn, NO_SAVEPOINT, f'savepoint "{ctl.savepoint}" does not exist')
        elif txn.participants:
            self._background(lambda: self._savepoint_everywhere(txn, ctl, text))
        else:
            self._apply_savepoint(txn, ctl)
            self.host.write(complete(ctl.tag) + ready("T"))

    @staticmethod
    def _apply_savepoint(txn: Transaction, ctl: Control) -> None:
        names = txn.savepoints
        if ctl.kind is Kind.SAVEPOINT:
            names.append(ctl.savepoint)
            return
        last = len(names) - 1 - names[::-1].index(ctl.savepoint)
        if ctl.kind is Kind.RELEASE:
            del names[last:]
        else:  # ROLLBACK TO keeps the savepoint itself
            del names[last + 1:]
            txn.failed = False

    async def _savepoint_everywhere(self, txn: Transaction, ctl: Control, text: str) -> None:
        nodes = list(txn.participants)
        replies = await run_everywhere(list(txn.participants.values()), text)
        for node, reply in zip(nodes, replies, strict=True):
            if reply is None:
                await self._lost(txn, node)
                return
        failure = next((e for r in replies if r is not None and (e := first_error(r)) is not None), None)
        if failure is not None:
            txn.failed = True
            self.host.write(failure.encode() + ready("E"))
            return
        self._apply_savepoint(txn, ctl)
        self.host.write(complete(ctl.tag) + ready("T"))

    def _end(self, txn: Transaction, ctl: Control, tag: str) -> None:
        """The transaction is over; COMMIT / ROLLBACK AND CHAIN starts the next with the same modes."""
        self.txn = Transaction(txn.options) if ctl.chain else None
        self.host.write(complete(tag) + ready("T" if ctl.chain else "I"))

    async def _rollback(self, txn: Transaction, ctl: Control) -> None:
        if txn.participants:
            if len(txn.participants) == 1:
                self.stats.worker_transactions += 1
            await self._rollback_all(txn)
        self._end(txn, ctl, "ROLLBACK")

    async def _rollback_all(self, txn: Transaction) -> None:
        nodes = list(txn.participants)
        replies = await run_everywhere(list(txn.participants.values()), "ROLLBACK")
        for node, reply in zip(nodes, replies, strict=True):
            if reply is None:
                self.host.drop_worker(node)  # its transaction ends with the connection

    async def _commit(self, txn: Transaction, ctl: Control) -> None:
        if txn.failed:
            await self._rollback_all(txn)
            self._end(txn, ctl, "ROLLBACK")
        elif not txn.participants:
            self._end(txn, ctl, "COMMIT")
        elif len(txn.participants) == 1:
            [(node, conn)] = txn.participants.items()
            self.stats.worker_transactions += 1
            try:
                reply = await conn.exchange("COMMIT")
            except BackendError:
                self.host.drop_worker(node)
                self.txn = None
                self.host.write(error(CONNECTION_FAILURE, f"pgfleet router: the connection to worker {node} was lost "
                                      "during COMMIT; the transaction may or may not have committed",
                                      "check the rows, then retry") + ready("I"))
                return
            failure = first_error(reply)
            if failure is not None:  # a deferred constraint, a serialization failure: rolled back
                self.txn = None
                self.host.write(failure.encode() + ready("I"))
            else:
                self._end(txn, ctl, tags(reply)[-1] if tags(reply) else "COMMIT")
        elif self.twophase is None:  # joining a second worker is refused then; kept for safety
            await self._rollback_all(txn)
            self.txn = None
            self.host.write(error(NOT_SUPPORTED, "pgfleet router: no two-phase commit here") + ready("I"))
        else:
            await self._two_phase(txn, ctl, self.twophase)

    async def _two_phase(self, txn: Transaction, ctl: Control, twophase: TwoPhase) -> None:
        with twophase.gids.issued() as gid:
            await self._prepare_and_commit(txn, ctl, twophase, gid)

    async def _prepare_and_commit(self, txn: Transaction, ctl: Control, twophase: TwoPhase, gid: str) -> None:
        outcome: Unprepared | bytes | None
        if txn.coordinator in txn.participants:  # a reference-table write joined it: the coordinator commits last
            assert txn.coordinator is not None
            outcome = await commit_on_coordinator(gid, txn.coordinator, txn.participants, self.host.drop_worker,
                                                  DISARM if txn.copies_armed else "")
        else:
            outcome = await prepare_everywhere(gid, txn.participants, self.host.drop_worker)
            if outcome is None:
                outcome = await commit_prepared(twophase, gid, txn.participants, self.host.drop_worker)
        if outcome is None:
            self.stats.two_phase_commits += 1
            self._end(txn, ctl, "COMMIT")  # decided: durable, recovery finishes what is left
            return
        self.txn = None
        if isinstance(outcome, Unprepared):
            outcome = outcome.error.encode() if outcome.error is not None else error(
                CONNECTION_FAILURE if outcome.lost else TRANSACTION_ROLLBACK,
                f"pgfleet router: the transaction could not be prepared on worker {', '.join(outcome.refused)}; "
                "it was rolled back", "retry the transaction")
        self.host.write(outcome + ready("I"))

    # --- other statements ----------------------------------------------------------------------------
    def _statement(self, txn: Transaction, text: str, raw: bytes) -> None:
        decision = self.host.route(text)
        plan = decision.route if decision is not None and decision.keeps_state else None
        if (runs_in_transaction(plan) or isinstance(plan, Shard)) and self.refused_stale(txn, text):
            return
        if runs_in_transaction(plan) and (self.twophase is not None or not plan.writes):
            assert decision is not None
            self._background(lambda: self._multishard(txn, plan, decision, text, raw))
        elif decision is not None and decision.keeps_state and isinstance(decision.route, Shard):
            route = decision.route
            if route.node not in txn.participants and txn.participants and self.twophase is None:
                self._fail(txn, NOT_SUPPORTED, "pgfleet router: this router cannot commit over several workers")
                return
            joined = txn.participants.get(route.node)
            if joined is not None and route.shard_index >= 0:
                self._on_joined(txn, route, text, joined)  # the usual statement: no task
            else:
                self._background(lambda: self._on_worker(txn, route, text, raw))
        elif (move := self.elsewhere(txn, decision, raw, text)) is not None:
            self._background(lambda: move)

    def elsewhere(self, txn: Transaction, decision: Decision | None, raw: bytes,
                  text: str | None = None) -> Coroutine[Any, Any, None] | None:
        """A statement the workers cannot run in this transaction: the coordinator takes the transaction when
        nothing ran on workers yet, or when only reads ran there in READ COMMITTED; it joins the transaction
        for a reference-table write (``text``) after writes on workers; else the statement is refused. A
        move or a join needs a round trip: it is returned, for the caller to run in the background or to
        await when it runs there already."""
        route = self.joining(txn, text) if text is not None else None
        if route is not None:
            return self._on_worker(txn, route[0], text or "", raw, route[1])
        if not txn.participants:
            self._coordinator_takes(txn, decision, raw)
        elif txn.has_written():
            self._needs_coordinator(txn, decision, "wrote on")
        else:
            return self._move_to_coordinator(txn, decision, raw)
        return None

    async def _multishard(self, txn: Transaction, plan: MultiShard, decision: Decision, text: str, raw: bytes,
                          finish: Finish | None = None) -> None:
        """A scatter/gather read or a multi-shard write on the transaction's connections (:mod:`.txnplan`);
        ``finish`` reworks the reply on one of them (binary results of the extended protocol)."""
        joined_before = set(txn.participants)
        host = PlanInTransaction(lambda node: self._join(txn, node), self.host.superuser, self.host.user,
                                 writer=self.host.write if finish is None else None, pacer=self.host.pace,
                                 describe=self.host.coordinator_description if raw[:1] == b"Q" else None)
        reply = await plan.run_in_transaction(host)
        if host.lost:
            await self._lost(txn, host.lost[0])
            return
        if finish is not None and reply is not None and txn.participants:
            node, conn = next(iter(txn.participants.items()))
            try:
                reply = await finish(conn, reply)
            except BackendError:
                await self._lost(txn, node)
                return
        if reply is None:  # nothing ran (a result type the router cannot combine): as a statement it cannot route
            new = {n: c for n, c in txn.participants.items() if n not in joined_before}
            await run_everywhere(list(new.values()), "ROLLBACK")  # they only ran BEGIN
            for node in new:
                del txn.participants[node]
            if (move := self.elsewhere(txn, decision, raw)) is not None:
                await move  # already in the background
            return
        self.stats.routed += 1
        if plan.writes:
            txn.wrote = True
        else:
            txn.unchecked.append(text)
        reply, failed = in_transaction_status(reply)
        txn.failed = txn.failed or failed
        self.host.write(reply)

    async def _join(self, txn: Transaction, node: str) -> WorkerConnection:
        """The transaction's connection to ``node``, which joins the transaction first when it is new."""
        conn = txn.participants.get(node)
        if conn is not None:
            return conn
        conn = await self.host.worker(node)
        setup = self._setup(txn, conn)
        txn.participants[node] = conn  # from now on it is rolled back with the transaction
        reply = await conn.exchange(";\n".join(setup))
        failure = first_error(reply)
        if failure is not None:
            raise BackendError(f"worker {node} refused to join the transaction: {failure.message}")
        return conn

    def _needs_coordinator(self, txn: Transaction, decision: Decision | None, what: str) -> None:
        reason = getattr(decision.route, "reason", "") if decision is not None else ""
        workers = [node for node in txn.participants if node != txn.coordinator]
        where = f"worker {', '.join(workers)}" if workers else ""
        if txn.coordinator in txn.participants:  # joined for a reference-table write: the coordinator's connection
            where += f"{' and ' if where else ''}a connection of the coordinator's ({txn.coordinator})"
        self._fail(txn, NOT_SUPPORTED,
                   f"pgfleet router: this transaction {what} {where}; this statement "
                   f"needs the coordinator{f' ({reason})' if reason else ''} and cannot join it",
                   "run it in its own transaction, or as the first statement of a transaction (which then runs "
                   "on the coordinator); send one statement per Query in a transaction")

    async def _move_to_coordinator(self, txn: Transaction, decision: Decision | None, raw: bytes) -> None:
        """Only plain SELECTs ran on the workers: in READ COMMITTED (a new snapshot per statement anyway) the
        transaction moves to the coordinator, its worker parts ended. In REPEATABLE READ or SERIALIZABLE
        its snapshot is on the workers: refused."""
        node, conn = next(iter(txn.participants.items()))
        try:
            reply = await conn.exchange("SHOW transaction_isolation")
        except BackendError:
            await self._lost(txn, node)
            return
        rows = [p.decode_backend(t, payload) for t, payload in messages(reply) if t == b"D"]
        level = rows[0].values[0] if rows and isinstance(rows[0], p.DataRow) and rows[0].values else None
        if level not in (b"read committed", b"read uncommitted"):
            self._needs_coordinator(txn, decision, "holds its snapshot (repeatable read or serializable) on")
            return
        await self._rollback_all(txn)  # plain SELECTs: nothing to keep
        txn.participants.clear()
        self._coordinator_takes(txn, decision, raw)

    def _coordinator_takes(self, txn: Transaction, decision: Decision | None, raw: bytes) -> None:
        if decision is None or not decision.keeps_state:
            self.host.pin()  # it may change session state: the coordinator's from now on
        self._to_coordinator(txn, raw)

    def _to_coordinator(self, txn: Transaction, raw: bytes) -> None:
        setup = [txn.options.begin(), *(f"SAVEPOINT {sql.Identifier(s).as_string()}" for s in txn.savepoints)]
        self.txn = None  # the coordinator has it from now on
        self.stats.coordinator_transactions += 1
        self.host.to_coordinator("; ".join(setup), raw)

    def _setup(self, txn: Transaction, conn: WorkerConnection) -> list[str]:
        """What a joining worker runs before the statement: BEGIN, the session's role, the savepoints."""
        setup = [txn.options.begin()]
        role = self.host.role_on(conn)
        if role != conn.user:
            setup.append(f"SET LOCAL ROLE {sql.Identifier(role).as_string()}")
        setup += [f"SAVEPOINT {sql.Identifier(s).as_string()}" for s in txn.savepoints]
        return setup

    async def _on_worker(self, txn: Transaction, route: Shard, route_text: str, raw: bytes,
                         write: CoordinatorPart | None = None) -> None:
        """``write``: the statement is a reference-table write on the coordinator (:mod:`.refcopies`)."""
        conn = txn.participants.get(route.node)
        setup: list[str] = []
        if conn is None:
            try:
                conn = await self.host.worker(route.node)
            except BackendError as exc:
                if not txn.participants:  # nothing ran yet: the coordinator takes the transaction
                    log.warning("cannot reach %s, the transaction goes to the coordinator: %s", route.node, exc)
                    self._to_coordinator(txn, raw)
                else:
                    self._fail(txn, CONNECTION_FAILURE, f"pgfleet router: cannot connect to worker {route.node}: {exc}",
                               "roll back (to a savepoint) and retry")
                return
            setup = self._setup(txn, conn)
        before, copies = self.copies_setup(txn, conn, write) if write is not None else ([], False)
        self.host.running_on = conn
        try:
            text = ";\n".join([*setup, *before, route.sql])  # the statement last: a -- comment ends it
            reply = await conn.exchange(text)
        except BackendError:
            await self._lost(txn, route.node)
            return
        finally:
            self.host.running_on = None
        if setup:
            txn.participants[route.node] = conn
        if setup or before:
            reply = without_setup(reply, len(setup) + len(before))
        if copies and write is not None and status_of(reply) != b"E":
            copied = await self.write_copies(txn, write, reply, lambda _, setup: (
                p.Query(";\n".join([*setup, route.sql])).encode(), None))
            if copied is None:
                return
            reply = copied
        names = self.host.logical() if route.shard_index >= 0 else None  # the coordinator's names are logical
        if names is not None:
            reply = await names.shape(route, conn, reply, conn.flagged)
        self._answered(txn, route, route_text, reply, resume=False)  # _background resumes

    async def _lost(self, txn: Transaction, node: str) -> None:
        """A participant's connection broke: its transaction is gone, so is the client's."""
        self.host.drop_worker(node)
        txn.participants.pop(node, None)
        await self._rollback_all(txn)
        self.txn = None
        self.host.write(error(CONNECTION_FAILURE, f"pgfleet router: the connection to worker {node} was lost during "
                              "the transaction; the transaction was rolled back", "retry the transaction") + ready("I"))
