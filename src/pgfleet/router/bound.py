"""A statement's analysis (:class:`Prepared`, made by :func:`.analyze.prepare`) and its binding to parameter
values: the shard that holds the rows, the node, and the statement with its table names made the shard
tables' (pure). Separate from the analysis itself so that the per-statement hot path — a key's shard and the
rewritten text — reads as one piece."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pglast import ast

from .rewrite import Edit, apply_edits, name_span, qualified
from .routes import Coordinator, Route, Shard, Split
from .shardmap import KeyValue, NotPlaced, Param, shard_index
from .snapshot import RoutedTable


class Refuse(Exception):
    """Internal: the statement goes to the coordinator, for this reason."""


@dataclass(eq=False)
class TableRef:
    table: RoutedTable
    alias: str
    node: ast.RangeVar
    level: int
    has_alias: bool


@dataclass
class Scope:
    level: int
    parent: Scope | None
    refs: list[TableRef] = field(default_factory=list)


@dataclass(frozen=True)
class Prepared:
    sql: str
    refs: tuple[TableRef, ...]
    pins: tuple[tuple[TableRef, tuple[KeyValue, ...]], ...]  # key IN (values) / key = value
    links: tuple[tuple[TableRef, TableRef], ...]  # (restricted, other): restricted.key = other.key
    insert_rows: tuple[tuple[KeyValue, tuple[int, int]], ...] = ()  # multi-row INSERT: key and text span per row
    values_span: tuple[int, int] = (0, 0)
    _placements: dict[int, tuple[str, tuple[int, ...], list[Edit]]] = field(default_factory=dict, compare=False, repr=False)

    def bind(self, params: Sequence[str | None] = (), *, original: str | None = None,
             position: Callable[[int], int] | None = None) -> Route:
        """The route for these parameter values. ``original`` and ``position``: the statement this one was
        normalized from (constants made parameters, see routing) and how offsets here map to offsets there;
        the rewrite then applies to the original text."""
        try:
            if original is not None and len(self.insert_rows) > 1:
                raise Refuse("a multi-row INSERT is analyzed from its own text")
            return self._bind(params, original, position)
        except (Refuse, NotPlaced) as exc:
            return Coordinator(str(exc))

    def _bind(self, params: Sequence[str | None], original: str | None, position: Callable[[int], int] | None) -> Route:
        if self.insert_rows:
            return self._bind_insert(params, original, position)
        index = self._shard_index(params)
        return self._route(index, self.sql if original is None else original, position)

    @functools.cached_property
    def _one_pin(self) -> tuple[RoutedTable, KeyValue] | None:
        """The common statement: one distributed table, restricted by one value of its key."""
        distributed = [r for r in self.refs if not r.table.is_reference]
        if len(distributed) == 1 and len(self.pins) == 1 and self.pins[0][0] is distributed[0] \
                and len(self.pins[0][1]) == 1:
            return distributed[0].table, self.pins[0][1][0]
        return None

    def _shard_index(self, params: Sequence[str | None]) -> int:
        if (one := self._one_pin) is not None:
            return shard_index(one[0], one[1], params)
        indexes: dict[int, int] = {}
        pending = [r for r in self.refs if not r.table.is_reference]
        for ref, values in self.pins:
            found = {shard_index(ref.table, v, params) for v in values}
            if len(found) != 1:
                raise Refuse(f"the values for {ref.table.name}.{ref.table.key} fall in several shards")
            index = found.pop()
            if indexes.setdefault(id(ref), index) != index:
                raise Refuse(f"contradictory conditions on {ref.table.name}.{ref.table.key}")
        changed = True
        while changed:
            changed = False
            for restricted, other in self.links:
                if id(other) in indexes and id(restricted) not in indexes:
                    indexes[id(restricted)] = indexes[id(other)]
                    changed = True
        unpinned = [r for r in pending if id(r) not in indexes]
        if unpinned:
            t = unpinned[0].table
            raise Refuse(f"{t.name} is not restricted to one shard by its key {t.key} "
                         "(equality to a constant or parameter, or to a co-located pinned key)")
        found = {indexes[id(r)] for r in pending}
        if len(found) != 1:
            raise Refuse("the statement reads or writes more than one shard")
        return found.pop()

    def _route(self, index: int, text: str, position: Callable[[int], int] | None = None) -> Shard:
        placed = self._placements.get(index)
        if placed is None:
            placed = self._placements[index] = self._place(index)
        node, ids, edits = placed
        if position is not None:
            edits = [Edit(position(e.start), position(e.end), e.text) for e in edits]
        return Shard(node=node, shard_index=index, shard_ids=ids, sql=apply_edits(text, edits))

    def _place(self, index: int) -> tuple[str, tuple[int, ...], list[Edit]]:
        """The node, shard ids and name replacements (offsets in ``self.sql``) for shard ``index``."""
        distributed = [r for r in self.refs if not r.table.is_reference]
        groups = {r.table.colocation_id for r in distributed}
        if len(groups) != 1:
            raise Refuse("tables of different co-location groups")
        shards = [r.table.shard(index) for r in distributed]
        if any(s is None for s in shards):
            raise Refuse(f"no shard {index} in every table")
        nodes = {s.node for s in shards if s is not None}
        if len(nodes) != 1:
            raise Refuse("the co-located shards are on different nodes")
        node = nodes.pop()
        edits = []
        for ref in self.refs:
            if ref.table.is_reference:
                if not any(s.node == node for s in ref.table.shards):
                    raise Refuse(f"reference table {ref.table.name} has no copy on {node}")
                schema, table = ref.table.schema, ref.table.relname
            else:
                shard = ref.table.shard(index)
                assert shard is not None
                schema, table = shard.shard_schema, shard.shard_table
            start, end = name_span(self.sql, ref.node.location or 0)
            replacement = qualified(schema, table) + ("" if ref.has_alias else " AS " + qualified(ref.alias))
            edits.append(Edit(start, end, replacement))
        ids = tuple(sorted({s.shard_id for s in shards if s is not None}))
        return node, ids, edits

    def _bind_insert(self, params: Sequence[str | None], original: str | None,
                     position: Callable[[int], int] | None) -> Route:
        [target] = self.refs
        by_index: dict[int, list[int]] = {}
        for number, (key, _) in enumerate(self.insert_rows):
            by_index.setdefault(shard_index(target.table, key, params), []).append(number)
        if len(by_index) == 1:
            return self._route(next(iter(by_index)), self.sql if original is None else original, position)
        if any(isinstance(k, Param) for k, _ in self.insert_rows):
            raise Refuse("a multi-row INSERT with parameters over several shards")
        parts = []
        start, end = self.values_span
        for index, numbers in sorted(by_index.items()):
            rows = ", ".join(self.sql[self.insert_rows[n][1][0]:self.insert_rows[n][1][1]] for n in numbers)
            text = self.sql[:start] + rows + self.sql[end:]
            # the table name comes before the VALUES list: its position is the same in ``text``
            parts.append((self._route(index, text), tuple(numbers)))
        return Split(tuple(parts))
