"""Undoing a distribution: rows back into a plain coordinator table (resharding is reshard.py).

All or nothing, in one coordinator transaction that holds the table against writes:
1. a plain staging table LIKE the distributed parent (defaults, identity, generated columns, CHECKs);
2. each shard's rows stream from its worker (COPY, own connection) into the staging table, with progress;
3. count and checksum of the staging table against those of the shards (both under canonical settings);
4. the primary key, unique constraints and indexes of the first shard, with the shard suffix removed;
5. pgfleet.swap_tables() (names, sequences, identity positions, owner, grants), catalog rows removed, and
   the shard tables' drops queued: flush_queue() drops them on the workers at COMMIT, two-phase.
A failure before COMMIT rolls everything back; the shards are untouched. Small tables can also be
undistributed from SQL (pgfleet.undistribute_table in sql/migrations.sql, the same steps).
"""

from __future__ import annotations

import logging
from contextlib import suppress

import psycopg
from psycopg import sql

from ..errors import ExecuteError, SpecError
from ..execute.connect import Conn, describe_error
from ..plan import tables
from ..spec import QualifiedName
from ..topology.model import DistTable
from ..topology.read import resolve_table, table_def
from .distribute import Progress, no_progress, set_canonical, set_internal, table_lock
from .fleet import Fleet
from .foreign_keys import check_not_referenced
from .reshard_copy import SHARD_KEYS, SUMS

log = logging.getLogger(__name__)


def _distributed(fleet: Fleet, name: QualifiedName) -> DistTable:
    dist = fleet.topology().table(resolve_table(fleet.conn(), name))
    if dist is None:
        raise SpecError(f"{name} is neither distributed nor a reference table", hint="nothing to undo")
    return dist


def undistribute(fleet: Fleet, name: QualifiedName, progress: Progress | None = None) -> int:
    """Make a distributed or reference table a plain coordinator table again; return the rows moved."""
    with table_lock(fleet, name):
        dist = _distributed(fleet, name)
        if dist.method == "reference":  # the coordinator already holds every row: drop the copies
            conn = fleet.conn()
            with conn.transaction():
                row = conn.execute("SELECT pgfleet.undistribute_table(%s)", (dist.oid,)).fetchone()
            return int(str(row[0])) if row else 0
        return _undistribute(fleet, dist, progress or no_progress)


def _undistribute(fleet: Fleet, dist: DistTable, say: Progress) -> int:
    check_not_referenced(fleet.conn(), dist.oid)
    lock = fleet.new_coordinator_conn()
    try:
        lock.autocommit = False
        set_internal(lock)
        set_canonical(lock)
        lock.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(tables.ident(dist.name)))
        table = table_def(lock, dist.oid)
        staging = QualifiedName(table.name.schema or "public", f"pgfleet_staging_{dist.oid}")
        lock.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING GENERATED "
                             "INCLUDING CONSTRAINTS)").format(tables.ident(staging), tables.ident(table.name)))
        cols = tables.column_list(table.columns, writable_only=True)
        expected = _copy_shards(fleet, lock, dist, staging, cols, say)
        say("verify", 0, 1)
        row = lock.execute(sql.SQL(SUMS).format(cols=cols, src=tables.ident(staging))).fetchone()
        got = (int(str(row[0])), int(str(row[1]))) if row else (0, 0)
        if got != expected:
            raise ExecuteError(f"verification of {table.name} failed: the shards have {expected[0]} rows, the copy "
                               f"{got[0]}{'' if got[0] != expected[0] else ' with a different checksum'}",
                               hint="nothing was changed; run the command again")
        say("verify", 1, 1)
        say("swap", 0, 1)
        lock.execute("SELECT pgfleet.drop_parent_indexes(%s)", (dist.oid,))  # their names go to the plain table
        _restore_keys(fleet, lock, dist, staging)
        for shard in dist.shards:
            lock.execute("SELECT pgfleet.queue_statement(%s, pgfleet.drop_shard_sql(%s, %s, %s))",
                         (shard.node, shard.shard_schema, shard.shard_table, shard.shard_id))
        lock.execute("SELECT pgfleet.restore_foreign_keys(%s, %s::regclass)",
                     (dist.oid, tables.ident(staging).as_string(lock)))
        lock.execute("DELETE FROM pgfleet.tables WHERE relid = %s", (dist.oid,))
        lock.execute("SELECT pgfleet.swap_tables(%s, %s::regclass)", (dist.oid, tables.ident(staging).as_string(lock)))
        lock.commit()  # flush_queue() drops the shards on the workers, two-phase, or nothing commits
        say("swap", 1, 1)
        return got[0]
    except psycopg.Error as exc:
        with suppress(psycopg.Error):
            lock.rollback()
        raise ExecuteError(f"undistributing {dist.name} failed: {describe_error(exc)}",
                           hint="nothing was changed; run the command again") from None
    finally:
        lock.close()


def _copy_shards(fleet: Fleet, lock: Conn, dist: DistTable, staging: QualifiedName, cols: sql.Composable,
                 say: Progress) -> tuple[int, int]:
    """Stream every shard's rows into ``staging``; return the shards' total count and checksum."""
    nodes = sorted({s.node for s in dist.shards})
    count, checksum, done = 0, 0, 0
    with fleet.worker_conns(nodes, canonical=True) as conns:
        sums = {}
        for shard in dist.shards:
            row = conns[shard.node].execute(sql.SQL(SUMS).format(cols=cols, src=tables.ident(shard.shard_name))).fetchone()
            sums[shard.shard_id] = (int(str(row[0])), int(str(row[1]))) if row else (0, 0)
        count = sum(c for c, _ in sums.values())
        checksum = sum(s for _, s in sums.values())
        say("copy", 0, count)
        for shard in sorted(dist.shards, key=lambda s: s.index):
            with conns[shard.node].cursor().copy(sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT").format(
                    cols, tables.ident(shard.shard_name))) as src, \
                 lock.cursor().copy(sql.SQL("COPY {} ({}) FROM STDIN").format(tables.ident(staging), cols)) as dst:
                for chunk in src:
                    dst.write(chunk)
            done += sums[shard.shard_id][0]
            say("copy", done, count)
    return count, checksum


def _restore_keys(fleet: Fleet, lock: Conn, dist: DistTable, staging: QualifiedName) -> None:
    """The first shard's primary key, unique constraints and indexes, named as before distribution."""
    first = min(dist.shards, key=lambda s: s.index)
    node = fleet.topology().node(first.node)
    assert node is not None
    suffix = f"_{first.shard_id}"
    with fleet.worker_conn(node) as w:
        rows = w.execute(SHARD_KEYS, {"t": tables.ident(first.shard_name).as_string(w)}).fetchall()
    for name, condef, tail, unique in rows:
        original = str(name)[: -len(suffix)] if str(name).endswith(suffix) else str(name)
        if condef is not None:
            lock.execute(sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                tables.ident(staging), sql.Identifier(original), sql.SQL(str(condef))))
        else:
            lock.execute(sql.SQL("CREATE {}INDEX {} ON {} {}").format(
                sql.SQL("UNIQUE " if unique else ""), sql.Identifier(original), tables.ident(staging),
                sql.SQL(str(tail).strip())))

