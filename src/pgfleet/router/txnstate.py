"""The state of a client transaction through the router, and what the transaction machine
(:mod:`.txn`) needs of the client session."""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .backend import WorkerConnection
from .logical import LogicalNames
from .refpart import CoordinatorPart, TableName
from .routes import Shard
from .routing import Decision
from .txnstmt import BeginOptions, reads_only

UNCHECKED_LIMIT = 64  # statements kept unparsed before checking whether they wrote
# a reference-table write's request for a copy's connection, after the setup of a worker that joins the
# transaction (refcopies.py); and what records a statement parsed there, if it parses one
CopyRequest = Callable[[WorkerConnection, list[str]], tuple[bytes, Callable[[], None] | None]]


class Host(Protocol):
    """What the state machine needs of its client session."""

    user: str
    superuser: bool
    running_on: WorkerConnection | None

    def write(self, data: bytes) -> None: ...  # to the client
    def role_on(self, conn: WorkerConnection) -> str: ...  # the role statements run as on that connection
    def pin(self) -> bool: ...  # always False
    def route(self, sql: str) -> Decision | None: ...  # None: analysis failed
    def coordinator_part(self, sql: str) -> tuple[Shard, CoordinatorPart] | None: ...  # see :mod:`.refpart`
    async def worker(self, node: str) -> WorkerConnection: ...
    def drop_worker(self, node: str) -> None: ...
    def pace(self, conns: Sequence[WorkerConnection]) -> None: ...  # pause them while the client is full
    def to_coordinator(self, setup: str, raw: bytes) -> None: ...  # setup's answer is not relayed
    def spawn(self, coro: Coroutine[Any, Any, None]) -> None: ...  # the client's next messages wait for it
    def wait_for_answer(self) -> None: ...  # the client's next messages wait until resume()
    def resume(self) -> None: ...  # the statement is answered: go on with what the client sent meanwhile
    def logical(self) -> LogicalNames | None: ...  # a routed reply in the logical tables' names and oids
    def refuse(self, sqlstate: str, message: str, hint: str | None = None) -> None: ...  # error, then close
    async def coordinator_description(self, sql: str) -> bytes | None: ...  # its RowDescription on the coordinator


@dataclass
class Transaction:
    options: BeginOptions
    participants: dict[str, WorkerConnection] = field(default_factory=dict)  # by node, in joining order
    savepoints: list[str] = field(default_factory=list)
    failed: bool = False
    wrote: bool = False  # a statement on a worker may have written or locked rows
    unchecked: list[str] = field(default_factory=list)  # statements run on workers, not yet checked for writes
    coordinator: str | None = None  # the coordinator's node name once it joined (a reference-table write)
    reference_written: frozenset[TableName] = frozenset()  # reference tables written there, not yet on the copies
    copies_armed: bool = False  # the coordinator's connection may still have pgfleet.copies_written set

    def has_written(self) -> bool:
        """Whether a statement run on a worker may have written or locked rows (parsed only when asked)."""
        if not self.wrote and self.unchecked:
            self.wrote = not all(reads_only(text) for text in self.unchecked)
            self.unchecked.clear()
        return self.wrote
