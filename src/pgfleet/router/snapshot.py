"""What the router's analysis knows of the cluster: a frozen snapshot of the distributed and reference
tables (method, key, key type, columns, shards with bounds and placements, co-location group) and the
names of every other relation that name resolution can meet. Built by :mod:`.topology` from the
catalog; pure data here, so routing decisions are tested without servers."""

from __future__ import annotations

from dataclasses import dataclass, field

INTEGER_TYPES = frozenset({"smallint", "integer", "bigint"})
TEXT_TYPES = frozenset({"text", "character varying", "character"})


@dataclass(frozen=True)
class ShardPlacement:
    index: int  # position in the table, shared by co-located tables
    shard_id: int
    node: str
    schema: str  # the shard table on the worker
    table: str
    modulus: int | None = None
    remainder: int | None = None
    lower: str | None = None  # range: inclusive lower bound, None = MINVALUE
    upper: str | None = None  # range: exclusive upper bound, None = MAXVALUE
    values: tuple[str, ...] = ()  # list


@dataclass(frozen=True)
class RoutedTable:
    schema: str
    name: str
    method: str  # hash | range | list | reference
    key: str | None
    key_type: str  # format_type of the key without typmod ('' for reference tables)
    colocation_id: int | None
    columns: tuple[str, ...]  # in table order
    shards: tuple[ShardPlacement, ...] = ()

    @property
    def is_reference(self) -> bool:
        return self.method == "reference"

    def shard(self, index: int) -> ShardPlacement | None:
        return next((s for s in self.shards if s.index == index), None)


@dataclass(frozen=True)
class RoutingTopology:
    tables: tuple[RoutedTable, ...]
    relations: frozenset[tuple[str, str]] = field(default=frozenset())  # every (schema, name) on the coordinator

    def table(self, schema: str, name: str) -> RoutedTable | None:
        return next((t for t in self.tables if t.schema == schema and t.name == name), None)

    def exists(self, schema: str, name: str) -> bool:
        return (schema, name) in self.relations or self.table(schema, name) is not None
