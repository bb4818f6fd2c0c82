"""Multi-shard statements inside a client transaction (scatter/gather reads, multi-shard writes): the plan
runs on the transaction's own worker connections, so it sees the transaction's writes and its writes commit
with the transaction (two-phase commit when several nodes took part, :mod:`.txn`). A node the transaction
has not reached yet joins it first: ``BEGIN <modes>; [SET LOCAL ROLE …;] <savepoints>`` in one round trip.

:class:`PlanInTransaction` is the :class:`~.multishard.MultiShardHost` such a plan sees; what it cannot do
there (hand the statement to the coordinator, read the client's COPY data) it refuses. A plain read answering a
simple Query streams its rows to the client (``writer``) as it does in autocommit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeGuard

from .backend import BackendError, WorkerConnection
from .routes import MultiShard
from .twophase import TwoPhase
from .txnreply import ready

Join = Callable[[str], Awaitable[WorkerConnection]]
Finish = Callable[[WorkerConnection, bytes], Awaitable[bytes | None]]  # a plan's reply reworked (None: unusable)


@dataclass
class PlanInTransaction:
    """The host of a plan run in a transaction: ``join(node)`` gives the transaction's connection to a node."""

    join: Join
    superuser: bool
    user: str
    writer: Callable[[bytes], None] | None = None  # to the client, for a plain read's rows as they come
    pacer: Callable[[Sequence[WorkerConnection]], None] | None = None
    lost: list[str] = field(default_factory=list)  # nodes whose connection broke: the transaction is gone
    describe: Callable[[str], Awaitable[bytes | None]] | None = None  # a simple Query's: the coordinator's description

    def __post_init__(self) -> None:
        self.streaming = self.writer is not None
        self.stream_head: bytes | None = None

    async def worker(self, node: str) -> WorkerConnection:
        try:
            return await self.join(node)
        except BackendError:
            self.lost.append(node)
            raise

    def drop_worker(self, node: str) -> None:
        self.lost.append(node)

    def role_on(self, conn: WorkerConnection) -> str:
        return conn.user  # the transaction set the client's role on the connection when it joined

    async def coordinator(self, sql: str) -> list[tuple[bytes, bytes]]:
        raise BackendError("the coordinator is not part of this transaction")

    async def described(self, sql: str) -> bytes | None:
        return await self.describe(sql) if self.describe is not None else None

    def stream(self, data: bytes) -> None:
        assert self.writer is not None, "streamed without a writer"
        self.writer(data)

    def pace(self, conns: Sequence[WorkerConnection]) -> None:
        if self.pacer is not None:
            self.pacer(conns)

    def listen(self, listener: Callable[[bytes], None] | None) -> None:
        raise NotImplementedError("a plan that reads the client's bytes does not run in a transaction")

    def hold(self, data: bytes) -> None:
        raise NotImplementedError

    def pause_client(self) -> None:
        raise NotImplementedError

    def resume_client(self) -> None:
        raise NotImplementedError

    @property
    def twophase(self) -> TwoPhase | None:
        return None  # the transaction's COMMIT decides


def in_transaction_status(reply: bytes) -> tuple[bytes, bool]:
    """A plan's reply with the transaction's ReadyForQuery in place of its own, and whether it failed. A
    plan's reply that failed starts with its ErrorResponse (the plans build their replies that way)."""
    failed = reply[:1] == b"E"
    return reply[:-6] + ready("E" if failed else "T"), failed


def runs_in_transaction(route: object) -> TypeGuard[MultiShard]:
    return isinstance(route, MultiShard) and route.transactional
