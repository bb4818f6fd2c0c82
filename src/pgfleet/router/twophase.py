"""Two-phase commit of a router transaction over several workers, and the router's own superuser
connections to the coordinator where the decision is recorded.

Protocol (``pgfleet.commit_decisions``, see catalog.sql): PREPARE TRANSACTION '<gid>' on every
participant; any failure → ROLLBACK PREPARED where it was prepared, the client gets the error. Then the
owner INSERTs the decision row (outcome 'commit') in its own autocommit transaction on the coordinator:
once that committed, the transaction is committed. Then COMMIT PREPARED on every participant; one that
fails (a worker died) is finished by recovery (:mod:`.recovery`) from the row. The row is left for
recovery to delete in batches (one coordinator round trip per commit, not two).

A decision INSERT that fails on the primary key means recovery found the prepared transactions first
and decided 'abort': the owner rolls back. A decision whose answer was lost (the coordinator went away
after the INSERT was sent) is unknown to the owner: the prepared transactions stay for recovery, which
reads the row or, when there is none, writes 'abort'; the client gets 40003."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import itertools
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass
from typing import ClassVar
from collections.abc import Callable, Iterator, Mapping, Sequence

from psycopg import sql

from . import protocol as p
from . import wire
from ..node.server import process_alive
from .backend import BackendError, WorkerConnection, WorkerLogin

log = logging.getLogger(__name__)

GID_PREFIX = "pgfleet_rt_"  # 'pgfleet_xact_' is the coordinator's own DDL/reference-write two-phase commits
IDLE_DECISION_CONNECTIONS = 4
UNIQUE_VIOLATION = "23505"
TRANSACTION_ROLLBACK = "40000"
COMPLETION_UNKNOWN = "40003"


def literal(value: str | Sequence[str]) -> str:
    """A string or text[] literal for SQL the router sends itself (standard_conforming_strings on)."""
    return _quoted(value if isinstance(value, str) else tuple(value))


@functools.lru_cache(maxsize=512)
def _quoted(value: str | tuple[str, ...]) -> str:
    # kept: a transaction's gid is quoted for PREPARE, its decision and COMMIT PREPARED, and psycopg's quoting
    # costs more than the rest of making those statements
    return sql.Literal(value if isinstance(value, str) else list(value)).as_string(None)


class GidMaker:
    """Global ids of prepared transactions naming the router process (index, pid, start) and a counter."""

    KEPT = 120.0  # seconds a gid counts as this process's own (longer than recovery's owner grace)
    # every maker of this process: a process may run several routers (tests do), each with its recovery
    live: ClassVar[weakref.WeakSet[GidMaker]] = weakref.WeakSet()
    _live_lock: ClassVar[threading.Lock] = threading.Lock()  # recovery reads ``live`` from its thread

    _made: ClassVar[itertools.count[int]] = itertools.count(1)  # makers of this process so far

    def __init__(self, process_index: int) -> None:
        # the start field is unique per maker of the process: two routers of one process made in the same
        # second (tests) issued the same gids, and a later one met the earlier one's decision row for its
        # gid ("recovery aborted this transaction")
        start = f"{int(time.time()):x}x{next(GidMaker._made):x}"
        self.prefix = f"{GID_PREFIX}{process_index}_{os.getpid()}_{start}_"
        self._counter = itertools.count(1)
        self._issued: dict[str, float] = {}  # gid -> when, for recovery: a gid of ours is a session's to decide
        with GidMaker._live_lock:
            GidMaker.live.add(self)

    def next(self) -> str:
        gid = f"{self.prefix}{next(self._counter)}"
        now = time.monotonic()
        if len(self._issued) > 4096:
            self._issued = {g: t for g, t in self._issued.items() if now - t < self.KEPT}
        self._issued[gid] = now
        return gid

    def done(self, gid: str) -> None:
        """The session that prepared ``gid`` is finished with it (committed, rolled back, or left to recovery)."""
        self._issued.pop(gid, None)

    @contextlib.contextmanager
    def issued(self) -> Iterator[str]:
        """A new gid, this process's to decide until the block ends."""
        gid = self.next()
        try:
            yield gid
        finally:
            self.done(gid)

    def owner_alive(self, gid: str) -> bool:
        """Whether the router process that made ``gid`` may still decide it: this one (a gid one of its
        sessions is still committing), or another live process on this machine
        (``pgfleet_rt_<index>_<pid>_<start>_<n>``)."""
        parts = gid.removeprefix(GID_PREFIX).split("_")
        if len(parts) != 4 or not parts[1].isdigit():
            return False
        if int(parts[1]) != os.getpid():
            return process_alive(int(parts[1]))
        now = time.monotonic()  # this process: a session of one of its routers is still committing it
        with GidMaker._live_lock:
            makers = list(GidMaker.live)
        return any(now - issued < self.KEPT for maker in makers
                   if (issued := maker._issued.get(gid)) is not None)


# --- replies ------------------------------------------------------------------------------------------
def messages(reply: bytes) -> list[tuple[bytes, bytes]]:
    return wire.Framer().feed(reply)


def first_error(reply: bytes) -> p.ErrorResponse | None:
    for type_byte, payload in messages(reply):
        if type_byte == b"E":
            message = p.decode_backend(type_byte, payload)
            assert isinstance(message, p.ErrorResponse)
            return message
    return None


def tags(reply: bytes) -> list[str]:
    return [payload[:-1].decode() for type_byte, payload in messages(reply) if type_byte == b"C"]


def status_of(reply: bytes) -> bytes:
    """The transaction status of a reply that ends in ReadyForQuery (I, T or E)."""
    return reply[-1:]


# --- decisions --------------------------------------------------------------------------------------------
class Decision(enum.Enum):
    COMMITTED = "committed"  # the row is committed: the transaction is committed
    REFUSED = "refused"  # the row is not there (recovery decided 'abort', or the INSERT failed): roll back
    UNKNOWN = "unknown"  # sent, answer lost: recovery decides


def decision_insert(gid: str, nodes: Sequence[str]) -> str:
    return (f"INSERT INTO pgfleet.commit_decisions (gid, outcome, nodes) "
            f"VALUES ({literal(gid)}, 'commit', {literal(nodes)}::text[])")


class DecisionStore:
    """Router-owned superuser connections to the coordinator (a few kept idle), for decision rows."""

    def __init__(self, login: Callable[[], WorkerLogin]) -> None:
        self.login = login
        self._idle: list[WorkerConnection] = []

    async def _acquire(self) -> WorkerConnection:
        while self._idle:
            conn = self._idle.pop()
            if not conn.broken:
                return conn
        return await WorkerConnection.open(self.login())

    def _release(self, conn: WorkerConnection) -> None:
        if conn.broken or len(self._idle) >= IDLE_DECISION_CONNECTIONS:
            conn.close()
        else:
            self._idle.append(conn)

    async def record_commit(self, gid: str, nodes: Sequence[str]) -> tuple[Decision, str]:
        """Insert the 'commit' row for ``gid``; the outcome and, unless committed, why."""
        try:
            conn = await self._acquire()
        except BackendError as exc:
            return Decision.REFUSED, f"cannot reach the coordinator to record the commit decision: {exc}"
        statement = decision_insert(gid, nodes)
        try:
            reply = await conn.exchange(statement)
        except BackendError as exc:
            conn.close()
            return Decision.UNKNOWN, f"the coordinator connection was lost while recording the commit decision: {exc}"
        self._release(conn)
        error = first_error(reply)
        if error is None:
            return Decision.COMMITTED, ""
        if error.sqlstate == UNIQUE_VIOLATION:
            return Decision.REFUSED, "recovery aborted this transaction while its commit was delayed"
        return Decision.REFUSED, f"could not record the commit decision: {error.message}"

    def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def run_everywhere(conns: Sequence[WorkerConnection], statement: str) -> list[bytes | None]:
    """``statement`` on every connection at once; each reply, None where the connection broke."""
    return await run_each(conns, [statement] * len(conns))


async def run_each(conns: Sequence[WorkerConnection], statements: Sequence[str]) -> list[bytes | None]:
    """Each connection's own Query at once; each reply, None where the connection broke."""
    return await roundtrip_each(conns, [p.Query(s).encode() for s in statements])


async def roundtrip_each(conns: Sequence[WorkerConnection], requests: Sequence[bytes]) -> list[bytes | None]:
    """Each connection's own request (ending in a Query or a Sync) at once; each reply, None where the
    connection broke."""

    # callbacks and one future rather than a task per connection (two-phase commits do this twice)
    replies: list[bytes | None] = [None] * len(conns)
    waiting = asyncio.get_running_loop().create_future()
    pending = len(conns)

    def answered(i: int) -> Callable[[bytes | None], None]:
        def done(reply: bytes | None) -> None:
            nonlocal pending
            replies[i] = reply
            pending -= 1
            if not pending and not waiting.done():
                waiting.set_result(None)
        return done

    for i, (conn, request) in enumerate(zip(conns, requests, strict=True)):
        try:
            conn.send(request, answered(i))
        except BackendError:  # not sent: as a broken connection
            pending -= 1
    if pending:
        await waiting
    return replies


@dataclass(frozen=True)
class Unprepared:
    """A first phase that failed: every participant that had prepared was rolled back."""

    error: p.ErrorResponse | None  # the first worker's error, if one answered with one
    lost: list[str]  # nodes whose connection broke (dropped; recovery rolls back what they may have prepared)
    refused: list[str]  # nodes that did not prepare (lost ones included)


async def prepare_everywhere(gid: str, participants: Mapping[str, WorkerConnection],
                             drop_worker: Callable[[str], None]) -> Unprepared | None:
    """The first phase: PREPARE TRANSACTION ``gid`` on every participant at once. None when all prepared;
    else the prepared ones are rolled back, the broken connections dropped, and what went wrong returned."""
    nodes, conns = list(participants), list(participants.values())
    replies = await run_everywhere(conns, f"PREPARE TRANSACTION {literal(gid)}")
    prepared = [r is not None and tags(r) == ["PREPARE TRANSACTION"] for r in replies]
    if all(prepared):
        return None
    await run_everywhere([c for c, ok in zip(conns, prepared, strict=True) if ok], f"ROLLBACK PREPARED {literal(gid)}")
    lost = [node for node, reply in zip(nodes, replies, strict=True) if reply is None]
    for node in lost:
        drop_worker(node)
    error = next((e for r in replies if r is not None and (e := first_error(r)) is not None), None)
    return Unprepared(error, lost, [node for node, ok in zip(nodes, prepared, strict=True) if not ok])


async def commit_decided(gid: str, participants: Mapping[str, WorkerConnection],
                         drop_worker: Callable[[str], None]) -> None:
    """COMMIT PREPARED ``gid`` everywhere once the decision is committed; one that fails is left to recovery."""
    replies = await run_everywhere(list(participants.values()), f"COMMIT PREPARED {literal(gid)}")
    for node, reply in zip(participants, replies, strict=True):
        if reply is None or first_error(reply) is not None:
            log.warning("COMMIT PREPARED %s on %s failed; recovery will commit it", gid, node)
            if reply is None:
                drop_worker(node)


async def commit_prepared(twophase: TwoPhase, gid: str, participants: Mapping[str, WorkerConnection],
                          drop_worker: Callable[[str], None], what: str = "transaction") -> bytes | None:
    """The second phase, once every participant PREPAREd ``gid``: record the decision, then COMMIT PREPARED
    everywhere. None: committed (a COMMIT PREPARED that failed is finished by recovery); else the
    ErrorResponse for the client (rolled back, or the outcome is unknown until recovery decides)."""
    outcome, why = await twophase.decisions.record_commit(gid, list(participants))
    return await settle(outcome, why, gid, participants, drop_worker, what)


async def settle(outcome: Decision, why: str, gid: str, participants: Mapping[str, WorkerConnection],
                 drop_worker: Callable[[str], None], what: str = "transaction") -> bytes | None:
    """Finish the prepared ``gid`` by the decision's outcome: commit it everywhere (None), roll it back (the
    client's 40000), or leave it to recovery when the outcome is not known (40003)."""
    if outcome is Decision.COMMITTED:
        await commit_decided(gid, participants, drop_worker)
        return None
    if outcome is Decision.REFUSED:
        await run_everywhere(list(participants.values()), f"ROLLBACK PREPARED {literal(gid)}")
        return p.error_response(TRANSACTION_ROLLBACK, f"pgfleet router: the {what} was rolled back: {why}",
                                severity="ERROR", hint=f"retry the {what}").encode()
    return p.error_response(COMPLETION_UNKNOWN, f"pgfleet router: {why}; the {what}'s outcome is unknown until "
                            "recovery reads the decision (commit if it was recorded, else abort)", severity="ERROR",
                            hint="pgfleet recovery finishes it within seconds of the coordinator being back; check the "
                            "rows before retrying").encode()


async def commit_on_coordinator(gid: str, coordinator: str, participants: Mapping[str, WorkerConnection],
                                drop_worker: Callable[[str], None], first: str = "") -> Unprepared | bytes | None:
    """Commit a transaction whose participants include the coordinator (a reference-table write joined it,
    :mod:`.refpart`): PREPARE on the workers; then the coordinator's part commits last, with the decision
    row in it, so its commit is the decision. Its deferred triggers run first under the session's role
    (SET CONSTRAINTS ALL IMMEDIATE: the reference tables' queue goes to their copies then, as at any
    coordinator COMMIT). Then COMMIT PREPARED on the workers. None: committed; else what failed (all of
    it rolled back), or the ErrorResponse for the client. ``first``: a statement the coordinator runs first."""
    coord = participants[coordinator]
    workers = {node: conn for node, conn in participants.items() if node != coordinator}
    failed = await prepare_everywhere(gid, workers, drop_worker)
    if failed is not None:
        if (await run_everywhere([coord], "ROLLBACK"))[0] is None:
            drop_worker(coordinator)
        return failed
    statement = "; ".join(s for s in (first, "SET CONSTRAINTS ALL IMMEDIATE", "RESET ROLE",
                                      decision_insert(gid, list(workers)), "COMMIT") if s)
    try:
        reply = await coord.exchange(statement)
    except BackendError as exc:
        drop_worker(coordinator)
        return await settle(Decision.UNKNOWN, f"the coordinator connection was lost while the transaction committed "
                            f"there ({exc})", gid, workers, drop_worker)
    failure = first_error(reply)
    if failure is None and tags(reply)[-1:] == ["COMMIT"]:
        return await settle(Decision.COMMITTED, "", gid, workers, drop_worker)
    if status_of(reply) != b"I" and (await run_everywhere([coord], "ROLLBACK"))[0] is None:
        drop_worker(coordinator)
    aborted = failure is not None and failure.sqlstate == UNIQUE_VIOLATION and \
        "commit_decisions" in (failure.message or "")  # recovery decided 'abort' first
    refused = await settle(Decision.REFUSED, "recovery aborted this transaction while its commit was delayed" if aborted
                           else "the coordinator did not commit it", gid, workers, drop_worker)
    # the coordinator's own error (a deferred constraint, a copy that refused the rows) as it said it, else ours
    return failure.encode() if failure is not None and not aborted else refused


@dataclass
class TwoPhase:
    """What the sessions of one router process share for multi-worker commits."""

    gids: GidMaker
    decisions: DecisionStore
