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

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from pglast import ast, parse_sql
from pglast.parser import ParseError
from pglast.visitors import Visitor
from psycopg import sql
from psycopg.postgres import types as builtin_types

from . import protocol as p
from . import wire
from .batches import Message, Plan, Statement, parameter_values, row_description
from .routes import MultiShard
from .routing import Decision
from .shardmap import NotPlaced
from .twophase import messages
from .txnplan import runs_in_transaction

if TYPE_CHECKING:
    from .extended import ExtendedRouter
    from .multishard import MultiShardHost

log = logging.getLogger(__name__)

BIND_COMPLETE = p.BindComplete().encode()
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


def inline(text: str, values: Sequence[str | None], param_types: Sequence[int]) -> str | None:
    """``text`` with every ``$n`` replaced by the typed literal of its value; None when that is not exact."""
    try:
        tree = parse_sql(text)
    except ParseError:
        return None
    finder = _Params()
    finder(tree)
    out = text
    for location, number in sorted(finder.found, reverse=True):
        token = f"${number}"
        if not 1 <= number <= min(len(values), len(param_types)) or out[location:location + len(token)] != token:
            return None
        replacement = literal(values[number - 1], param_types[number - 1])
        if replacement is None:
            return None
        out = out[:location] + replacement + out[location + len(token):]
    return out


def bound_text(plan: Plan, statement: Statement) -> str | None:
    """The batch's statement with its values inlined, when the router can run it as a multi-shard plan
    with exactly the coordinator's result (text results, the whole result asked for)."""
    if plan.execute.max_rows != 0 or any(f != 0 for f in plan.bind.result_formats) or not statement.portable:
        return None
    assert statement.param_types is not None
    if len(statement.param_types) != len(plan.bind.params):
        return None
    try:
        values = list(parameter_values(plan.bind, statement.param_types))
    except NotPlaced:
        return None
    return inline(statement.sql, values, statement.param_types)


def extended_reply(reply: bytes, statement: Statement, plan: Plan) -> bytes:
    """A plan's simple-protocol reply (RowDescription, rows, CommandComplete or an ErrorResponse, then
    ReadyForQuery) as the reply to Bind [Describe portal] Execute Sync of ``statement``."""
    out = [BIND_COMPLETE]
    if plan.describe:
        out.append(row_description(statement.columns, plan.bind.result_formats) if statement.columns else NO_DATA)
    for type_byte, payload in messages(reply):
        if type_byte != b"T":
            out.append(wire.frame(type_byte, payload))
    return b"".join(out)


def probe_text(text: str) -> str | None:
    """``text`` with every ``$n`` as NULL: enough to tell whether a multi-shard plan may take the statement
    before the coordinator has described it."""
    try:
        tree = parse_sql(text)
    except ParseError:
        return None
    finder = _Params()
    finder(tree)
    out = text
    for location, number in sorted(finder.found, reverse=True):
        token = f"${number}"
        if out[location:location + len(token)] != token:
            return None
        out = out[:location] + "NULL" + out[location + len(token):]
    return out


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
        return probe is not None and probe != text and self._plan(probe) is not None

    def run(self, plan: Plan, batch: list[Message], statement: Statement, answered: bytes, exchanged: bool) -> bool:
        """Run the batch as a multi-shard plan; False: the coordinator runs it."""
        session = self.session
        text = bound_text(plan, statement)
        planned = self._plan(text) if text is not None else None
        if planned is None or text is None:
            return False
        decision, multishard = planned
        tc = session.transactions
        txn = tc.txn
        if txn is None:
            session.busy = True
            session.context.spawn(self._autocommit(multishard, plan, batch, statement, answered, exchanged))
            return True
        if multishard.writes and tc.twophase is None:
            return False
        session._write(answered)
        session.reply_shaper = lambda data: extended_reply(data, statement, plan)
        raw = self.router.txns._for_coordinator(plan.tail if exchanged else batch)
        tc._background(lambda: tc._multishard(txn, multishard, decision, text, raw))
        return True

    async def _autocommit(self, multishard: MultiShard, plan: Plan, batch: list[Message], statement: Statement,
                          answered: bytes, exchanged: bool) -> None:
        session = self.session
        try:
            reply = await multishard.run(cast("MultiShardHost", session))
        except Exception:  # a bug in a plan: say so; the plan may have run somewhere
            log.exception("%s statement failed in the router", multishard.description)
            reply = p.error_response("XX000", f"pgfleet router: the {multishard.description} statement failed in the "
                                     "router; see the router's log", severity="ERROR").encode() + p.ReadyForQuery("I").encode()
        if reply is None:  # nothing ran: the coordinator runs it
            self.router._fallback(plan, batch, answered, exchanged)
            return
        session.context.stats.routed += 1
        session.context.stats.executes += 1
        session._write(answered + extended_reply(reply, statement, plan))
        session.resume()
