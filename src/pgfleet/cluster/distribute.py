"""Turning a coordinator table into a distributed or reference table, data included.

Order of work, chosen so that a failure at any point leaves the original table untouched:
1. validate everything and reach every worker involved (nothing changed yet);
2. create the shard tables on the workers and a staging parent with foreign partitions on the
   coordinator (recorded in pgfleet.operations);
3. lock the original against writes (reads go on), copy its rows in batches with progress;
4. verify row count and checksum, shard by shard against the original;
5. in the lock-holding transaction: swap names, move sequences, owner and grants, write the catalog,
   drop the original; COMMIT.
Any failure before 5 commits drops the staging parent and the shard tables again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import replace

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from ..errors import ExecuteError, PgfleetError, SpecError, TopologyError
from ..execute.connect import CANONICAL_SETTINGS, Conn, describe_error
from ..plan import layout, tables
from ..spec import DistributeSpec, ListSpec, QualifiedName, RangeSpec
from ..topology.model import Shard, TableDef
from ..topology.read import hash_function, resolve_table, table_def
from .privileges import apply_privileges
from .bounds import check_bounds
from .fleet import Fleet
from .foreign_keys import check_foreign_keys, enforce_foreign_keys
from .statistics import analyze_shards

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
BATCH_ROWS = 50_000
LOCK_SPACE = 0x7066  # advisory lock class for pgfleet table operations

CHECKSUM = "SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)::numeric), 0) FROM {} t"


def no_progress(_phase: str, _done: int, _total: int) -> None:
    pass


def set_internal(conn: Conn) -> None:
    conn.execute("SELECT set_config('pgfleet.internal', 'on', true)")


def set_canonical(conn: Conn) -> None:
    for name, value in CANONICAL_SETTINGS.items():
        conn.execute("SELECT set_config(%s, %s, true)", (name, value))


def lock_against_writes(fleet: Fleet, name: QualifiedName) -> Conn:
    """A new coordinator connection in a transaction holding ``name`` in EXCLUSIVE mode (reads go on,
    writes wait), with pgfleet's internal marker and canonical settings. The caller commits or closes it."""
    lock = fleet.new_coordinator_conn()
    try:
        lock.autocommit = False
        set_internal(lock)
        set_canonical(lock)
        lock.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(tables.ident(name)))
    except BaseException:
        lock.close()
        raise
    return lock


def alloc_shard_ids(conn: Conn, count: int) -> list[int]:
    rows = conn.execute("SELECT nextval('pgfleet.shard_id_seq') FROM generate_series(1, %s)", (count,)).fetchall()
    return [int(str(r[0])) for r in rows]


def operation_start(conn: Conn, kind: str, table: TableDef, shards: tuple[Shard, ...], staging: str | None) -> int:
    detail = {"staging": staging, "shards": [
        {"node": s.node, "schema": s.shard_schema, "table": s.shard_table, "id": s.shard_id} for s in shards]}
    row = conn.execute("INSERT INTO pgfleet.operations (kind, relid, table_name, detail) VALUES (%s, %s, %s, %s) "
                       "RETURNING id", (kind, table.oid, str(table.name), json.dumps(detail))).fetchone()
    assert row is not None
    return int(str(row[0]))


def operation_end(conn: Conn, op: int, state: str) -> None:
    try:
        conn.execute("UPDATE pgfleet.operations SET state = %s, finished_at = now() WHERE id = %s", (state, op))
    except psycopg.Error:
        log.warning("could not record the end of operation %s", op)


def cleanup_leftovers(fleet: Fleet, oid: int) -> None:
    """Remove what an interrupted distribute/reference of the table with ``oid`` left behind."""
    conn = fleet.conn()
    rows = conn.execute("SELECT id, detail FROM pgfleet.operations WHERE relid = %s AND state = 'running'",
                        (oid,)).fetchall()
    topo = fleet.topology()
    for op_id, detail in rows:
        info = detail if isinstance(detail, dict) else json.loads(str(detail))
        staging = info.get("staging")
        if staging:
            with conn.transaction():
                set_internal(conn)
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(
                    sql.Identifier(staging["schema"], staging["table"])))
        for s in info.get("shards", []):
            node = topo.node(s["node"])
            if node is None:
                continue
            try:
                with fleet.worker_conn(node) as w:
                    _drop_marked(w, s["schema"], s["table"], int(s["id"]))
            except (PgfleetError, psycopg.Error):
                raise TopologyError(f"an interrupted operation on this table left shard {s['schema']}.{s['table']} "
                                    f"on node {s['node']}, which cannot be reached",
                                    hint=f"start node {s['node']} and run the command again") from None
        operation_end(conn, int(str(op_id)), "cleaned")


DROP_MARKED = """
DO $pgfleet$ BEGIN
  IF obj_description(to_regclass({name}), 'pg_class') = {marker} THEN EXECUTE 'DROP TABLE ' || {name}; END IF;
END $pgfleet$"""


def _drop_marked(conn: Conn, schema: str, table: str, shard_id: int) -> None:
    """Drop a worker table only if it carries this shard's marker: never a table pgfleet did not create."""
    name = sql.Identifier(schema, table).as_string(conn)
    conn.execute(sql.SQL(DROP_MARKED).format(name=sql.Literal(name), marker=sql.Literal(tables.shard_marker(shard_id))))


def drop_worker_tables(fleet: Fleet, shards: tuple[Shard, ...]) -> bool:
    """Drop the shards this operation created; False if a worker could not be reached (left for later)."""
    topo = fleet.topology()
    clean = True
    for shard in shards:
        node = topo.node(shard.node)
        if node is None:
            continue
        try:
            with fleet.worker_conn(node) as w:
                _drop_marked(w, shard.shard_schema, shard.shard_table, shard.shard_id)
        except (PgfleetError, psycopg.Error) as exc:
            clean = False
            log.warning("could not drop shard %s on %s: %s", shard.shard_name, shard.node, exc)
    return clean


@contextmanager
def table_lock(fleet: Fleet, name: QualifiedName) -> Iterator[None]:
    """One pgfleet operation per table at a time (session advisory lock on the coordinator)."""
    conn = fleet.conn()
    oid = resolve_table(conn, name)
    row = conn.execute("SELECT pg_try_advisory_lock(%s, %s)", (LOCK_SPACE, oid)).fetchone()
    if not row or not row[0]:
        raise TopologyError(f"another pgfleet operation on {name} is running",
                            hint="wait for it to finish (see pgfleet status)")
    try:
        yield
    finally:
        with suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, oid))


def prepare_source(fleet: Fleet, name: QualifiedName) -> TableDef:
    conn = fleet.conn()
    oid = resolve_table(conn, name)
    topo = fleet.topology()
    existing = topo.table(oid)
    if existing is not None:
        raise SpecError(f"{existing.name} is already a {existing.method} table",
                        hint=f"undo it first (pgfleet undistribute {existing.name}); "
                             "to change the shard count of a hash table use pgfleet reshard")
    cleanup_leftovers(fleet, oid)
    return table_def(conn, oid)


def create_on_workers(conns: dict[str, Conn], groups: dict[str, list[Shard]],
                       ddl: Callable[[Shard], list[sql.Composed]], what: str, created: list[Shard],
                       types: Sequence[sql.SQL] = ()) -> None:
    """Create each node's shards in one transaction on that node, after the coordinator's ``types`` the
    table uses (:func:`worker_type_statements`); record in ``created`` what committed, so that a failure
    removes exactly what this operation made and never a table it did not create."""
    for node, shards in groups.items():
        conn = conns[node]
        try:
            with conn.transaction():
                for type_stmt in types:
                    conn.execute(type_stmt)
                for shard in shards:
                    for stmt in ddl(shard):
                        conn.execute(stmt)
        except psycopg.Error as exc:
            raise ExecuteError(f"creating {what} failed: {describe_error(exc)}", node=node) from None
        created.extend(shards)


def worker_type_statements(conn: Conn, relid: int) -> list[sql.SQL]:
    """The statements that give a worker the enums, domains, composite and extension types the table's
    columns use (pgfleet.type_statement in sql/types.sql; built there with format's %I and %L)."""
    rows = conn.execute("SELECT pgfleet.type_statement(type_oid, true) FROM pgfleet.carried_types(%s) "
                        "ORDER BY depth DESC, type_oid", (relid,)).fetchall()
    if rows:  # the names the workers will know them by (a later rename or drop goes there under it)
        conn.execute("SELECT pgfleet.remember_types(%s)", (relid,))
    return [sql.SQL(str(r[0])) for r in rows]  # made by the catalog, quoted there


def shards_by_node(shards: tuple[Shard, ...]) -> dict[str, list[Shard]]:
    groups: dict[str, list[Shard]] = {}
    for shard in shards:
        groups.setdefault(shard.node, []).append(shard)
    return groups


def table_checksum(conn: Conn, target: sql.Composable) -> tuple[int, int]:
    row = conn.execute(sql.SQL(CHECKSUM).format(target)).fetchone()
    assert row is not None
    return int(str(row[0])), int(str(row[1]))


def _move_rows(fleet: Fleet, source: TableDef, target: QualifiedName, total: int, progress: Progress) -> int:
    """INSERT … SELECT the source into the staging parent in page-range batches, each committed."""
    conn = fleet.conn()
    row = conn.execute("SELECT pg_relation_size(%s) / current_setting('block_size')::int", (source.oid,)).fetchone()
    pages = int(str(row[0])) if row else 0
    per_page = max(1, total // max(1, pages))
    step = max(1, BATCH_ROWS // per_page)
    cols = tables.column_list(source.columns, writable_only=True)
    overriding = sql.SQL(" OVERRIDING SYSTEM VALUE" if any(c.identity for c in source.columns) else "")
    statement = sql.SQL("INSERT INTO {target} ({cols}){ov} SELECT {cols} FROM {src} "
                        "WHERE ctid >= format('(%s,0)', {lo}::bigint)::tid AND ctid < format('(%s,0)', {hi}::bigint)::tid")
    done = 0
    progress("copy", 0, total)
    for first in range(0, pages, step):
        q = statement.format(target=tables.ident(target), cols=cols, ov=overriding, src=tables.ident(source.name),
                             lo=sql.Literal(first), hi=sql.Literal(first + step))
        try:
            with conn.transaction():
                set_internal(conn)
                cur = conn.execute(q)
                done += max(cur.rowcount, 0)
        except psycopg.Error as exc:
            raise ExecuteError(f"copying rows of {source.name} into its shards failed: {describe_error(exc)}",
                               node=fleet.coordinator.name) from None
        progress("copy", done, total)
    return done


def verify_copy(fleet: Fleet, source_sum: tuple[int, int], shards: tuple[Shard, ...], what: str,
            progress: Progress) -> None:
    count, total = 0, 0
    by_node: dict[str, list[Shard]] = {}
    for shard in shards:
        by_node.setdefault(shard.node, []).append(shard)
    progress("verify", 0, len(shards))
    checked = 0
    with fleet.worker_conns(list(by_node), canonical=True) as conns:
        for node, node_shards in by_node.items():
            for shard in node_shards:
                c, s = table_checksum(conns[node], tables.ident(shard.shard_name))
                count += c
                total += s
                checked += 1
                progress("verify", checked, len(shards))
    if (count, total) != source_sum:
        raise ExecuteError(f"verification of {what} failed: the original has {source_sum[0]} rows, the shards {count}"
                           f"{'' if count != source_sum[0] else ' with a different checksum'}",
                           hint="nothing was changed; run the command again")


def _swap(conn: Conn, table: TableDef, staging: QualifiedName) -> None:
    """Give the staging parent the original's name, sequences, owner and grants; drop the original."""
    schema = table.name.schema or "public"
    old_name = f"pgfleet_old_{table.oid}"
    owned = conn.execute(
        "SELECT s.oid::regclass::text, a.attname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
        "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "WHERE d.refobjid = %s AND d.deptype = 'a' AND s.relkind = 'S'", (table.oid,)).fetchall()
    restarts = [(col.name, next_identity_value(conn, table.name, col.name)) for col in table.columns if col.identity]
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(tables.ident(table.name), sql.Identifier(old_name)))
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(tables.ident(staging),
                                                               sql.Identifier(table.name.name)))
    new = QualifiedName(schema, table.name.name)
    for seq, col in owned:
        conn.execute(sql.SQL("ALTER SEQUENCE {} OWNED BY {}").format(
            sql.SQL(str(seq)), sql.Identifier(schema, table.name.name, str(col))))
    for col_name, value in restarts:
        conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} RESTART WITH {}").format(
            tables.ident(new), sql.Identifier(col_name), sql.Literal(value)))
    conn.execute(sql.SQL("ALTER TABLE {} OWNER TO {}").format(tables.ident(new), sql.Identifier(table.owner)))
    conn.execute(sql.SQL("SELECT pgfleet.copy_privileges({}, {}::regclass)").format(  # with column privileges
        sql.Literal(table.oid), sql.Literal(str(new))))
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, old_name)))


def next_identity_value(conn: Conn, table: QualifiedName, column: str) -> int:
    """The value the identity sequence of ``column`` hands out next: its own last_value and is_called
    (pg_sequences has no is_called, and its last_value is NULL before the first nextval)."""
    row = conn.execute("SELECT n.nspname, c.relname, s.seqincrement FROM pg_class c "
                       "JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_sequence s ON s.seqrelid = c.oid "
                       "WHERE c.oid = pg_get_serial_sequence(%s, %s)::regclass",
                       (str(table), column)).fetchone()
    assert row is not None, f"identity column {column} of {table} has no sequence"
    state = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}").format(
        sql.Identifier(str(row[0]), str(row[1])))).fetchone()
    assert state is not None
    return int(str(state[0])) + (int(str(row[2])) if state[1] else 0)


def distribute(fleet: Fleet, spec: DistributeSpec, progress: Progress | None = None) -> int:
    """Distribute a coordinator table by hash, range or list; return the number of rows moved."""
    with table_lock(fleet, spec.table):
        return _distribute(fleet, spec, progress)


def _distribute(fleet: Fleet, spec: DistributeSpec, progress: Progress | None) -> int:
    say = progress or no_progress
    conn = fleet.conn()
    table = prepare_source(fleet, spec.table)
    layout.check_table_shape(table, reference=False)
    key = layout.check_key(table, spec.key)
    topo = fleet.topology()
    colocated = None
    colocation_id: int | None = None
    method: str
    if spec.colocate_with is not None:
        other_oid = resolve_table(conn, spec.colocate_with)
        colocated = topo.table(other_oid)
        if colocated is None:
            raise SpecError(f"{spec.colocate_with} is not distributed",
                            hint=f"distribute it first, then co-locate {spec.table} with it")
        other_key = table_def(conn, other_oid).column(colocated.key or "")
        layout.check_colocation(table, key, spec, colocated, other_key.type if other_key else "")
        method = colocated.method
        colocation_id = colocated.colocation_id
    else:
        assert spec.method is not None
        method = layout.method_name(spec.method)
        if isinstance(spec.method, RangeSpec | ListSpec):
            check_bounds(conn, key, spec.method)
    hashfn = hash_function(conn, key.type) if method == "hash" else None
    workers = [w.name for w in topo.workers]
    if colocated is not None:
        count = len(colocated.shards)
    else:
        assert spec.method is not None
        count = layout.shard_count(spec.method)
    layout.check_nodes(spec, workers)
    foreign_keys = check_foreign_keys(conn, table.oid, key.name, colocation_id)
    shard_ids = alloc_shard_ids(conn, count)
    shards = layout.layout_shards(table, spec, workers, shard_ids, colocated)
    schema = table.name.schema or "public"
    staging = QualifiedName(schema, f"pgfleet_staging_{table.oid}")

    nodes = sorted({s.node for s in shards})
    with fleet.worker_conns(nodes) as wconns:  # every worker reachable, or nothing happens
        op = operation_start(conn, "distribute", table, shards, None)
        conn.execute("UPDATE pgfleet.operations SET detail = jsonb_set(detail, '{staging}', %s) WHERE id = %s",
                     (json.dumps({"schema": staging.schema, "table": staging.name}), op))
        lock: Conn | None = None
        created: list[Shard] = []
        try:
            say("shards", 0, len(shards))
            create_on_workers(
                wconns, shards_by_node(shards),
                lambda sh: tables.shard_table_ddl(table, sh.shard_name, rule=tables.shard_rule(key.name, sh, hashfn),
                                                  shard_id=sh.shard_id),
                f"shards of {table.name}", created, worker_type_statements(conn, table.oid))
            apply_privileges(conn, wconns, shards, table.oid)
            say("shards", len(shards), len(shards))
            node_by_name = {n.name: n for n in topo.nodes}
            try:
                with conn.transaction():
                    set_internal(conn)
                    conn.execute(tables.parent_table_ddl(table, staging, method, key.name))
                    for shard in shards:
                        conn.execute(tables.foreign_partition_ddl(staging, shard, node_by_name[shard.node].server_name,
                                                                  remote_estimate=colocated is not None))
                    if colocated is not None:
                        _enable_remote_estimate(conn, colocated.shards)
            except psycopg.Error as exc:
                raise ExecuteError(f"creating the distributed parent of {table.name} failed: {describe_error(exc)}",
                                   node=fleet.coordinator.name) from None
            lock = lock_against_writes(fleet, table.name)
            source_sum = table_checksum(lock, tables.ident(table.name))
            moved = _move_rows(fleet, table, staging, source_sum[0], say)
            verify_copy(fleet, source_sum, shards, f"{table.name}", say)
            analyze_shards(wconns, shards)  # before the coordinator's ANALYZE of the parent reads them
            say("swap", 0, 1)
            index_defs = lock.execute("SELECT pgfleet.index_defs(%s)", (table.oid,)).fetchone()
            _swap(lock, table, staging)
            if colocation_id is None:
                row = lock.execute("INSERT INTO pgfleet.colocation_groups (method, key_type, shard_count) "
                                   "VALUES (%s, %s, %s) RETURNING id", (method, key.type, len(shards))).fetchone()
                assert row is not None
                colocation_id = int(str(row[0]))
            new_oid = lock.execute("SELECT %s::regclass::oid", (str(table.name),)).fetchone()
            assert new_oid is not None
            final = [replace(s, table_oid=int(str(new_oid[0]))) for s in shards]
            rows = tables.catalog_rows(sql.Literal(int(str(new_oid[0]))), table.name, method, key.name,
                                       colocation_id, final)
            lock.execute(rows.table_insert)
            for ins in rows.shard_inserts:
                lock.execute(ins)
            lock.execute("SELECT pgfleet.snapshot_columns(%s)", (int(str(new_oid[0])),))
            lock.execute("SELECT pgfleet.align_owners(%s)", (int(str(new_oid[0])),))
            lock.execute("UPDATE pgfleet.tables SET acl_signature = pgfleet.acl_signature(relid) WHERE relid = %s",
                         (int(str(new_oid[0])),))  # the shards got these privileges (apply_privileges)
            enforce_foreign_keys(lock, int(str(new_oid[0])), foreign_keys)  # on the shards at COMMIT
            lock.execute("SELECT pgfleet.adopt_indexes(%s, %s)", (int(str(new_oid[0])), Jsonb(index_defs[0] if index_defs else [])))
            lock.execute(sql.SQL("ANALYZE {}").format(tables.ident(table.name)))
            lock.commit()
            say("swap", 1, 1)
        except BaseException:
            if lock is not None:
                with suppress(psycopg.Error):
                    lock.rollback()
            # An operation whose leftovers could not all be removed stays 'running': the next run on this
            # table (or 'pgfleet status') finds it and removes them.
            if _undo_distribute(fleet, staging, tuple(created)):
                operation_end(conn, op, "failed")
            raise
        finally:
            if lock is not None:
                lock.close()
        operation_end(conn, op, "done")
    return moved


def _enable_remote_estimate(conn: Conn, shards: tuple[Shard, ...]) -> None:
    for shard in shards:
        row = conn.execute("SELECT 'use_remote_estimate=true' = ANY (coalesce(ftoptions, '{}')) FROM pg_foreign_table "
                           "WHERE ftrelid = to_regclass(%s)",
                           (sql.Identifier(shard.foreign_schema, shard.foreign_table).as_string(conn),)).fetchone()
        if row is not None and not row[0]:
            conn.execute(tables.remote_estimate_ddl(shard))


def _undo_distribute(fleet: Fleet, staging: QualifiedName, shards: tuple[Shard, ...]) -> bool:
    conn = fleet.conn()
    try:
        with conn.transaction():
            set_internal(conn)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {} CASCADE").format(tables.ident(staging)))
    except psycopg.Error as exc:
        log.warning("could not drop %s: %s", staging, describe_error(exc))
        return False
    return drop_worker_tables(fleet, shards)
