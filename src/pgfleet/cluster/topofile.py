"""Topology export and import: the wiki seed's "dump & restore of the topology".

The file holds nodes (addresses, no passwords), and for each distributed or reference table its
columns, checks, method, key, co-location and shards. Import re-attaches a coordinator to shards that
exist on the workers: it recreates missing parent tables with their foreign partitions (or, for a
reference table, the table itself with its rows copied back from a worker) and the catalog rows.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..errors import ClusterError, ExecuteError, SpecError, TopologyError
from ..execute.connect import Conn, Endpoint, describe_error
from ..plan import tables
from ..spec import QualifiedName
from ..topology.model import Column, Constraint, Shard, TableDef
from ..topology.read import table_def
from .fleet import Fleet
from .topocheck import check_against_workers

FORMAT = "pgfleet-topology"

# Sequences behind column defaults (serial/bigserial or an explicit nextval), with where they stand.
_SEQUENCES = """
SELECT a.attname, d.refobjid::regclass::text, sq.last_value
FROM pg_attrdef ad
JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
JOIN pg_class c ON c.oid = d.refobjid AND c.relkind = 'S'
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_sequences sq ON sq.schemaname = n.nspname AND sq.sequencename = c.relname
WHERE ad.adrelid = %s
"""
VERSION = 1


def export_topology(fleet: Fleet) -> dict[str, Any]:
    conn = fleet.conn()
    topo = fleet.topology()
    out_tables = []
    for t in topo.tables:
        tdef = table_def(conn, t.oid)
        sequences = [{"column": str(r[0]), "sequence": str(r[1]), "last_value": int(str(r[2] or 0))}
                     for r in conn.execute(_SEQUENCES, (t.oid,)).fetchall()]
        out_tables.append({
            "schema": t.name.schema, "name": t.name.name, "method": t.method, "key": t.key,
            "sequences": sequences,
            "colocation_id": t.colocation_id,
            "columns": [asdict(c) for c in tdef.columns],
            "constraints": [asdict(c) for c in tdef.constraints],
            "shards": [{k: v for k, v in asdict(s).items() if k != "table_oid"} for s in t.shards],
        })
    return {
        "format": FORMAT, "version": VERSION, "database": fleet.coordinator.dbname,
        "nodes": [asdict(n) for n in topo.nodes],
        "tables": out_tables,
    }


def load_topology_file(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ClusterError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ClusterError(f"{path} is not JSON ({exc})", hint="give a file written by 'pgfleet export'") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("version") != VERSION:
        raise ClusterError(f"{path} is not a pgfleet topology file (version {VERSION})",
                           hint="give a file written by 'pgfleet export'")
    return data


def _table_from(entry: dict[str, Any]) -> TableDef:
    try:
        return TableDef(
            oid=0, name=QualifiedName(entry["schema"], entry["name"]), relkind="r", owner="",
            columns=tuple(Column(**c) for c in entry["columns"]),
            constraints=tuple(Constraint(**{**c, "columns": tuple(c.get("columns", ()))}) for c in entry["constraints"]))
    except (KeyError, TypeError) as exc:
        raise ClusterError(f"malformed table entry in topology file: {exc}") from None


def _shards_from(entry: dict[str, Any]) -> tuple[Shard, ...]:
    try:
        return tuple(Shard(table_oid=0, **{**s, "values": tuple(s.get("values", ()))}) for s in entry["shards"])
    except (KeyError, TypeError) as exc:
        raise ClusterError(f"malformed shard entry in topology file: {exc}") from None


@dataclass(frozen=True)
class ImportPlan:
    """What :func:`check_import` found to do: nodes to register, tables to create, tables already there."""

    missing: list[dict[str, Any]]
    todo: list[tuple[dict[str, Any], QualifiedName, TableDef, tuple[Shard, ...], bool]]
    skipped: list[str]


def _local_endpoint(fleet: Fleet, node_name: str) -> Endpoint:
    """A local cluster's node, in the database of ``fleet`` (its shards are in the database of that name)."""
    assert fleet.local is not None
    return replace(fleet.local.endpoint(node_name), dbname=fleet.coordinator.dbname)


def import_topology(fleet: Fleet, data: dict[str, Any]) -> str:
    """Re-attach this coordinator to the shards the file names. Everything is checked first (nodes known,
    shard tables present on their workers with the file's columns, shards covering the key space); a
    mismatch raises before anything is applied."""
    return apply_import(fleet, check_import(fleet, data))


def check_import(fleet: Fleet, data: dict[str, Any]) -> ImportPlan:
    """Every check of :func:`import_topology`, nothing applied (so that several databases' files can all be
    checked before any is applied)."""
    conn = fleet.conn()
    topo = fleet.topology()
    known = {n.name for n in topo.nodes}
    local_names = {ln.name for ln in fleet.local.spec.nodes} if fleet.local is not None else set()
    missing = [n for n in data["nodes"] if n["role"] == "worker" and n["name"] not in known]
    for n in missing:
        if n["name"] not in local_names:
            raise TopologyError(f"node {n['name']} ({n['host']}:{n['port']}/{n['dbname']}) is not registered",
                                hint=f"add it with 'pgfleet node add {n['name']} --dsn …' (passwords are not "
                                     "exported) and import again")
    reachable = known | {n["name"] for n in missing}

    def endpoint_of(node_name: str) -> Endpoint:
        node = topo.node(node_name)
        if node is not None:
            return fleet.endpoint(node)
        return _local_endpoint(fleet, node_name)

    present = {(str(t.name.schema), t.name.name) for t in topo.tables}
    todo: list[tuple[dict[str, Any], QualifiedName, TableDef, tuple[Shard, ...], bool]] = []
    skipped = []
    for entry in data["tables"]:
        name = QualifiedName(entry["schema"], entry["name"])
        if (name.schema, name.name) in present:
            skipped.append(str(name))
            continue
        tdef = _table_from(entry)
        shards = _shards_from(entry)
        for s in shards:
            if s.node not in reachable:
                raise TopologyError(f"shard {s.shard_id} of {name} is on unknown node {s.node}")
        row = conn.execute("SELECT to_regclass(%s)::oid", (str(name),)).fetchone()
        exists = row is not None and row[0] is not None
        if exists and entry["method"] != "reference":
            raise SpecError(f"table {name} already exists on the coordinator and is not distributed",
                            hint="rename or drop it, then import again")
        coordinator = table_def(conn, int(str(row[0]))) if exists and row is not None else None
        check_against_workers(tdef, entry["method"], shards, endpoint_of, coordinator)
        todo.append((entry, name, tdef, shards, exists))
    return ImportPlan(missing, todo, skipped)


def apply_import(fleet: Fleet, plan: ImportPlan) -> str:
    """Register the missing nodes and create the tables of a checked plan (each table all or nothing)."""
    conn = fleet.conn()
    for n in plan.missing:
        fleet.add_node(n["name"], _local_endpoint(fleet, n["name"]), kind="local")
    topo = fleet.topology()
    created = []
    group_map: dict[int, int] = {}
    for entry, name, tdef, shards, exists in plan.todo:
        try:
            with conn.transaction():
                conn.execute("SELECT set_config('pgfleet.internal', 'on', true)")
                if entry["method"] == "reference":
                    oid = _import_reference(fleet, conn, tdef, shards, exists, entry.get("sequences", []))
                    colocation = None
                else:
                    conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name.schema or "public")))
                    for seq in entry.get("sequences", []):
                        # regclass text written by the server: already quoted where needed
                        conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(sql.SQL(seq["sequence"])))
                    conn.execute(tables.parent_table_ddl(tdef, name, entry["method"], entry["key"]))
                    for s in shards:
                        node = topo.node(s.node)
                        assert node is not None
                        conn.execute(tables.foreign_partition_ddl(name, s, node.server_name))
                    _advance_sequences(conn, tdef, entry.get("sequences", []))
                    row = conn.execute("SELECT %s::regclass::oid", (str(name),)).fetchone()
                    assert row is not None
                    oid = int(str(row[0]))
                    old_group = entry.get("colocation_id")
                    if old_group is not None and old_group in group_map:
                        colocation = group_map[old_group]
                    else:
                        key_col = tdef.column(entry["key"])
                        grow = conn.execute("INSERT INTO pgfleet.colocation_groups (method, key_type, shard_count) "
                                            "VALUES (%s, %s, %s) RETURNING id",
                                            (entry["method"], key_col.type if key_col else "", len(shards))).fetchone()
                        assert grow is not None
                        colocation = int(str(grow[0]))
                        if old_group is not None:
                            group_map[old_group] = colocation
                rows = tables.catalog_rows(sql.Literal(oid), name, entry["method"], entry["key"], colocation,
                                           [replace(s, table_oid=oid) for s in shards])
                conn.execute(rows.table_insert)
                for ins in rows.shard_inserts:
                    conn.execute(ins)
                conn.execute("SELECT setval('pgfleet.shard_id_seq', greatest(%s, "
                             "(SELECT last_value FROM pgfleet.shard_id_seq)))", (max(s.shard_id for s in shards),))
                conn.execute("SELECT pgfleet.snapshot_columns(%s)", (oid,))
        except psycopg.Error as exc:
            raise ExecuteError(f"importing {name} failed: {describe_error(exc)}",
                               hint="nothing of this table was changed") from None
        created.append(str(name))
    parts = [f"imported {len(created)} table(s)"]
    if created:
        parts.append(": " + ", ".join(created))
    if plan.skipped:
        parts.append(f"; already present: {', '.join(plan.skipped)}")
    return "".join(parts)


def _advance_sequences(conn: Conn, tdef: TableDef,
                       sequences: list[dict[str, Any]]) -> None:
    """Sequences and identities continue after both their exported value and the highest key present."""
    for seq in sequences:
        col = sql.Identifier(seq["column"])
        conn.execute(sql.SQL("SELECT setval({}::regclass, greatest({}, (SELECT max({}) FROM {}), 1))").format(
            sql.Literal(seq["sequence"]), sql.Literal(seq["last_value"]), col, tables.ident(tdef.name)))
        conn.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
            sql.SQL(seq["sequence"]), sql.Identifier(tdef.name.schema or "public", tdef.name.name, seq["column"])))
    for c in tdef.columns:
        if c.identity:
            row = conn.execute(sql.SQL("SELECT coalesce(max({}), 0) + 1 FROM {}").format(
                sql.Identifier(c.name), tables.ident(tdef.name))).fetchone()
            assert row is not None
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} RESTART WITH {}").format(
                tables.ident(tdef.name), sql.Identifier(c.name), sql.Literal(int(str(row[0])))))


def _import_reference(fleet: Fleet, conn: Conn, tdef: TableDef,
                      shards: tuple[Shard, ...], exists: bool, sequences: list[dict[str, Any]]) -> int:
    topo = fleet.topology()
    name = tdef.name
    for s in shards:
        node = topo.node(s.node)
        assert node is not None
        conn.execute(tables.foreign_table_ddl(tdef, s, node.server_name))
    if not exists:
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(name.schema or "public")))
        for seq in sequences:
            conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(sql.SQL(seq["sequence"])))
        ddl = tables.shard_table_ddl(tdef, name, rule=None, rename_objects=False)
        for stmt in ddl[1:]:
            conn.execute(stmt)
        for seq in sequences:
            conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT nextval({}::regclass)").format(
                tables.ident(name), sql.Identifier(seq["column"]), sql.Literal(seq["sequence"])))
        conn.execute(sql.SQL("INSERT INTO {} ({cols}) SELECT {cols} FROM {}").format(
            tables.ident(name), tables.ident(shards[0].foreign_name), cols=tables.column_list(tdef.columns)))
        _advance_sequences(conn, tdef, sequences)
    for stmt in tables.reference_triggers_ddl(name):
        conn.execute(stmt)
    row = conn.execute("SELECT %s::regclass::oid", (str(name),)).fetchone()
    assert row is not None
    return int(str(row[0]))
