"""Frozen snapshots of nodes, table definitions and shards."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..spec import QualifiedName

COORDINATOR = "coordinator"
WORKER = "worker"


@dataclass(frozen=True)
class Node:
    name: str
    role: str  # coordinator | worker
    host: str
    port: int
    dbname: str
    username: str
    kind: str = "local"  # local | external

    @property
    def server_name(self) -> str:
        """The coordinator's postgres_fdw foreign server for this node."""
        return f"pgfleet_{self.name}"


@dataclass(frozen=True)
class Column:
    attnum: int
    name: str
    type: str  # format_type() text, e.g. "character varying(20)"
    type_schema: str  # namespace of the type: pg_catalog for built-ins
    notnull: bool
    default: str | None  # pg_get_expr of the default, None when absent
    collation: str | None  # quoted collation name when not the type's default
    identity: str = ""  # '', 'a' (ALWAYS) or 'd' (BY DEFAULT)
    generated: str = ""  # '' or 's' (STORED)

    @property
    def sequence_default(self) -> bool:
        return self.default is not None and "nextval(" in self.default


@dataclass(frozen=True)
class Constraint:
    name: str
    kind: str  # c check, p primary key, u unique, f foreign key, x exclusion, n not null
    definition: str  # pg_get_constraintdef
    columns: tuple[str, ...] = ()


@dataclass(frozen=True)
class Index:
    name: str
    definition: str  # pg_get_indexdef
    unique: bool
    constraint: bool  # backs a primary key / unique constraint (created with the constraint)
    using_tail: str  # "USING btree (name) WHERE ..." – the part after the table name


@dataclass(frozen=True)
class TableDef:
    """A plain table on the coordinator, as pgfleet needs to know it."""

    oid: int
    name: QualifiedName  # always schema-qualified
    relkind: str
    owner: str
    columns: tuple[Column, ...]
    constraints: tuple[Constraint, ...] = ()
    indexes: tuple[Index, ...] = ()
    dependent_views: tuple[str, ...] = ()
    referencing_fks: tuple[str, ...] = ()  # "other_table.constraint" pointing at this table
    acl: tuple[str, ...] = ()  # GRANT statements as (privilege, grantee) pairs rendered "PRIV\tGRANTEE"
    estimated_rows: int = 0

    def column(self, name: str) -> Column | None:
        for col in self.columns:
            if col.name == name:
                return col
        return None


@dataclass(frozen=True)
class Shard:
    shard_id: int
    table_oid: int
    index: int  # position within its table, shared by co-located tables
    node: str
    shard_schema: str
    shard_table: str
    foreign_schema: str
    foreign_table: str
    modulus: int | None = None
    remainder: int | None = None
    lower: str | None = None
    upper: str | None = None
    values: tuple[str, ...] = ()

    @property
    def shard_name(self) -> QualifiedName:
        return QualifiedName(self.shard_schema, self.shard_table)

    @property
    def foreign_name(self) -> QualifiedName:
        return QualifiedName(self.foreign_schema, self.foreign_table)


@dataclass(frozen=True)
class DistTable:
    oid: int
    name: QualifiedName
    method: str  # hash | range | list | reference
    key: str | None
    colocation_id: int | None
    shards: tuple[Shard, ...] = field(default=())


@dataclass(frozen=True)
class Topology:
    nodes: tuple[Node, ...]
    tables: tuple[DistTable, ...]

    @property
    def coordinator(self) -> Node | None:
        return next((n for n in self.nodes if n.role == COORDINATOR), None)

    @property
    def workers(self) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.role == WORKER)

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)

    def table(self, oid: int) -> DistTable | None:
        return next((t for t in self.tables if t.oid == oid), None)
