"""The coordinator as a participant of a client's router transaction (:mod:`.refpart`, :mod:`.refcopies`):
the :class:`CoordinatorParts` side of :class:`~.txn.TransactionControl` — whether a statement joins,
what the coordinator runs before it, the copies the router writes in the transaction, and the refusal of
a statement that would read on a worker a reference table whose copies change only at COMMIT."""

from __future__ import annotations

import asyncio

from .backend import BackendError, WorkerConnection
from .refcopies import DISARM, arm, before_completion, write_copies
from .refpart import CoordinatorPart, reads_table
from .routes import Shard
from .stats import RouterStats
from .twophase import TwoPhase
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

    def coordinator_joins(self, txn: Transaction, text: str) -> tuple[Shard, CoordinatorPart] | None:
        """The route of a reference-table write on the coordinator as a participant (:mod:`.refpart`), which
        the transaction records; None when ``text`` is not one or nothing could commit it."""
        found = self.host.coordinator_part(text) if self.twophase is not None else None
        if found is not None:
            txn.coordinator = found[0].node
        return found

    def copies_setup(self, txn: Transaction, conn: WorkerConnection, write: CoordinatorPart) -> tuple[list[str], bool]:
        """What the coordinator runs before a reference-table write, and whether the router writes the copies
        itself (:mod:`.refcopies`; its login must be a superuser for that) rather than the table's trigger."""
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
        async def lease(node: str) -> tuple[WorkerConnection, list[str]]:
            conn = txn.participants.get(node)
            if conn is not None:
                return conn, []
            conn = await self.host.worker(node)
            txn.participants[node] = conn  # from now on it is rolled back with the transaction
            return conn, self._setup(txn, conn)

        leased = await asyncio.gather(*(lease(node) for node in write.copies), return_exceptions=True)
        conns: list[WorkerConnection] = []
        requests = []
        for node, got in zip(write.copies, leased, strict=True):
            if isinstance(got, BaseException):
                if not isinstance(got, BackendError):
                    raise got
                await self._lost(txn, node)
                return None
            conns.append(got[0])
            requests.append(request_for(*got))
        done = await write_copies(write, conns, [request for request, _ in requests], reply)
        if done.lost:
            await self._lost(txn, done.lost[0])
            return None
        if done.failure is not None:
            txn.failed = True
            return before_completion(reply) + done.failure + ready("E")
        for _, parsed in requests:
            if parsed is not None:
                parsed()
        self.stats.reference_copies_written += 1
        return reply

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
