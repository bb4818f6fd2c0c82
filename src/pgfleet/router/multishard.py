"""Statements the router runs itself over several shards: the planner registry and what a plan may use
of the session that runs it.

A planner (registered in :mod:`.planners`) looks at one parsed statement that single-shard analysis (:mod:`.analyze`) sent to the
coordinator and returns a :class:`~.routes.MultiShard` plan when it can run the statement itself with
the same result as the coordinator (types, NULLs, errors), or None. Planners are pure (no I/O): they
are tested on the plans they build. Plans run in a session that is idle: in autocommit (``run``), or, for
plans marked ``transactional`` (scatter/gather reads, multi-shard writes), inside the client's transaction
on its connections (``run_in_transaction``, :mod:`.txnplan`). Statements sent with the extended protocol
reach the planners with their values inlined (:mod:`.extmulti`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from pglast import ast

from . import protocol as p
from .backend import WorkerConnection
from .routes import MultiShard
from .snapshot import RoutingTopology
from .twophase import TwoPhase

log = logging.getLogger(__name__)

Planner = Callable[[ast.Node, str, RoutingTopology, tuple[str, ...]], MultiShard | None]


class MultiShardHost(Protocol):
    """The session, as a running plan sees it."""

    superuser: bool
    user: str
    streaming: bool  # a plain read may send its rows with ``stream`` as they come
    stream_head: bytes | None  # what goes before streamed rows instead of their RowDescription (extended protocol)

    async def worker(self, node: str) -> WorkerConnection:
        """This session's connection to ``node``'s primary (opened on first use; raises BackendError)."""
        ...

    def drop_worker(self, node: str) -> None:
        """Forget a broken connection (the next ``worker`` call opens a new one)."""
        ...

    def role_on(self, conn: WorkerConnection) -> str:
        """The role statements run as on ``conn`` (the client's; a superuser's is the router login)."""
        ...

    async def coordinator(self, sql: str) -> list[tuple[bytes, bytes]]:
        """Run one simple Query on the client's own coordinator connection (idle, autocommit, so under
        the client's role and settings) and return its reply up to ReadyForQuery, not relayed."""
        ...

    async def described(self, sql: str) -> bytes | None:
        """The coordinator's RowDescription payload of the statement ``sql`` (its table oids, attribute numbers
        and type modifiers, which a result put together from the shards lacks), when the client gets the
        plan's RowDescription (simple Query); None otherwise or when it cannot be had."""
        ...

    def stream(self, data: bytes) -> None:
        """Send part of the reply to the client now (large results); ``run`` returns the rest."""
        ...

    def pace(self, conns: Sequence[WorkerConnection]) -> None:
        """Pause reading these connections whenever the client cannot take more of what ``stream`` sends;
        () ends it (and resumes them)."""
        ...

    def listen(self, listener: Callable[[bytes], None] | None) -> None:
        """Hand the client's bytes to ``listener`` as they come (b'': the client is gone) instead of holding
        them for after the plan (COPY FROM STDIN data); bytes held already go to it at once. None: hold
        them again."""
        ...

    def hold(self, data: bytes) -> None:
        """Give back client bytes a listener read but does not take (what follows CopyDone): they are
        handled after the plan, before anything newer."""
        ...

    def pause_client(self) -> None:
        """Stop reading from the client (a listener has enough buffered) until ``resume_client``."""
        ...

    def resume_client(self) -> None:
        ...

    @property
    def twophase(self) -> TwoPhase | None:
        """Global transaction ids and the store of commit decisions for PREPARE TRANSACTION (recovered
        by :mod:`.recovery`); None: no multi-node commit is possible in this router."""
        ...


async def run_guarded(plan: MultiShard, host: MultiShardHost) -> bytes | None:
    """``plan.run``; a bug in a plan becomes an XX000 error for the client (the plan may have run somewhere)."""
    try:
        return await plan.run(host)
    except Exception:
        log.exception("%s statement failed in the router", plan.description)
        return p.error_response("XX000", f"pgfleet router: the {plan.description} statement failed in the router; "
                                "see the router's log", severity="ERROR").encode() + p.ReadyForQuery("I").encode()
