"""Multi-shard statements sent with the extended protocol (the path of SQLAlchemy, asyncpg and psycopg
with ``%s`` values): a batch ``[Parse] [Describe] Bind [Describe portal] Execute Sync`` whose bound
statement is not single-shard runs as the router's multi-shard plan (scatter/gather read, multi-shard
write: :mod:`.multishard`), in autocommit or inside the client's transaction, instead of going to the
coordinator.

The statement is planned as its text with each ``$n`` replaced by the bound value as a typed literal,
``('value'::pg_catalog.type)`` with the type the coordinator described for the parameter, which is what
the value means in the prepared statement. Only when that is exact: every parameter and result type
built in, every value readable as text, results in text format, and the whole result asked for
(Execute without a row limit). Anything else goes to the coordinator as before. The plan's reply (in the
simple protocol's shape) becomes the extended protocol's: BindComplete, the coordinator's RowDescription
or NoData when the portal was described, the rows, CommandComplete, ReadyForQuery."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor
from psycopg import sql
from psycopg.postgres import types as builtin_types

from . import protocol as p
from . import wire
from .backend import BackendError, WorkerConnection, lost_in_flight
from .batches import Message, Plan, Statement, parameter_values, row_description
from .gather import combine_on, row_values
from .multishard import run_guarded
from .routes import MultiShard
from .routing import Decision
from .shardmap import NotPlaced
from .twophase import messages
from .txnplan import runs_in_transaction

if TYPE_CHECKING:
    from .extended import ExtendedRouter
    from .multishard import MultiShardHost

_RECORD = 2249
BIND_COMPLETE = p.BindComplete().encode()
PORTAL_SUSPENDED = p.PortalSuspended().encode()
NO_DATA = p.NoData().encode()


class _Params(Visitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, int]] = []  # (location, number)

    def visit_ParamRef(self, ancestors: object, node: ast.ParamRef) -> None:
        self.found.append((node.location or 0, node.number or 0))


def type_name(oid: int) -> str | None:
    """``pg_catalog."int8"`` / ``pg_catalog."int8"[]`` for a built-in type, else None."""
    info = builtin_types.get(oid)
    if info is None:
        return None
    name = sql.Identifier("pg_catalog", info.name).as_string(None)
    if info.oid == oid:
        return name
    return f"{name}[]" if info.array_oid == oid else None


_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_DECIMAL = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")
_BOOLEAN = frozenset({"t", "true", "y", "yes", "on", "1", "f", "false", "n", "no", "off", "0"})
_UUID = re.compile(r"\{?[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}\}?")
_INTEGER_BITS = {21: 16, 23: 32, 20: 64}
_DECIMALS = frozenset({700, 701, 1700})  # float4, float8, numeric
_BOOL, _UUID_OID = 16, 2950


def valid_input(value: str, type_oid: int) -> bool:
    """Whether the value is surely valid input for its type, for the types whose input the router checks (an
    invalid value fails at Bind on one server, before the statement runs; inlined it would fail later, in
    other words): integers, floats and numeric in their plain decimal forms, booleans, UUIDs. Values of other
    built-in types pass (an invalid one fails at execution, with the type's own error)."""
    bits = _INTEGER_BITS.get(type_oid)
    if bits is not None:
        return _INTEGER.fullmatch(value) is not None and -(1 << (bits - 1)) <= int(value) < 1 << (bits - 1)
    if type_oid in _DECIMALS:
        return _DECIMAL.fullmatch(value) is not None
    if type_oid == _BOOL:
        return value.strip().lower() in _BOOLEAN
    if type_oid == _UUID_OID:
        return _UUID.fullmatch(value) is not None
    return True


def literal(value: str | None, type_oid: int) -> str | None:
    name = type_name(type_oid)
    if name is None or (value is not None and ("\0" in value or not valid_input(value, type_oid))):
        return None
    text = "NULL" if value is None else "'" + value.replace("'", "''") + "'"
    return f"({text}::{name})"


@functools.lru_cache(maxsize=1024)
def _parameters(text: str) -> tuple[tuple[int, int], ...] | None:
    """Where each ``$n`` is in ``text`` (location, n), last first; None when the text does not parse. The
    same texts come with every execution: parsed once."""
    try:
        tree = parse_sql(text)
    except ParseError:
        return None
    finder = _Params()
    finder(tree)
    return tuple(sorted(finder.found, reverse=True))


def replace_parameters(text: str, replacement: Callable[[int], str | None]) -> str | None:
    """``text`` with every ``$n`` (found by the parser, so never one inside a literal or comment) replaced by
    ``replacement(n)``; None when the text does not parse or a replacement is None."""
    found = _parameters(text)
    if found is None:
        return None
    out = text
    for location, number in found:
        token = f"${number}"
        new = replacement(number) if out[location:location + len(token)] == token else None
        if new is None:
            return None
        out = out[:location] + new + out[location + len(token):]
    return out


def inline(text: str, values: Sequence[str | None], param_types: Sequence[int]) -> str | None:
    """``text`` with every ``$n`` replaced by the typed literal of its value; None when that is not exact."""
    def typed(number: int) -> str | None:
        if not 1 <= number <= min(len(values), len(param_types)):
            return None
        return literal(values[number - 1], param_types[number - 1])
    return replace_parameters(text, typed)


def bound_text(plan: Plan, statement: Statement) -> str | None:
    """The batch's statement with its values inlined, when the router can run it as a multi-shard plan
    with exactly the coordinator's result."""
    if plan.execute.max_rows < 0 or not statement.portable or not binary_ready(statement, plan.bind.result_formats):
        return None
    assert statement.param_types is not None
    if len(statement.param_types) != len(plan.bind.params):
        return None
    try:
        values = list(parameter_values(plan.bind, statement.param_types))
    except NotPlaced:
        return None
    return inline(statement.sql, values, statement.param_types)


def column_formats(result_formats: Sequence[int], width: int) -> list[int]:
    """The result format of each column (none given: text; one: all)."""
    if not result_formats:
        return [0] * width
    if len(result_formats) == 1:
        return [result_formats[0]] * width
    return list(result_formats)


def binary_ready(statement: Statement, result_formats: Sequence[int]) -> bool:
    """Whether the rows can be re-encoded by :func:`reencode` when a column is asked for in binary: built-in
    types that are not arrays themselves (an array of arrays is one array with more dimensions) nor
    ``record``, with ',' as array delimiter."""
    columns = statement.columns or ()
    formats = column_formats(result_formats, len(columns))
    if len(formats) != len(columns) or any(f not in (0, 1) for f in formats):
        return False  # the coordinator reports it
    if 1 not in formats:
        return True
    for column in columns:  # every column goes through the re-encoding, also those asked for in text
        info = builtin_types.get(column.type_oid)
        if info is None or info.oid != column.type_oid or not info.array_oid or info.delimiter != "," \
                or column.type_oid == _RECORD:
            return False
    return True


def wants_binary(plan: Plan) -> bool:
    return any(f == 1 for f in plan.bind.result_formats)


async def reencode(conn: WorkerConnection, statement: Statement, result_formats: Sequence[int], reply: bytes) -> bytes:
    """The plan's text rows in the client's result formats: sent back to a worker as one text array per
    column and selected from ``unnest`` in their order, with the client's result formats (PostgreSQL's own
    binary output of each type: :func:`.gather.combine_on`). An error there (none is expected: the values
    came from PostgreSQL) is the client's error."""
    out = messages(reply)
    rows = [row_values(wire.frame(b"D", payload)) for t, payload in out if t == b"D"]
    columns = statement.columns or ()
    if not rows or not columns:
        return reply
    names = [f"c{i}" for i in range(len(columns))]
    text = (f"SELECT {', '.join(names)} FROM unnest({', '.join(f'${i + 1}' for i in range(len(columns)))}) "
            f"WITH ORDINALITY AS _r ({', '.join(names)}, _o) ORDER BY _o")
    encoded = await combine_on(conn, text, [c.type_oid for c in columns], rows, result_formats)
    if encoded is None:  # binary_ready lets only types with a ',' array through
        return p.error_response("XX000", "pgfleet router: these result columns cannot be sent in binary here",
                                severity="ERROR").encode() + p.ReadyForQuery("I").encode()
    if encoded[:1] == b"E":
        return encoded
    new_rows = iter(wire.frame(t, payload) for t, payload in messages(encoded) if t == b"D")
    return b"".join(next(new_rows) if t == b"D" else wire.frame(t, payload) for t, payload in out)


def rows_left(reply: bytes, max_rows: int) -> bool:
    """Whether an Execute with this row limit would leave rows in the portal (more rows than the limit)."""
    return max_rows > 0 and sum(1 for t, _ in messages(reply) if t == b"D") > max_rows


def reply_head(statement: Statement, plan: Plan) -> bytes:
    """What an extended-protocol reply has before the rows: BindComplete, and the coordinator's RowDescription
    (or NoData) when the portal was described."""
    if not plan.describe:
        return BIND_COMPLETE
    return BIND_COMPLETE + (row_description(statement.columns, plan.bind.result_formats) if statement.columns else NO_DATA)


def extended_reply(reply: bytes, statement: Statement, plan: Plan) -> bytes:
    """A plan's simple-protocol reply (RowDescription, rows, CommandComplete or an ErrorResponse, then
    ReadyForQuery) as the reply to Bind [Describe portal] Execute Sync of ``statement``. With a row limit
    the Execute gets at most that many rows, and PortalSuspended instead of CommandComplete when it got
    that many (PostgreSQL does not look ahead either)."""
    out = [reply_head(statement, plan)]
    limit = plan.execute.max_rows
    if not limit and reply[:1] == b"T":  # the rows as they are, without framing each: only the RowDescription goes
        return b"".join(out) + reply[1 + int.from_bytes(reply[1:5], "big"):]
    rows = 0
    for type_byte, payload in messages(reply):
        if type_byte == b"D":
            rows += 1
            if limit and rows > limit:
                continue
        elif type_byte == b"C" and limit and rows >= limit:
            out.append(PORTAL_SUSPENDED)
            continue
        if type_byte != b"T":
            out.append(wire.frame(type_byte, payload))
    return b"".join(out)


def probe_text(text: str) -> str | None:
    """``text`` with every ``$n`` as NULL: enough to tell whether a multi-shard plan may take the statement
    before the coordinator has described it."""
    return replace_parameters(text, lambda _: "NULL")


class ExtendedMultiShard:
    """The multi-shard side of one session's :class:`.extended.ExtendedRouter`."""

    def __init__(self, router: ExtendedRouter) -> None:
        self.router = router
        self.session = router.session

    def _plan(self, text: str) -> tuple[Decision, MultiShard] | None:
        decision = self.session.route(text)
        if decision is None or not decision.keeps_state or not runs_in_transaction(decision.route):
            return None
        return decision, decision.route

    def candidate(self, text: str) -> bool:
        """Whether the statement may be a multi-shard plan's (then the coordinator describes it first)."""
        probe = probe_text(text)
        return probe is not None and self._plan(probe) is not None

    def run(self, plan: Plan, batch: list[Message], statement: Statement, answered: bytes, exchanged: bool) -> bool:
        """Run the batch as a multi-shard plan; False: the coordinator runs it."""
        session = self.session
        text = bound_text(plan, statement)
        planned = self._plan(text) if text is not None else None
        if planned is None or text is None:
            return False
        decision, multishard = planned
        if plan.execute.max_rows and multishard.writes:
            return False  # RETURNING rows fetched in parts: the coordinator keeps the portal
        tc = session.transactions
        txn = tc.txn
        if txn is None:
            session.busy = True
            session.context.spawn(self._autocommit(multishard, plan, batch, statement, answered, exchanged))
            return True
        if multishard.writes and tc.twophase is None:
            return False
        session._write(answered)
        if tc.refused_stale(txn, text):
            if session.busy:
                session.resume()
            return True
        session.reply_shaper = lambda data: extended_reply(data, statement, plan)
        raw = self.router.txns._for_coordinator(plan.as_sent.tail if exchanged else batch)
        async def finish(conn: WorkerConnection, reply: bytes) -> bytes | None:
            if rows_left(reply, plan.execute.max_rows):
                return None  # the portal would outlive the Sync in this transaction, and the rest is nowhere
            if wants_binary(plan):
                return await reencode(conn, statement, plan.bind.result_formats, reply)
            return reply

        # text rows without a row limit need no finish: they stream, the shaper reshaping the first piece
        reworked = finish if wants_binary(plan) or plan.execute.max_rows else None
        tc._background(lambda: tc._multishard(txn, multishard, decision, text, raw, reworked))
        return True

    async def _autocommit(self, multishard: MultiShard, plan: Plan, batch: list[Message], statement: Statement,
                          answered: bytes, exchanged: bool) -> None:
        session = self.session
        # rows in text with no row limit stream as they come (rowstream.py), after this batch's head
        session.streaming = not wants_binary(plan) and not plan.execute.max_rows
        session.stream_head, session.streamed = answered + reply_head(statement, plan), False
        try:
            reply = await run_guarded(multishard, cast("MultiShardHost", session))
        finally:
            session.streaming, session.stream_head = False, None
        if reply is None:  # nothing ran: the coordinator runs it
            self.router._fallback(plan, batch, answered, exchanged)
            return
        if session.streamed:  # the head and the rows went: CommandComplete or an error, ReadyForQuery
            session.context.stats.routed += 1
            session.context.stats.executes += 1
            session._write(reply)
            session.resume()
            return
        if wants_binary(plan) and session.leases.held:
            node, conn = next(iter(session.leases.held.items()))
            try:
                reply = await reencode(conn, statement, plan.bind.result_formats, reply)
            except BackendError:
                session.drop_worker(node)
                reply = lost_in_flight(node)
        session.context.stats.routed += 1
        session.context.stats.executes += 1
        session._write(answered + extended_reply(reply, statement, plan))
        session.resume()
