"""`pgfleet dump FILE`: the whole logical database as one pg_dump custom-format archive that pg_restore
loads into a plain PostgreSQL server — leaving pgfleet must always be possible.

How: a scratch database on the coordinator's server is made to look like the logical database on one
server, then dumped with pg_dump and dropped.
1. pg_dump of the coordinator (schema pgfleet and the foreign partitions' schemas excluded); from its table
   of contents go foreign servers, user mappings, pgfleet's extensions (postgres_fdw, dblink), event triggers
   and reference-table triggers, and the distributed tables' partitioned parents.
2. Into the scratch database: first the objects tables may depend on (schemas, types, functions,
   sequences), then each distributed table as a plain table (columns and checks of the coordinator's
   parent) with its rows read through the coordinator, then its primary key, uniques and indexes as they
   are on its shards (where they live), then the rest of the archive in its order (other tables and their
   rows, sequence values, views, foreign keys, grants), then the distributed tables' foreign keys
   (pgfleet.foreign_keys: they live on the shards).
3. pg_dump -Fc of the scratch database into a temporary name next to FILE, renamed to FILE when complete.
Every distributed table is read in one statement (one snapshot per worker), not all tables at one instant.
"""

from __future__ import annotations

import logging
import re
import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
from psycopg import sql

from ..errors import ClusterError, ExecuteError
from ..execute import Endpoint, connect, describe_error
from ..execute.connect import Conn
from ..node import binaries as binmod
from ..plan import tables
from ..proc import Completed, run
from ..spec import QualifiedName
from ..topology.model import Constraint, DistTable, Index, Topology
from ..topology.read import table_def
from .fleet import Fleet

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]

# Archive entries restored before the distributed tables are created (what their columns and defaults
# may need); everything else follows them in the archive's own order.
_FIRST = ("SCHEMA", "EXTENSION", "SHELL TYPE", "TYPE", "DOMAIN", "COLLATION", "FUNCTION", "PROCEDURE",
          "AGGREGATE", "OPERATOR", "CAST", "SEQUENCE")
_TYPES = sorted({*_FIRST, "USER MAPPING", "SERVER", "FOREIGN TABLE", "EVENT TRIGGER", "TRIGGER", "TABLE DATA",
                 "TABLE", "DEFAULT", "CONSTRAINT", "FK CONSTRAINT", "CHECK CONSTRAINT", "INDEX", "COMMENT", "ACL",
                 "SEQUENCE SET", "SEQUENCE OWNED BY", "VIEW", "MATERIALIZED VIEW", "TABLE ATTACH",
                 "FOREIGN DATA WRAPPER", "MATERIALIZED VIEW DATA", "RULE", "POLICY", "ROW SECURITY",
                 "INDEX ATTACH", "STATISTICS", "PUBLICATION", "SUBSCRIPTION"}, key=len, reverse=True)
_PGFLEET_EXTENSIONS = ("postgres_fdw", "dblink")
_EXTENSION_FUNCTIONS = """
SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid JOIN pg_proc p ON p.oid = d.objid
WHERE d.classid = 'pg_proc'::regclass AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
  AND e.extname = ANY (%s)
"""
_ENTRY = re.compile(r"^(\d+); (\d+) (\d+) (.*)$")


@dataclass(frozen=True)
class TocEntry:
    line: str
    kind: str
    schema: str
    tag: str  # the rest: the object's name (for a trigger or constraint: "table name"), then the owner


@dataclass(frozen=True)
class DumpResult:
    path: Path
    tables: int  # distributed tables written as plain tables
    rows: int  # their rows
    bytes: int


def parse_toc(listing: str) -> list[TocEntry]:
    """The entries of ``pg_restore -l`` output (comment lines skipped)."""
    entries = []
    for line in listing.splitlines():
        match = _ENTRY.match(line)
        if match is None:
            continue
        rest = match.group(4)
        kind = next((k for k in _TYPES if rest.startswith(k + " ")), rest.split(" ", 1)[0])
        schema, _, tag = rest[len(kind) + 1:].partition(" ")
        entries.append(TocEntry(line, kind, schema, tag))
    return entries


def _dropped(entry: TocEntry, parents: set[tuple[str, str]], members: set[str]) -> bool:
    """Whether an archive entry belongs to pgfleet's machinery rather than to the logical database
    (``parents``: the distributed tables' parents and their indexes; ``members``: "FUNCTION name(args)" of
    the functions of postgres_fdw and dblink, for their grants)."""
    words = entry.tag.split(" ")
    if entry.kind in ("ACL", "COMMENT") and any(entry.tag.startswith(m + " ") for m in members):
        return True
    if entry.kind in ("SERVER", "USER MAPPING", "FOREIGN TABLE", "FOREIGN DATA WRAPPER", "TABLE ATTACH"):
        return True
    if entry.kind == "EXTENSION" and words[0] in _PGFLEET_EXTENSIONS:
        return True
    if entry.kind == "COMMENT" and entry.tag.startswith(tuple(f"EXTENSION {e} " for e in _PGFLEET_EXTENSIONS)):
        return True
    if entry.kind == "EVENT TRIGGER" and words[0].startswith("pgfleet"):
        return True
    if entry.kind == "TRIGGER" and len(words) > 1 and words[1].startswith("pgfleet_"):
        return True
    return entry.kind in ("TABLE", "INDEX") and (entry.schema, words[0]) in parents


def _binaries(fleet: Fleet) -> binmod.Binaries:
    return fleet.local.binaries if fleet.local is not None else binmod.find()


def _client(bins: binmod.Binaries, program: str, ep: Endpoint, *args: str, timeout: float) -> Completed:
    env = {"PGDATABASE": ep.dbname, "PGAPPNAME": "pgfleet dump"}
    if ep.password:
        env["PGPASSWORD"] = ep.password
    argv = [bins.path(program), "-h", ep.host, "-p", str(ep.port), "-U", ep.user, *args]
    return run(argv, env=env, timeout=timeout, what=program, node=ep.name)


@contextmanager
def _scratch_database(fleet: Fleet) -> Iterator[Endpoint]:
    name = "pgfleet_dump_" + secrets.token_hex(4)
    conn = fleet.conn()
    conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name)))
    try:
        yield replace(fleet.coordinator, name=f"{fleet.coordinator.name} ({name})", dbname=name)
    finally:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _shard_keys(fleet: Fleet, topo: Topology, table: DistTable) -> tuple[list[Constraint], list[Index]]:
    """Primary key, uniques and indexes of ``table``'s first shard, under the coordinator's names."""
    shard = table.shards[0]
    node = topo.node(shard.node)
    if node is None:
        raise ClusterError(f"shard {shard.shard_id} of {table.name} is on unknown node {shard.node}")
    with fleet.worker_conn(node) as wconn:
        row = wconn.execute("SELECT to_regclass(%s)::oid",
                            (sql.Identifier(shard.shard_schema, shard.shard_table).as_string(wconn),)).fetchone()
        if row is None or row[0] is None:
            raise ClusterError(f"shard table {shard.shard_schema}.{shard.shard_table} of {table.name} is missing "
                               f"on {node.name}", hint="run 'pgfleet status' and repair the shard first")
        sdef = table_def(wconn, int(row[0]))
    known = [str(r[0]) for r in fleet.conn().execute(
        "SELECT index_name FROM pgfleet.indexes WHERE relid = %s", (table.oid,)).fetchall()]

    def original(name: str) -> str:
        if table.method == "reference":
            return name
        for candidate in known:
            if tables.shard_object_name(candidate, shard.shard_id) == name:
                return candidate
        suffix = f"_{shard.shard_id}"
        return name[: -len(suffix)] if name.endswith(suffix) else name

    constraints = [replace(c, name=original(c.name)) for c in sdef.constraints if c.kind in ("p", "u", "x")]
    indexes = [replace(i, name=original(i.name)) for i in sdef.indexes]
    return constraints, indexes


def _copy_rows(fleet: Fleet, target: Conn, table: DistTable, progress: Progress) -> int:
    tdef = table_def(fleet.conn(), table.oid)
    cols = tables.column_list([c for c in tdef.columns if not c.generated])
    name = tables.ident(table.name)
    count = fleet.conn().execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
    total = int(count[0]) if count else 0
    phase = f"rows of {table.name}"
    progress(phase, 0, total)
    done = 0
    with fleet.new_coordinator_conn() as source, \
            source.cursor().copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(cols, name)) as out, \
            target.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(name, cols)) as into:
        for chunk in out:
            into.write(chunk)
            done += bytes(chunk).count(b"\n")
            progress(phase, min(done, total), total)
    progress(phase, done, max(total, done))
    return done


def dump(fleet: Fleet, path: Path, progress: Progress | None = None, *, timeout: float = 3600) -> DumpResult:
    """Write the logical database to ``path`` (pg_dump custom format); see the module's description."""
    report: Progress = progress or (lambda _p, _d, _t: None)
    topo = fleet.topology()
    distributed = [t for t in topo.tables if t.method != "reference"]
    parents = {(t.name.schema or "public", t.name.name) for t in distributed}
    # the parents' own (partitioned) indexes: each table gets its indexes from its shards
    parents |= {(str(r[0]), str(r[1])) for r in fleet.conn().execute(
        "SELECT n.nspname, c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE i.indrelid = ANY (%s)", ([t.oid for t in distributed],)
    ).fetchall()}
    foreign_schemas = sorted({s.foreign_schema for t in distributed for s in t.shards})
    # identity sequences of distributed tables come with their table (ALTER TABLE … ADD GENERATED)
    identity = {(str(r[0]), str(r[1])) for r in fleet.conn().execute(
        "SELECT n.nspname, s.relname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
        "JOIN pg_namespace n ON n.oid = s.relnamespace WHERE d.classid = 'pg_class'::regclass "
        "AND d.deptype = 'i' AND s.relkind = 'S' AND d.refobjid = ANY (%s)", ([t.oid for t in distributed],)
    ).fetchall()}
    bins = _binaries(fleet)
    path = path.absolute()
    rows = 0
    with tempfile.TemporaryDirectory(prefix="pgfleet-dump-") as work:
        source = Path(work) / "coordinator.dump"
        excluded = [f"--exclude-schema={s}" for s in ["pgfleet", *foreign_schemas]]
        report("coordinator objects", 0, 1)
        _client(bins, "pg_dump", fleet.coordinator, "-Fc", "--no-subscriptions", "-f", str(source), *excluded,
                timeout=timeout)
        listing = _client(bins, "pg_restore", fleet.coordinator, "-l", str(source), timeout=timeout).stdout
        members = {f"FUNCTION {r[0]}" for r in fleet.conn().execute(_EXTENSION_FUNCTIONS, (list(_PGFLEET_EXTENSIONS),))}
        entries = [e for e in parse_toc(listing) if not _dropped(e, parents, members)]
        first = [e for e in entries if e.kind in _FIRST and (e.schema, e.tag.split(" ")[0]) not in identity]
        rest = [e for e in entries if e not in first]
        report("coordinator objects", 1, 1)
        with _scratch_database(fleet) as scratch:
            _restore(bins, scratch, source, first, Path(work) / "first.list", timeout)
            with connect(scratch) as target:
                for done, table in enumerate(distributed):
                    report("tables", done, len(distributed))
                    constraints, indexes = _shard_keys(fleet, topo, table)
                    tdef = table_def(fleet.conn(), table.oid)
                    _execute(target, [tables.plain_table_ddl(tdef, table.name),
                                      sql.SQL("ALTER TABLE {} OWNER TO {}").format(tables.ident(table.name),
                                                                                  sql.Identifier(tdef.owner))],
                             table.name)
                    rows += _copy_rows(fleet, target, table, report)
                    _execute(target, tables.keys_and_indexes_ddl(constraints, indexes, table.name), table.name)
                report("tables", len(distributed), len(distributed))
            _restore(bins, scratch, source, rest, Path(work) / "rest.list", timeout)
            with connect(scratch) as target:
                for referencing, statement in _foreign_keys(fleet.conn()):
                    _execute(target, [statement], referencing)
            report("archive", 0, 1)
            partial = path.with_name(f".{path.name}.partial-{secrets.token_hex(4)}")  # FILE appears whole or not at all
            try:
                _client(bins, "pg_dump", scratch, "-Fc", "-f", str(partial), timeout=timeout)
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)
            report("archive", 1, 1)
    return DumpResult(path=path, tables=len(distributed), rows=rows, bytes=path.stat().st_size)


_ACTIONS = frozenset({"NO ACTION", "RESTRICT", "CASCADE", "SET NULL", "SET DEFAULT"})
_DEFERRALS = frozenset({"NOT DEFERRABLE", "DEFERRABLE INITIALLY IMMEDIATE", "DEFERRABLE INITIALLY DEFERRED"})


def _foreign_keys(conn: Conn) -> list[tuple[QualifiedName, sql.Composed]]:
    """The foreign keys of distributed tables (pgfleet.foreign_keys: on their shards, not on the
    coordinator's parents) as ALTER TABLE statements for the plain tables; after everything else, so
    that what they reference exists with its keys."""
    rows = conn.execute(
        "SELECT n.nspname, c.relname, f.name, f.columns, rn.nspname, r.relname, f.ref_columns, f.on_delete, f.on_update, "
        "f.deferral "
        "FROM pgfleet.foreign_keys f JOIN pg_class c ON c.oid = f.relid JOIN pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_class r ON r.oid = f.ref_relid JOIN pg_namespace rn ON rn.oid = r.relnamespace "
        "ORDER BY n.nspname, c.relname, f.name").fetchall()
    out = []
    for schema, name, key, columns, ref_schema, ref_name, ref_columns, on_delete, on_update, deferral in rows:
        if on_delete not in _ACTIONS or on_update not in _ACTIONS or deferral not in _DEFERRALS:
            raise ClusterError(f"foreign key {key} of {schema}.{name} has an unknown action or deferral "
                               f"{on_delete} / {on_update} / {deferral}")
        out.append((QualifiedName(schema, name), sql.SQL(
            "ALTER TABLE {} ADD CONSTRAINT {} FOREIGN KEY ({}) REFERENCES {} ({}) ON DELETE {} ON UPDATE {} {}").format(
            sql.Identifier(schema, name), sql.Identifier(key), sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.Identifier(ref_schema, ref_name), sql.SQL(", ").join(map(sql.Identifier, ref_columns)),
            sql.SQL(on_delete), sql.SQL(on_update), sql.SQL(deferral))))
    return out


def _restore(bins: binmod.Binaries, ep: Endpoint, archive: Path, entries: list[TocEntry], listing: Path,
             timeout: float) -> None:
    listing.write_text("".join(e.line + "\n" for e in entries))
    _client(bins, "pg_restore", ep, "-d", ep.dbname, "--exit-on-error", "-L", str(listing), str(archive), timeout=timeout)


def _execute(conn: Conn, statements: list[sql.Composed], table: QualifiedName) -> None:
    try:
        with conn.transaction():
            for statement in statements:
                conn.execute(statement)
    except psycopg.Error as exc:
        raise ExecuteError(f"recreating {table} as a plain table for the dump failed: {describe_error(exc)}") from None
