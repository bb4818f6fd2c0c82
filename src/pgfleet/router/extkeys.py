"""Extended-protocol INSERTs that leave a distributed table's key to its sequence (SQLAlchemy's
``session.add()`` of an identity model, psycopg's ``%s`` parameters): the keys are drawn from the
coordinator's sequence (:mod:`.keyfill`) and bound as parameters of the router's own, after the client's.

The client's statement ``INSERT INTO t (note) VALUES ($1) RETURNING id`` becomes, for the workers,
``INSERT INTO t ("id", note) VALUES ($2, $1) RETURNING id`` — one text per statement, so the workers parse
it once per connection like any routed statement — and the client's Bind gets the drawn keys as its last
values (text, of the key column's type). The batch then runs as any routed batch (:meth:`.extended.
ExtendedRouter._run`): on the shard of its key, over several for several rows, in autocommit or as a
statement of the transaction. The client's own statement stays the coordinator's: a batch that is not
routed after all goes there as it came (``Plan.original``), where PostgreSQL computes the key itself."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from . import protocol as p
from .batches import Message, Plan, Statement
from .keyfill import KEY_TYPE_OIDS, KeyFill, cached_keys, draw_keys
from .routes import Coordinator
from .rowsource import RowSource

if TYPE_CHECKING:
    from .extended import ExtendedRouter


def filled_plan(plan: Plan, statement: Statement, fill: KeyFill, keys: Sequence[int]) -> tuple[Plan, Statement]:
    """The batch and statement with the keys as parameters after the client's (see the module's text)."""
    assert statement.param_types is not None
    count = len(statement.param_types)
    bind = plan.bind
    formats = bind.param_formats
    if len(formats) == 1 and formats[0] != 0:
        formats = formats * count  # one format for every value: the keys are text
    if len(formats) > 1 or formats == (1,):
        formats = formats + (0,) * fill.rows
    filled = p.Bind(bind.portal, bind.statement, formats, bind.params + tuple(str(k).encode() for k in keys),
                    bind.result_formats)
    tail: tuple[Message, ...] = ((b"B", filled.payload()), *plan.tail[1:])
    key_type = KEY_TYPE_OIDS[fill.table.key_type]
    sql = fill.sql_with_parameters(statement.sql, count + 1)
    return (replace(plan, prefix=(), bind=filled, tail=tail, original=plan),
            Statement(sql, statement.client_types + (key_type,) * fill.rows,
                      statement.param_types + (key_type,) * fill.rows, statement.columns))


class ExtendedKeys:
    """The key-drawing side of one session's :class:`.extended.ExtendedRouter`."""

    def __init__(self, router: ExtendedRouter) -> None:
        self.router = router
        self.session = router.session

    def fill(self, sql: str) -> KeyFill | RowSource | None:
        """What the router does to ``sql`` first when the session reworks INSERTs now: keys drawn
        (:mod:`.keyfill`) or rows got (:mod:`.rowsource`); else None."""
        session = self.session
        routing = session.routing
        if routing is None or not (session.superuser or routing.roles_current):
            return None
        rework = routing.cache.insert_rework(sql, routing.topology, session.search_path)
        return rework if rework is not None and session.fills_keys(rework) else None

    def run(self, plan: Plan, batch: list[Message], fill: KeyFill | RowSource, statement: Statement,
            answered: bytes, exchanged: bool) -> None:
        """The described statement: keys drawn (or rows got), then routed; as it came to the coordinator when
        it cannot be."""
        types = statement.param_types
        if types is None or not statement.portable or len(types) != len(plan.bind.params):
            self.router._fallback(plan, batch, answered, exchanged)
            return
        session = self.session
        routing = session.routing
        assert routing is not None
        if isinstance(fill, RowSource):
            session.busy = True
            session.context.spawn(self._rows_first(plan, batch, fill, statement, answered, exchanged))
            return
        keys = cached_keys(routing.keys, fill, session.key_role)
        if keys is not None:
            self._route(plan, batch, fill, statement, answered, exchanged, keys)
            return
        session.busy = True
        session.context.spawn(self._drawn(plan, batch, fill, statement, answered, exchanged))

    async def _rows_first(self, plan: Plan, batch: list[Message], source: RowSource, statement: Statement,
                          answered: bytes, exchanged: bool) -> None:
        """SQLAlchemy's multi-row INSERT (``INSERT … SELECT p0::T, … FROM (VALUES ($1, …), …) ORDER BY …``): the
        rows got first with the client's values, then one INSERT of literal rows without parameters."""
        session = self.session
        routing = session.routing
        assert routing is not None and statement.param_types is not None
        text = await session.reworked(source, statement.sql, plan.bind, statement.param_types)
        if text is None:
            self.router._fallback(plan, batch, answered, exchanged)
            return
        prepared = routing.cache.prepared(text, routing.topology, session.search_path)
        if isinstance(prepared, Coordinator):
            self.router._fallback(plan, batch, answered, exchanged)
            return
        bind = p.Bind(plan.bind.portal, plan.bind.statement, (), (), plan.bind.result_formats)
        literal = replace(plan, prefix=(), bind=bind, tail=((b"B", bind.payload()), *plan.tail[1:]), original=plan)
        self.router._run(literal, batch, prepared, Statement(text, (), (), statement.columns), answered,
                         exchanged=exchanged)

    async def _drawn(self, plan: Plan, batch: list[Message], fill: KeyFill, statement: Statement, answered: bytes,
                     exchanged: bool) -> None:
        session = self.session
        routing = session.routing
        assert routing is not None
        keys = await draw_keys(session.leases, routing.topology.coordinator, routing.keys, fill, session.key_role)
        if keys is None:
            self.router._fallback(plan, batch, answered, exchanged)
            return
        self._route(plan, batch, fill, statement, answered, exchanged, keys)

    def _route(self, plan: Plan, batch: list[Message], fill: KeyFill, statement: Statement, answered: bytes,
               exchanged: bool, keys: list[int]) -> None:
        session = self.session
        routing = session.routing
        assert routing is not None
        filled, described = filled_plan(plan, statement, fill, keys)
        prepared = routing.cache.prepared(described.sql, routing.topology, session.search_path)
        if isinstance(prepared, Coordinator):
            self.router._fallback(plan, batch, answered, exchanged)
            return
        session.used_keys(fill, keys)
        self.router._run(filled, batch, prepared, described, answered, exchanged=exchanged)
