"""The coordinator as a participant of a client's router transaction (:mod:`.refpart`, :mod:`.refcopies`):
the :class:`CoordinatorParts` side of :class:`~.txn.TransactionControl` — whether a statement joins,
what the coordinator runs before it, the copies the router writes in the transaction, and the refusal of
a statement that would read on a worker a reference table whose copies change only at COMMIT."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .backend import BackendError, WorkerConnection
from .refcopies import (
    DISARM,
    CopiesDone,
    apply_queued,
    arm,
    before_completion,
    queued_request,
    take_queued,
    taken,
    write_copies,
)
from .refpart import CoordinatorPart, reads_table
from .routes import Shard
from .stats import RouterStats
from .twophase import TwoPhase, first_error
from .txnreply import NOT_SUPPORTED, ready
from .txnstate import CopyRequest, Host, Transaction


class CoordinatorParts:
    """Mixed into :class:`~.txn.TransactionControl`, which defines the methods declared here."""

    host: Host
    stats: RouterStats
    twophase: TwoPhase | None

    def _fail(self, txn: Transaction, sqlstate: str, message: str, hint: str | None = None) -> None:
        raise NotImplementedError

    async def _lost(self, txn: Transaction, node: str) -> None:
        raise NotImplementedError

    def _setup(self, txn: Transaction, conn: WorkerConnection) -> list[str]:
        raise NotImplementedError

    def joining(self, txn: Transaction, text: str) -> tuple[Shard, CoordinatorPart] | None:
        """The coordinator's route when it joins the transaction as a participant for ``text`` (:mod:`.refpart`),
        which the transaction records; None when it does not join (or nothing could commit it).

        After writes on workers it joins for any such statement. For a transaction's first statement it
        joins only for a reference-table write whose copies the router writes in the transaction, so that
        later statements run on the workers and see the write there (an ORM's new row that a distributed
        row then refers to); otherwise the coordinator takes the transaction, as for any other statement
        the workers cannot run."""
        if txn.participants and not txn.has_written():
            return None
        found = self.host.coordinator_part(text) if self.twophase is not None else None
        if found is None or (not txn.participants and not found[1].copies):
            return None
        txn.coordinator = found[0].node
        return found

    def copies_setup(self, txn: Transaction, conn: WorkerConnection, write: CoordinatorPart) -> tuple[list[str], bool]:
        """What the coordinator runs before a reference-table write, and whether the router writes the copies
        itself (:mod:`.refcopies`; its login must be a superuser for that) rather than the table's trigger."""
        if write.copies and conn.superuser and write.from_queue:
            return [DISARM] if txn.copies_armed else [], True  # the trigger queues; the router takes the queue
        if write.copies and conn.superuser:
            txn.copies_armed = True
            return [arm(write)], True
        if not write.local:
            txn.reference_written |= {write.table}
        return [DISARM] if txn.copies_armed else [], False

    async def write_copies(self, txn: Transaction, write: CoordinatorPart, reply: bytes,
                           request_for: CopyRequest) -> bytes | None:
        """After the coordinator wrote a reference table with ``reply``: the same write on every copy, on the
        transaction's connections (:mod:`.refcopies`); a worker that joins the transaction gets its setup in
        the same round trip. The client's reply; None when a connection was lost (the transaction is over,
        and the client told)."""
        if write.from_queue:
            return await self._copy_queued(txn, reply)
        leased = await self._lease(txn, write.copies)
        if leased is None:
            return None
        requests = [request_for(conn, setup) for conn, setup in leased]
        done = await write_copies(write, [conn for conn, _ in leased], [request for request, _ in requests], reply)
        if not done.ok:
            return await self._not_written(txn, done, reply)
        for _, parsed in requests:
            if parsed is not None:
                parsed()
        self.stats.reference_copies_written += 1
        return reply

    async def _copy_queued(self, txn: Transaction, reply: bytes) -> bytes | None:
        """After the coordinator wrote a reference table with ``reply``: the statements its trigger queued for
        the copies, taken off the queue and run on the transaction's connections (:mod:`.refcopies`). Every
        queued statement of the transaction goes, so none is left for COMMIT and every copy is current."""
        node = txn.coordinator
        assert node is not None
        coordinator = txn.participants[node]
        try:
            answer = await coordinator.exchange(take_queued(self.host.role_on(coordinator), coordinator.user))
        except BackendError:
            await self._lost(txn, node)
            return None
        error = first_error(answer)
        if error is not None:
            txn.failed = True
            return before_completion(reply) + error.encode() + ready("E")
        entries = taken(answer)
        nodes = sorted({entry.node for entry in entries})
        leased = await self._lease(txn, nodes)
        if leased is None:
            return None
        requests = [queued_request([e for e in entries if e.node == node], setup, self.host.role_on(conn), conn.user)
                    for node, (conn, setup) in zip(nodes, leased, strict=True)]
        done = await apply_queued(nodes, [conn for conn, _ in leased], requests)
        if not done.ok:
            return await self._not_written(txn, done, reply)
        txn.reference_written = frozenset()  # nothing stays queued: every copy is current
        self.stats.reference_copies_written += 1
        return reply

    async def _lease(self, txn: Transaction, nodes: Sequence[str]) -> list[tuple[WorkerConnection, list[str]]] | None:
        """The transaction's connection to each node, with the setup of one that joins it; None when one
        could not be had (the transaction is over, and the client told)."""
        async def lease(node: str) -> tuple[WorkerConnection, list[str]]:
            conn = txn.participants.get(node)
            if conn is not None:
                return conn, []
            conn = await self.host.worker(node)
            txn.participants[node] = conn  # from now on it is rolled back with the transaction
            return conn, self._setup(txn, conn)

        leased = await asyncio.gather(*(lease(node) for node in nodes), return_exceptions=True)
        found = []
        for node, got in zip(nodes, leased, strict=True):
            if isinstance(got, BaseException):
                if not isinstance(got, BackendError):
                    raise got
                await self._lost(txn, node)
                return None
            found.append(got)
        return found

    async def _not_written(self, txn: Transaction, done: CopiesDone, reply: bytes) -> bytes | None:
        """The client's reply when writing the copies failed; None when a connection was lost (the transaction
        is over, and the client told)."""
        if done.lost:
            await self._lost(txn, done.lost[0])
            return None
        assert done.failure is not None
        txn.failed = True
        return before_completion(reply) + done.failure + ready("E")

    def refused_stale(self, txn: Transaction, text: str) -> bool:
        """Whether ``text``, to run on workers, reads a reference table that this transaction wrote on the
        coordinator (the workers' copies change only at COMMIT): then it is refused and the transaction fails."""
        table = reads_table(text, txn.reference_written) if txn.reference_written else None
        if table is None:
            return False
        self._fail(txn, NOT_SUPPORTED, f"pgfleet router: this transaction wrote reference table {table[0]}.{table[1]} "
                   "on the coordinator; this statement would read it on a worker, whose copy changes only at COMMIT",
                   "read the table before writing it in the transaction, or commit first; a transaction whose first "
                   "statement writes the reference table runs on the coordinator and sees its own writes everywhere")
        return True
