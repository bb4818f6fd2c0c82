"""Pure decisions: is a table distributable, and where does each shard go."""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import PlanError, SpecError
from ..spec import DistributeSpec, HashSpec, ListSpec, QualifiedName, RangeSpec
from ..topology.model import Column, DistTable, Shard, TableDef
from .tables import SHARD_SCHEMA, shard_table_name, unique_constraints



def method_name(spec: HashSpec | RangeSpec | ListSpec) -> str:
    return {HashSpec: "hash", RangeSpec: "range", ListSpec: "list"}[type(spec)]


def shard_count(method: HashSpec | RangeSpec | ListSpec) -> int:
    return method.shard_count if isinstance(method, HashSpec) else len(method.shards)


def check_table_shape(table: TableDef, *, reference: bool) -> None:
    """Refuse what pgfleet cannot carry to the workers, naming the object and what to do."""
    what = "reference table" if reference else "distributed table"
    if table.relkind == "p":
        raise SpecError(f"{table.name} is already a partitioned table",
                        hint="pgfleet distributes plain tables; create it without PARTITION BY")
    if table.relkind != "r":
        raise SpecError(f"{table.name} is not a plain table (relkind {table.relkind!r})")
    # types of the coordinator's own go to the workers with the shards (sql/types.sql)
    for con in table.constraints:  # foreign keys: pgfleet.check_foreign_key (sql/foreign_keys.sql) decides
        if con.kind == "x":
            raise SpecError(f"exclusion constraint {con.name} of {table.name} cannot be enforced on a {what}",
                            hint="drop it and run again")
    if table.referencing_fks and not reference:  # a reference table stays a plain table on the coordinator
        raise SpecError(f"foreign key {table.referencing_fks[0]} references {table.name}",
                        hint="distribute both tables in one transaction with the SQL API (this one, then the "
                             "referencing one with colocate_with), or drop that foreign key first")
    if table.dependent_views:
        raise SpecError(f"view {table.dependent_views[0]} depends on {table.name}",
                        hint="drop the view, distribute the table, then create the view again")


def check_key(table: TableDef, key: str) -> Column:
    column = table.column(key)
    if column is None:
        names = ", ".join(c.name for c in table.columns)
        raise SpecError(f"column {key!r} does not exist in {table.name}", hint=f"choose one of: {names}")
    if column.generated:
        raise SpecError(f"column {key} of {table.name} is generated; it cannot be the distribution key")
    for con in unique_constraints(table):
        if key not in con.columns:
            kind = "primary key" if con.kind == "p" else "unique constraint"
            raise SpecError(
                f"{kind} {con.name} ({', '.join(con.columns)}) of {table.name} does not include the distribution key {key}",
                hint="each shard can only enforce uniqueness of keys it holds: add the key to the constraint "
                     "or drop it, or choose a key column that the constraint includes")
    for index in table.indexes:
        if index.unique and not index.constraint and key not in index.using_tail:
            raise SpecError(f"unique index {index.name} of {table.name} does not include the distribution key {key}",
                            hint="drop the index or include the key column in it")
    return column


def check_reference(table: TableDef) -> None:
    if not any(c.kind == "p" for c in table.constraints):
        raise SpecError(f"reference table {table.name} needs a primary key",
                        hint="writes through the coordinator find the row to change on each copy by its primary key")


def round_robin(count: int, nodes: Sequence[str]) -> list[str]:
    if not nodes:
        raise PlanError("there are no workers to place shards on", hint="add one with 'pgfleet node add' or 'pgfleet up --workers N'")
    return [nodes[i % len(nodes)] for i in range(count)]


def check_nodes(spec: DistributeSpec, workers: Sequence[str]) -> None:
    """Every node the spec names (--nodes, or a range or list shard's node) is a worker."""
    named = list(spec.nodes or ())
    if isinstance(spec.method, RangeSpec | ListSpec):
        named += [s.node for s in spec.method.shards if s.node is not None]
    for node in named:
        _known(node, workers)


def layout_shards(table: TableDef, spec: DistributeSpec, workers: Sequence[str], shard_ids: Sequence[int],
                  colocated: DistTable | None = None) -> tuple[Shard, ...]:
    """The shards of ``table``: bounds, node, and names on the worker and on the coordinator."""
    schema = table.name.schema or "public"

    def make(i: int, node: str, **bound: object) -> Shard:
        sid = shard_ids[i]
        name = shard_table_name(table.name.name, sid)
        return Shard(shard_id=sid, table_oid=table.oid, index=i, node=node, shard_schema=schema, shard_table=name,
                     foreign_schema=SHARD_SCHEMA, foreign_table=name, **bound)  # type: ignore[arg-type]

    check_nodes(spec, workers)
    if colocated is not None:
        shards = sorted(colocated.shards, key=lambda s: s.index)
        if len(shard_ids) < len(shards):
            raise PlanError("not enough shard ids allocated")
        return tuple(make(i, s.node, modulus=s.modulus, remainder=s.remainder, lower=s.lower, upper=s.upper,
                          values=s.values) for i, s in enumerate(shards))
    method = spec.method
    if isinstance(method, HashSpec):
        nodes = round_robin(method.shard_count, spec.nodes or workers)
        return tuple(make(i, nodes[i], modulus=method.shard_count, remainder=i) for i in range(method.shard_count))
    if isinstance(method, RangeSpec):
        default = round_robin(len(method.shards), spec.nodes or workers)
        return tuple(make(i, _known(r.node, workers) or default[i], lower=r.lower, upper=r.upper)
                     for i, r in enumerate(method.shards))
    if isinstance(method, ListSpec):
        default = round_robin(len(method.shards), spec.nodes or workers)
        return tuple(make(i, _known(s.node, workers) or default[i], values=s.values)
                     for i, s in enumerate(method.shards))
    raise PlanError("no distribution method")


def _known(node: str | None, workers: Sequence[str]) -> str | None:
    if node is not None and node not in workers:
        raise SpecError(f"unknown node {node!r}", hint=f"workers are: {', '.join(workers) or 'none'}")
    return node


def check_colocation(table: TableDef, key: Column, spec: DistributeSpec, other: DistTable,
                     other_key_type: str) -> None:
    if other.method == "reference":
        raise SpecError(f"{other.name} is a reference table; co-locate with a distributed table")
    if key.type != other_key_type:
        raise SpecError(f"key {key.name} of {table.name} is {key.type} but the key of {other.name} is {other_key_type}",
                        hint="co-located tables need keys of the same type")
    if spec.method is not None and method_name(spec.method) != other.method:
        raise SpecError(f"{other.name} is distributed by {other.method}; co-located tables share its method",
                        hint="leave out --shards/--bounds/--list with --colocate-with")
    if isinstance(spec.method, HashSpec) and spec.method.shard_count != len(other.shards):
        raise SpecError(f"{other.name} has {len(other.shards)} shards, not {spec.method.shard_count}",
                        hint="leave out --shards with --colocate-with")


def shard_name_of(table: QualifiedName, shard_id: int) -> str:
    return shard_table_name(table.name, shard_id)
