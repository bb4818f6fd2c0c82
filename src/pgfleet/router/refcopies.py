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
begins with :data:`DISARM` (and the commit does), so no later write of the table is left unqueued.

Any other write of such a table (a default, ``now()``, ``nextval``, a read of a coordinator table: the
copies would not compute the same rows) runs on the coordinator as it is, and the table's trigger queues
the written rows for the copies (``pgfleet.ddl_queue``). The router then takes the transaction's queued
statements from the queue (:data:`TAKE_QUEUED`, as its login: the queue is pgfleet's) and runs them on
the copies' connections at once (:func:`queued_request`), each with its rows as a bound parameter, as
the rows' statement the worker would run at COMMIT. So ORMs, whose INSERTs take identity defaults and
return them, write a reference row and then a distributed row that refers to it in one transaction: the
worker's foreign key finds the row on its copy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import protocol as p
from .backend import WorkerConnection
from .exttxn import role_setup, setup_messages
from .refpart import CoordinatorPart
from .twophase import first_error, messages, roundtrip_each, tags

COPIES_SETTING = "pgfleet.copies_written"
DISARM = f"SET LOCAL {COPIES_SETTING} = ''"
COPIES_DIFFER = "XX000"
JSONB_OID = 3802
# The transaction's queued statements for the copies, in order, taken off the queue (none when the
# transaction has no xid yet: it wrote nothing).
TAKE_QUEUED = ("WITH taken AS (DELETE FROM pgfleet.ddl_queue WHERE xid = pg_current_xact_id_if_assigned() "
               "RETURNING id, node, statement, prepared, prepare, rows) "
               "SELECT node, statement, prepared, prepare, rows::text FROM taken ORDER BY id")


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

    @property
    def ok(self) -> bool:
        return self.failure is None and not self.lost


async def write_copies(write: CoordinatorPart, conns: Sequence[WorkerConnection], requests: Sequence[bytes],
                       coordinator_reply: bytes) -> CopiesDone:
    """Run each copy's request (conns in ``write.copies`` order) at once, and check each against the
    coordinator's reply."""
    replies = await roundtrip_each(conns, requests)
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


@dataclass(frozen=True)
class Queued:
    """A statement the coordinator's trigger queued for one copy (``pgfleet.ddl_queue``)."""

    node: str
    statement: str  # to run as it is when there are no rows
    body: str | None  # the rows' statement, with the rows as $1 (jsonb)
    rows: bytes | None


def _as_login(role: str, login: str) -> tuple[list[str], list[str]]:
    """What makes statements run as the router's login inside a transaction that runs as ``role``, and what
    brings the role back after them."""
    return ([], []) if role == login else (["SET LOCAL ROLE NONE"], [role_setup(role)])


def take_queued(role: str, login: str) -> str:
    """What the coordinator runs to give the transaction's queued statements (:data:`TAKE_QUEUED`)."""
    reset, restore = _as_login(role, login)
    return ";\n".join([*reset, TAKE_QUEUED, *restore])


def taken(reply: bytes) -> list[Queued]:
    """The rows :data:`TAKE_QUEUED` returned, as statements for the copies."""
    found = []
    for type_byte, payload in messages(reply):
        if type_byte != b"D":
            continue
        row = p.decode_backend(type_byte, payload)
        assert isinstance(row, p.DataRow)
        node, statement, prepared, prepare, rows = (None if v is None else v.decode() for v in row.values)
        assert node is not None and statement is not None
        body = None
        if prepared is not None and prepare is not None and rows is not None:
            head = f"PREPARE {prepared}(jsonb) AS "  # as queue_for_copies() writes it (a plain name)
            if not prepare.startswith(head):
                raise ValueError(f"pgfleet router: a queued statement for {node} is not of a known form")
            body = prepare[len(head):]
        found.append(Queued(node, statement, body, None if body is None or rows is None else rows.encode()))
    return found


def queued_request(entries: Sequence[Queued], setup: list[str], role: str, login: str) -> bytes:
    """One copy's queued statements, after the setup of a worker that joins the transaction: the rows'
    statements as unnamed prepared statements with the rows bound (nothing stays prepared), as the login."""
    reset, restore = _as_login(role, login)
    parts = [setup_messages(setup + reset)]
    for entry in entries:
        if entry.body is None:
            parts.append(setup_messages([entry.statement]))
        else:
            parts.append(p.Parse("", entry.body, (JSONB_OID,)).encode()
                         + p.Bind("", "", (0,), (entry.rows,), ()).encode() + p.Execute("", 0).encode())
    parts.append(setup_messages(restore) + p.Sync().encode())
    return b"".join(parts)


async def apply_queued(nodes: Sequence[str], conns: Sequence[WorkerConnection], requests: Sequence[bytes]) -> CopiesDone:
    """Run each copy's queued statements (conns in ``nodes`` order) at once."""
    replies = await roundtrip_each(conns, requests)
    lost = tuple(node for node, reply in zip(nodes, replies, strict=True) if reply is None)
    if lost:
        return CopiesDone(None, lost)
    for reply in replies:
        assert reply is not None
        error = first_error(reply)
        if error is not None:
            return CopiesDone(error.encode())
    return CopiesDone(None)
