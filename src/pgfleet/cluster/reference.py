"""Turning a coordinator table into a reference table (a verified full copy on every worker, kept in step
by triggers), and giving a new worker copies of every reference table. The same order of work as
distribute.py: copies made and verified while writes wait, the catalog written in the lock-holding
transaction, copies dropped again on any failure."""

from __future__ import annotations

from contextlib import ExitStack, suppress

import psycopg
from psycopg import sql

from ..errors import ExecuteError, SpecError
from ..execute.connect import Conn, describe_error
from ..plan import layout, tables
from ..spec import ReferenceSpec
from ..topology.model import Shard, TableDef
from ..topology.read import table_def
from .distribute import (
    Progress,
    alloc_shard_ids,
    create_on_workers,
    drop_worker_tables,
    lock_against_writes,
    no_progress,
    operation_end,
    operation_start,
    prepare_source,
    shards_by_node,
    table_checksum,
    table_lock,
    verify_copy,
    worker_type_statements,
)
from .fleet import Fleet
from .privileges import apply_privileges
from .statistics import analyze_shards


def make_reference(fleet: Fleet, spec: ReferenceSpec, progress: Progress | None = None) -> int:
    """Copy a coordinator table to every worker and keep the copies in step; return rows copied."""
    with table_lock(fleet, spec.table):
        return _make_reference(fleet, spec, progress)


def _make_reference(fleet: Fleet, spec: ReferenceSpec, progress: Progress | None) -> int:
    table = prepare_source(fleet, spec.table)
    layout.check_table_shape(table, reference=True)
    layout.check_reference(table)
    workers = [w.name for w in fleet.topology().workers]
    if not workers:
        raise SpecError("there are no workers to copy a reference table to",
                        hint="add one with 'pgfleet node add' or 'pgfleet up --workers N'")
    return _copy_reference(fleet, table, workers, new_table=True, progress=progress)


def add_reference_copies(fleet: Fleet, node: str, progress: Progress | None = None) -> list[str]:
    """Give a newly added worker a copy of every reference table; return the tables copied."""
    done = []
    for t in fleet.topology().tables:
        if t.method != "reference" or any(s.node == node for s in t.shards):
            continue
        with table_lock(fleet, t.name):
            _copy_reference(fleet, table_def(fleet.conn(), t.oid), [node], new_table=False, progress=progress)
        done.append(str(t.name))
    return done


def _copy_reference(fleet: Fleet, table: TableDef, workers: list[str], *, new_table: bool,
                    progress: Progress | None) -> int:
    """Create verified copies of ``table`` on ``workers`` while writes to it wait.

    ``new_table``: the table becomes a reference table (triggers, catalog row); otherwise it already is
    one and only gains copies, which its trigger finds in pgfleet.shards from the commit on.
    """
    say = progress or no_progress
    conn = fleet.conn()
    topo = fleet.topology()
    ids = alloc_shard_ids(conn, len(workers))
    schema = table.name.schema or "public"
    shards = tuple(
        Shard(shard_id=sid, table_oid=table.oid, index=0, node=w, shard_schema=schema, shard_table=table.name.name,
              foreign_schema=tables.SHARD_SCHEMA, foreign_table=tables.shard_table_name(table.name.name, sid))
        for sid, w in zip(ids, workers, strict=True))
    node_by_name = {n.name: n for n in topo.nodes}
    with fleet.worker_conns(workers) as wconns, ExitStack() as stack:
        op = operation_start(conn, "reference", table, shards, None)
        lock: Conn | None = None
        created: list[Shard] = []
        try:
            create_on_workers(wconns, shards_by_node(shards),
                               lambda sh: tables.shard_table_ddl(table, sh.shard_name, rule=None, rename_objects=False,
                                                                 shard_id=sh.shard_id),
                               f"the copy of {table.name}", created, worker_type_statements(conn, table.oid))
            apply_privileges(conn, wconns, shards, table.oid)
            lock = lock_against_writes(fleet, table.name)
            source_sum = table_checksum(lock, tables.ident(table.name))
            cols = tables.column_list(table.columns)
            for wc in wconns.values():
                wc.autocommit = False
            total = source_sum[0] * len(workers)
            say("copy", 0, total)
            try:
                with lock.cursor().copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
                        cols, tables.ident(table.name))) as src:
                    sinks = [stack.enter_context(wconns[s.node].cursor().copy(
                        sql.SQL("COPY {} ({}) FROM STDIN").format(tables.ident(s.shard_name), cols))) for s in shards]
                    for chunk in src:
                        for sink in sinks:
                            sink.write(chunk)
                    stack.close()
            except psycopg.Error as exc:
                raise ExecuteError(f"copying {table.name} to the workers failed: {describe_error(exc)}") from None
            for wc in wconns.values():
                wc.commit()
                wc.autocommit = True
            say("copy", total, total)
            for shard in shards:
                verify_copy(fleet, source_sum, (shard,), f"the copy of {table.name} on {shard.node}", say)
            analyze_shards(wconns, shards)
            for shard in shards:
                lock.execute(tables.foreign_table_ddl(table, shard, node_by_name[shard.node].server_name))
            rows = tables.catalog_rows(sql.Literal(table.oid), table.name, "reference", None, None, shards)
            if new_table:
                for stmt in tables.reference_triggers_ddl(table.name):
                    lock.execute(stmt)
                lock.execute(rows.table_insert)
                lock.execute("SELECT pgfleet.snapshot_columns(%s)", (table.oid,))
                lock.execute("SELECT pgfleet.adopt_indexes(%s, pgfleet.index_defs(%s))", (table.oid, table.oid))
            for ins in rows.shard_inserts:
                lock.execute(ins)
            lock.execute("SELECT pgfleet.align_owners(%s)", (table.oid,))
            if new_table:
                lock.execute("UPDATE pgfleet.tables SET acl_signature = pgfleet.acl_signature(relid) WHERE relid = %s",
                             (table.oid,))
            lock.commit()
        except BaseException:
            if lock is not None:
                with suppress(psycopg.Error):
                    lock.rollback()
            for wc in wconns.values():
                try:
                    wc.rollback()
                    wc.autocommit = True
                except psycopg.Error:
                    pass
            if drop_worker_tables(fleet, tuple(created)):
                operation_end(conn, op, "failed")
            raise
        finally:
            if lock is not None:
                lock.close()
        operation_end(conn, op, "done")
    return source_sum[0]
