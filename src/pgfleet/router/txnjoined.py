"""The usual statement of a router transaction: single-shard, on a worker that is in the transaction already.
It goes out with a callback and no task (as autocommit statements do, :mod:`.routedquery`); the
:class:`JoinedStatements` side of :class:`~.txn.TransactionControl`, which also ends every statement it
runs on a worker with :meth:`JoinedStatements._answered`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from . import protocol as p
from .backend import BackendError, WorkerConnection
from .logical import finish_routed
from .routes import Shard
from .stats import RouterStats
from .twophase import status_of
from .txnreply import without_parameter_status
from .txnstate import UNCHECKED_LIMIT, Host, Transaction

log = logging.getLogger(__name__)


class JoinedStatements:
    """Mixed into :class:`~.txn.TransactionControl`, which defines the methods declared here."""

    host: Host
    stats: RouterStats

    def _background(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        raise NotImplementedError

    async def _lost(self, txn: Transaction, node: str) -> None:
        raise NotImplementedError

    def _on_joined(self, txn: Transaction, route: Shard, route_text: str, conn: WorkerConnection) -> None:
        """Run ``route`` on ``conn``, the transaction's connection to its worker (:meth:`send_joined`)."""
        host = self.host

        def answered(reply: bytes) -> None:
            if (names := host.logical()) is not None:  # the coordinator's names and oids
                finish_routed(names, route, conn, reply, lambda out: self._answered(txn, route, route_text, out),
                              host.spawn)
            else:
                self._answered(txn, route, route_text, reply)

        self.send_joined(txn, route.node, conn, p.Query(route.sql).encode(), answered)

    def send_joined(self, txn: Transaction, node: str, conn: WorkerConnection, request: bytes,
                    answered: Callable[[bytes], None]) -> None:
        """Send ``request`` on ``conn``, the transaction's connection to ``node``, with a callback: ``answered``
        gets the reply and answers the client (then resumes the session); the client's next messages wait
        for it. A broken connection ends the transaction (:meth:`_lost`), and a failure in ``answered`` rolls
        it back, as on the task path."""
        host = self.host
        host.wait_for_answer()
        host.running_on = conn

        def done(reply: bytes | None) -> None:
            host.running_on = None
            try:
                if reply is None:
                    self._background(lambda: self._lost(txn, node))
                else:
                    answered(reply)
            except Exception:  # as _background does with a failing task: nothing of the transaction is kept
                log.exception("transaction handling failed; the transaction is rolled back")
                self._background(self._internal_failure)

        try:
            conn.send(request, done)
        except BackendError:  # not sent: the connection is gone, and the transaction's work there with it
            host.running_on = None
            self._background(lambda: self._lost(txn, node))

    async def _internal_failure(self) -> None:
        raise NotImplementedError

    def _answered(self, txn: Transaction, route: Shard, route_text: str, reply: bytes, *, resume: bool = True,
                  write: Callable[[bytes], None] | None = None) -> None:
        """The worker's ``reply`` (in the logical tables' names) to the client (``write``: instead of the host's
        write, which reshapes a simple Query's answer); what the statement tells of the transaction recorded:
        whether it may have written, whether it failed."""
        self.stats.routed += 1
        if route.shard_index < 0:
            txn.wrote = True
            self.stats.coordinator_parts += 1
        elif not txn.wrote:
            txn.unchecked.append(route_text)
            if len(txn.unchecked) > UNCHECKED_LIMIT:
                txn.has_written()
        if status_of(reply) == b"E":
            txn.failed = True
            reply = without_parameter_status(reply)
        (write or self.host.write)(reply)
        if resume:
            self.host.resume()
