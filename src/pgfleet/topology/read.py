"""Read snapshots from a coordinator connection (reads only; writing is execute/'s job)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from ..errors import SpecError, TopologyError
from ..execute.connect import Conn
from ..spec import QualifiedName
from .model import Column, Constraint, DistTable, Index, Node, Shard, TableDef, Topology


def resolve_table(conn: Conn, name: QualifiedName) -> int:
    """The table's oid; SpecError naming the table when it does not exist."""
    text = str(name)
    try:
        row = conn.execute("SELECT to_regclass(%s)::oid", (text,)).fetchone()
    except psycopg.errors.InvalidName as exc:
        raise SpecError(f"malformed table name {text!r}") from exc
    except psycopg.Error as exc:
        raise SpecError(f"malformed table name {text!r}: {exc.diag.message_primary}") from exc
    if row is None or row[0] is None:
        raise SpecError(f"table {text} does not exist on the coordinator",
                        hint="create it there with plain SQL first (pgfleet psql), or check the name and schema")
    return int(str(row[0]))


_COLUMNS = """
SELECT a.attnum, a.attname, format_type(a.atttypid, a.atttypmod), tn.nspname, a.attnotnull,
       pg_get_expr(d.adbin, d.adrelid),
       CASE WHEN a.attcollation <> t.typcollation AND a.attcollation <> 0
            THEN quote_ident(cn.nspname) || '.' || quote_ident(co.collname) END,
       a.attidentity, a.attgenerated
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_namespace tn ON tn.oid = t.typnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
LEFT JOIN pg_collation co ON co.oid = a.attcollation
LEFT JOIN pg_namespace cn ON cn.oid = co.collnamespace
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_CONSTRAINTS = """
SELECT c.conname, c.contype, pg_get_constraintdef(c.oid),
       coalesce((SELECT array_agg(a.attname::text ORDER BY k.ord)
                 FROM unnest(c.conkey) WITH ORDINALITY AS k(attnum, ord)
                 JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum), '{}')
FROM pg_constraint c WHERE c.conrelid = %s AND c.contype IN ('c', 'p', 'u', 'f', 'x')
ORDER BY c.contype, c.conname
"""

_INDEXES = """
SELECT ic.relname, pg_get_indexdef(i.indexrelid), i.indisunique,
       EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid AND c.conrelid = i.indrelid),
       substring(pg_get_indexdef(i.indexrelid) FROM ' USING .*$')
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = %s ORDER BY ic.relname
"""

_VIEWS = """
SELECT DISTINCT v.oid::regclass::text
FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
WHERE d.refobjid = %s AND d.classid = 'pg_rewrite'::regclass AND v.oid <> %s
"""

_REFERENCING = """
SELECT format('%%I.%%I.%%I', n.nspname, c.relname, f.conname) FROM pg_constraint f
JOIN pg_class c ON c.oid = f.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE f.contype = 'f' AND f.confrelid = %s AND f.conrelid <> %s ORDER BY 1
"""

_ACL = """
SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END
FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
LEFT JOIN pg_roles r ON r.oid = a.grantee
WHERE c.oid = %s AND a.grantee <> c.relowner
"""


def table_def(conn: Conn, oid: int) -> TableDef:
    """The table's definition, its types, defaults and constraints spelled as they read anywhere: with
    only pg_catalog on the search path, PostgreSQL qualifies every other type, function and relation
    name (a shard's DDL runs on a worker, under that worker's search path)."""
    row = conn.execute("SELECT current_setting('search_path'), set_config('search_path', 'pg_catalog', false)").fetchone()
    assert row is not None
    try:
        return _table_def(conn, oid)
    finally:
        if conn.info.transaction_status != psycopg.pq.TransactionStatus.INERROR:
            conn.execute("SELECT set_config('search_path', %s, false)", (row[0],))


def _table_def(conn: Conn, oid: int) -> TableDef:
    head = conn.execute(
        "SELECT n.nspname, c.relname, c.relkind, pg_get_userbyid(c.relowner), greatest(c.reltuples, 0)::bigint "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = %s", (oid,)).fetchone()
    if head is None:
        raise TopologyError(f"table with oid {oid} disappeared")
    columns = tuple(
        Column(attnum=r[0], name=r[1], type=r[2], type_schema=r[3], notnull=r[4], default=r[5],
               collation=r[6], identity=r[7] or "", generated=r[8] or "")
        for r in conn.execute(_COLUMNS, (oid,)).fetchall())
    constraints = tuple(Constraint(r[0], r[1], r[2], tuple(r[3]))
                        for r in conn.execute(_CONSTRAINTS, (oid,)).fetchall())
    indexes = tuple(Index(r[0], r[1], r[2], r[3], r[4] or "") for r in conn.execute(_INDEXES, (oid,)).fetchall())
    views = tuple(r[0] for r in conn.execute(_VIEWS, (oid, oid)).fetchall())
    refs = tuple(r[0] for r in conn.execute(_REFERENCING, (oid, oid)).fetchall())
    acl = tuple(f"{r[0]}\t{r[1]}" for r in conn.execute(_ACL, (oid,)).fetchall())
    return TableDef(oid=oid, name=QualifiedName(head[0], head[1]), relkind=head[2], owner=head[3],
                    columns=columns, constraints=constraints, indexes=indexes, dependent_views=views,
                    referencing_fks=refs, acl=acl, estimated_rows=int(head[4]))


def hash_function(conn: Conn, type_name: str) -> str:
    """The extended hash support function (amproc 2) of the default hash opclass for ``type_name``.

    PostgreSQL's hash partitioning computes the partition from exactly this function with the seed
    HASH_PARTITION_SEED; the same function, called on a worker, lets each shard check its own rule.
    """
    row = conn.execute("SELECT pgfleet.key_hash_function(%s::regtype)", (type_name,)).fetchone()  # sql/migrations.sql
    if row is None or row[0] is None:
        raise SpecError(f"type {type_name} has no hash function, so it cannot be a hash distribution key",
                        hint="distribute by range or list instead, or choose another key column")
    return str(row[0])


NODE_COLUMNS = "name, role, host, port, dbname, username, kind"


def read_node(conn: Conn, name: str) -> Node | None:
    """One node of the catalog, as it is now (a failover changes its address)."""
    row = conn.execute(f"SELECT {NODE_COLUMNS} FROM pgfleet.nodes WHERE name = %s", (name,)).fetchone()
    return Node(*row) if row else None


def table_columns(conn: Conn, oid: int) -> list[str]:
    """The columns a COPY without a column list fills, in table order (generated ones excluded)."""
    return [str(r[0]) for r in conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped "
        "AND attgenerated = '' ORDER BY attnum", (oid,)).fetchall()]


def column_type(conn: Conn, oid: int, column: str) -> str:
    """format_type of a column ('' when there is no such column)."""
    row = conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                       "WHERE attrelid = %s AND attname = %s", (oid, column)).fetchone()
    return str(row[0]) if row else ""


def read_topology(conn: Conn) -> Topology:
    nodes = tuple(Node(*r) for r in conn.execute(
        f"SELECT {NODE_COLUMNS} FROM pgfleet.nodes ORDER BY role <> 'coordinator', name").fetchall())
    shards_by_table: dict[int, list[Shard]] = {}
    for r in conn.execute(
            "SELECT shard_id, relid::bigint, shard_index, node, shard_schema, shard_table, foreign_schema, "
            "foreign_table, modulus, remainder, lower_bound, upper_bound, coalesce(list_values, '{}') "
            "FROM pgfleet.shards ORDER BY relid, shard_index, node").fetchall():
        shard = Shard(shard_id=r[0], table_oid=r[1], index=r[2], node=r[3], shard_schema=r[4], shard_table=r[5],
                      foreign_schema=r[6], foreign_table=r[7], modulus=r[8], remainder=r[9], lower=r[10],
                      upper=r[11], values=tuple(r[12]))
        shards_by_table.setdefault(shard.table_oid, []).append(shard)
    tables = tuple(
        DistTable(oid=r[0], name=QualifiedName(r[1], r[2]), method=r[3], key=r[4], colocation_id=r[5],
                  shards=tuple(shards_by_table.get(r[0], ())))
        for r in conn.execute(
            "SELECT relid::bigint, schema_name, table_name, method, key_column, colocation_id "
            "FROM pgfleet.tables ORDER BY schema_name, table_name").fetchall())
    return Topology(nodes=nodes, tables=tables)


def catalog_installed(conn: Conn) -> bool:
    row = conn.execute("SELECT to_regclass('pgfleet.nodes') IS NOT NULL").fetchone()
    return bool(row and row[0])


def qualified(name: QualifiedName) -> sql.Composable:
    if name.schema is None:
        return sql.Identifier(name.name)
    return sql.Identifier(name.schema, name.name)
