"""Reference-table writes that the router runs on every copy itself, inside a client's router transaction.

A write that :mod:`.refpart` finds deterministic (built-in functions that give the same value on every
node, every column of an INSERT given, nothing but pgfleet's trigger on the table) runs as it is:

1. on the coordinator, as a participant of the transaction, with ``pgfleet.copies_written`` set to the
   table's oid, so that the table's trigger queues nothing (the trigger honours that setting only for a
   superuser session, the router's login, and refuses it for anyone else). The coordinator goes first, so
   its row locks order concurrent writers of a row, as they do for writes made on the coordinator;
2. then on every worker's copy, on the transaction's connection to that worker, all at once.

Every copy must report what the coordinator reported (``UPDATE n``, ``INSERT 0 n``): a copy that fails or
reports another count fails the statement, and the transaction is rolled back by the client. The copies
commit with the rest of the transaction (:func:`.twophase.commit_on_coordinator`), and the transaction's
later statements on the workers see the write, as on one server.

The setting stays on the coordinator's connection until the next statement the router sends there, which
begins with :data:`DISARM` (and the commit does), so no later write of the table is left unqueued."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from . import protocol as p
from .backend import BackendError, WorkerConnection
from .refpart import CoordinatorPart
from .twophase import first_error, messages, tags

COPIES_SETTING = "pgfleet.copies_written"
DISARM = f"SET LOCAL {COPIES_SETTING} = ''"
COPIES_DIFFER = "XX000"


def arm(write: CoordinatorPart) -> str:
    """What the coordinator runs before the statement (an oid: no quoting needed)."""
    return f"SET LOCAL {COPIES_SETTING} = '{int(write.oid)}'"


def before_completion(reply: bytes) -> bytes:
    """``reply`` without its last CommandComplete and what follows (the ReadyForQuery), so that an error
    can take their place."""
    at, offset = len(reply), 0
    for type_byte, payload in messages(reply):
        if type_byte == b"C":
            at = offset
        offset += 5 + len(payload)
    return reply[:at]


@dataclass(frozen=True)
class CopiesDone:
    failure: bytes | None  # the ErrorResponse for the client; None: every copy did what the coordinator did
    lost: tuple[str, ...] = ()  # nodes whose connection broke


async def write_copies(write: CoordinatorPart, conns: Sequence[WorkerConnection], requests: Sequence[bytes],
                       coordinator_reply: bytes) -> CopiesDone:
    """Run each copy's request (conns in ``write.copies`` order) at once, and check each against the
    coordinator's reply."""
    async def one(conn: WorkerConnection, request: bytes) -> bytes | None:
        try:
            return await conn.roundtrip(request)
        except BackendError:
            return None

    replies = await asyncio.gather(*(one(c, r) for c, r in zip(conns, requests, strict=True)))
    lost = tuple(node for node, reply in zip(write.copies, replies, strict=True) if reply is None)
    if lost:
        return CopiesDone(None, lost)
    expected = tags(coordinator_reply)[-1:]
    for node, reply in zip(write.copies, replies, strict=True):
        assert reply is not None
        error = first_error(reply)
        if error is not None:
            return CopiesDone(error.encode())
        got = tags(reply)[-1:]
        if got != expected:
            schema, table = write.table
            return CopiesDone(p.error_response(
                COPIES_DIFFER, f"pgfleet router: the copies of reference table {schema}.{table} differ: the "
                f"coordinator's table gave {' '.join(expected) or 'nothing'}, the copy on {node} "
                f"{' '.join(got) or 'nothing'}; the statement was not applied", severity="ERROR",
                hint="roll the transaction back; compare the copies with the coordinator's table").encode())
    return CopiesDone(None)
