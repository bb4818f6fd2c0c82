"""Changing the shard count of a hash-distributed table, with every table co-located with it, in one step.

Order of work, chosen so that the table is always served by one complete layout:
1. the co-location group (the table and every table co-located with it) is read, each table's pgfleet
   operation lock taken, and what an earlier reshard left on the workers removed;
2. a pgfleet.operations row per table lists its new shards (so that an interrupted run is cleaned up by
   the next one and reported by ``pgfleet status``);
3. writes stop, reads go on: the coordinator's tables ``IN EXCLUSIVE MODE`` (writes through the
   coordinator) and, on each worker, the old shards ``IN EXCLUSIVE MODE`` (writes the router sends
   straight to the workers), each held by a transaction open until the end;
4. the new shards are created on the workers (round-robin over every current worker, as distribute
   places them), their rows copied worker to worker from the old shards (reshard_copy.py), count and
   checksum compared per table, foreign keys added, statistics gathered;
5. one coordinator transaction switches the catalog rows and the foreign partitions of every table of
   the group to the new shards and records the old ones as the operation's leftovers; COMMIT;
6. each worker's lock-holding transaction drops its old shards and commits: a routed write that waited
   for them fails rather than landing in a dropped shard.
A failure before 5 commits drops the new shards: the old layout serves as before. A failure in 6 leaves
old shards that nothing uses; the operation stays unfinished (``pgfleet status``) and the next reshard of
the group drops them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..errors import ExecuteError, PgfleetError, SpecError, TopologyError
from ..execute.connect import Conn, describe_error
from ..plan import layout, tables
from ..spec import DistributeSpec, HashSpec, QualifiedName
from ..topology.model import DistTable, Shard, TableDef
from ..topology.read import hash_function, resolve_table, table_def
from . import reshard_copy as rc
from .distribute import (Progress, alloc_shard_ids, create_on_workers, no_progress, operation_end, operation_start,
                         set_canonical, set_internal, shards_by_node, table_lock, worker_type_statements)
from .fleet import Fleet, ReshardResult
from .privileges import apply_privileges
from .statistics import analyze_shards

log = logging.getLogger(__name__)

LOCK_TIMEOUT = "5s"  # per attempt at the old shards' locks: a routed transaction may hold one while it waits
LOCK_ATTEMPTS = 6  # for another we hold (a deadlock across workers that no server sees)
KIND, CLEANUP_KIND = "reshard", "reshard: old shards to drop"


@dataclass(frozen=True)
class Member:
    """One table of the group being resharded."""

    dist: DistTable
    parent: TableDef  # the coordinator's partitioned table
    key: str
    hash_function: str
    new: tuple[Shard, ...]

    @property
    def old(self) -> tuple[Shard, ...]:
        return self.dist.shards


def reshard(fleet: Fleet, name: QualifiedName, shard_count: int, progress: Progress | None = None) -> ReshardResult:
    """Give hash table ``name`` and every table co-located with it ``shard_count`` shards spread over every
    current worker; all or nothing up to the switch (see the module's docstring)."""
    HashSpec(shard_count)  # the same range check as distribute
    conn = fleet.conn()
    dist = fleet.topology().table(resolve_table(conn, name))
    if dist is None:
        raise SpecError(f"{name} is not distributed", hint=f"distribute it: pgfleet distribute {name} --key COLUMN")
    if dist.method != "hash" or dist.key is None:
        raise SpecError(f"{dist.name} is a {dist.method} table; reshard changes the shard count of hash tables",
                        hint=f"undistribute it (pgfleet undistribute {dist.name}) and distribute it again")
    with ExitStack() as stack:
        for t in sorted(_group(fleet.topology().tables, dist), key=lambda t: t.oid):
            stack.enter_context(table_lock(fleet, t.name))
        cleaned = clean_leftovers(fleet, [t.oid for t in _group(fleet.topology().tables, dist)])
        topo = fleet.topology()  # as it is now that no other pgfleet operation can change these tables
        current = topo.table(dist.oid)
        assert current is not None
        group = _group(topo.tables, current)
        workers = [w.name for w in topo.workers]
        placed = [s.node for s in sorted(current.shards, key=lambda s: s.index)]
        if len(current.shards) == shard_count and placed == layout.round_robin(shard_count, workers):
            if cleaned:
                return ReshardResult(tuple(t.name for t in group), shard_count, 0, cleaned=cleaned, changed=False)
            raise SpecError(f"{current.name} already has {shard_count} shards, spread over every worker",
                            hint="choose another shard count")
        members = [_member(fleet, t, shard_count, workers) for t in group]
        result = _reshard(fleet, members, progress or no_progress)
        return ReshardResult(result.tables, result.shard_count, result.rows, result.leftovers, cleaned)


def _group(all_tables: Iterable[DistTable], dist: DistTable) -> list[DistTable]:
    """``dist`` first, then the tables co-located with it, by name."""
    others = [t for t in all_tables if t.oid != dist.oid and t.colocation_id is not None
              and t.colocation_id == dist.colocation_id]
    return [dist, *sorted(others, key=lambda t: str(t.name))]


def _member(fleet: Fleet, dist: DistTable, count: int, workers: Sequence[str]) -> Member:
    conn = fleet.conn()
    parent = table_def(conn, dist.oid)
    assert dist.key is not None
    key = parent.column(dist.key)
    if key is None:
        raise TopologyError(f"the distribution key {dist.key} of {dist.name} is missing on the coordinator")
    ids = alloc_shard_ids(conn, count)
    new = layout.layout_shards(parent, DistributeSpec(parent.name, key.name, HashSpec(count)), workers, ids)
    return Member(dist, parent, key.name, hash_function(conn, key.type), new)


@dataclass(frozen=True)
class _Done:
    tables: tuple[QualifiedName, ...]
    shard_count: int
    rows: int
    leftovers: tuple[str, ...]


def _reshard(fleet: Fleet, members: list[Member], say: Progress) -> _Done:
    conn = fleet.conn()
    names = tuple(m.dist.name for m in members)
    what = names[0] if len(names) == 1 else f"{names[0]} and its co-located tables"
    ops = {m.dist.oid: operation_start(conn, KIND, m.parent, m.new, None) for m in members}
    new_all = tuple(s for m in members for s in m.new)
    created: list[Shard] = []
    lock: Conn | None = None
    sources: dict[str, Conn] = {}
    switched = unknown = False
    try:
        lock = _lock_coordinator(fleet, [m.dist.name for m in members])
        with fleet.worker_conns(sorted({s.node for s in new_all}), canonical=True) as targets:
            sources = _lock_old_shards(fleet, [s for m in members for s in m.old])
            with _failing(f"creating the new shards of {what}"):
                say("shards", 0, len(new_all))
                types = list(dict.fromkeys(t for m in members for t in worker_type_statements(conn, m.dist.oid)))
                keys = {m.dist.oid: rc.shard_keys(sources[_first(m.old).node], _first(m.old)) for m in members}
                by_id = {s.shard_id: m for m in members for s in m.new}
                create_on_workers(targets, shards_by_node(new_all), lambda sh: rc.new_shard_ddl(
                    by_id[sh.shard_id].parent, by_id[sh.shard_id].key, by_id[sh.shard_id].hash_function,
                    keys[by_id[sh.shard_id].dist.oid], sh), f"the new shards of {what}", created, types)
                for m in members:
                    apply_privileges(conn, targets, m.new, m.dist.oid)
                say("shards", len(new_all), len(new_all))
            rows = _copy_and_verify(members, sources, targets, say)
            with _failing(f"adding the foreign keys of the new shards of {what}"):
                _add_foreign_keys(fleet, members, targets)
                analyze_shards(targets, new_all)
            say("swap", 0, 1)
            with _failing(f"switching {what} to the new shards"):
                _switch(lock, members, ops, {n.name: n.server_name for n in fleet.topology().nodes})
                try:
                    lock.commit()
                except psycopg.Error:
                    state = _committed(fleet, new_all)
                    if state is None:
                        unknown = True
                        raise
                    if not state:
                        raise
                switched = True
    except BaseException as exc:
        if switched:  # only the old shards' drops below can still fail
            raise
        if unknown:  # the operations rows say which shards are left over: the next run drops those
            _close_all(sources)
            raise ExecuteError(f"resharding {what}: the coordinator did not confirm the switch to the new shards",
                               hint="run the command again: it finds out which shards are in use and drops the "
                                    "others") from None
        _abandon(fleet, lock, sources, tuple(created), ops)
        if isinstance(exc, PgfleetError):
            raise ExecuteError(f"resharding {what} failed: {exc.message}", node=exc.node,
                               hint="nothing was changed: the old shards serve as before; run the command again") from None
        if isinstance(exc, psycopg.Error):
            raise ExecuteError(f"resharding {what} failed: {describe_error(exc)}",
                               hint="nothing was changed: the old shards serve as before; run the command again") from None
        raise
    finally:
        if lock is not None:
            lock.close()
    leftovers = _drop_old(sources, members)
    for m in members:
        if not any(s.shard_id in {o.shard_id for o in m.old} for s in leftovers):
            operation_end(conn, ops[m.dist.oid], "done")
    say("swap", 1, 1)
    _analyze_parents(conn, members)
    return _Done(names, len(members[0].new), rows, tuple(f"{s.node}:{s.shard_name}" for s in leftovers))


def _first(shards: Sequence[Shard]) -> Shard:
    return min(shards, key=lambda s: s.index)


@contextmanager
def _failing(what: str) -> Iterator[None]:
    """psycopg errors of a step as one ExecuteError naming the step (the caller adds what is left)."""
    try:
        yield
    except psycopg.Error as exc:
        raise ExecuteError(f"{what}: {describe_error(exc)}") from None


def _lock_coordinator(fleet: Fleet, names: Sequence[QualifiedName]) -> Conn:
    """A coordinator transaction holding every table of the group against writes (reads go on)."""
    lock = fleet.new_coordinator_conn()
    try:
        lock.autocommit = False
        set_internal(lock)
        set_canonical(lock)
        with _failing("locking the tables against writes on the coordinator"):
            lock.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                sql.SQL(", ").join(tables.ident(n) for n in names)))
    except BaseException:
        lock.close()
        raise
    return lock


def _lock_old_shards(fleet: Fleet, shards: Sequence[Shard]) -> dict[str, Conn]:
    """Per worker, a transaction (canonical settings) holding its old shards IN EXCLUSIVE MODE: routed
    writes wait, routed reads go on. All workers or none: a lock not granted within LOCK_TIMEOUT releases
    every one and tries again, so a routed transaction spanning two workers is never waited for forever."""
    by_node = shards_by_node(tuple(shards))
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        conns: dict[str, Conn] = {}
        try:
            topo = fleet.topology()
            for node, node_shards in sorted(by_node.items()):
                found = topo.node(node)
                if found is None:
                    raise TopologyError(f"node {node} of the old shards is not in the catalog")
                conn = conns[node] = fleet.worker_conn(found, autocommit=False, canonical=True)
                conn.execute("SELECT set_config('lock_timeout', %s, true)", (LOCK_TIMEOUT,))
                conn.execute(sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.SQL(", ").join(tables.ident(s.shard_name) for s in node_shards)))
                conn.execute("SELECT set_config('lock_timeout', '0', true)")
            return conns
        except psycopg.errors.LockNotAvailable:
            _close_all(conns)
            log.info("the old shards are busy with writes (attempt %d of %d)", attempt, LOCK_ATTEMPTS)
            time.sleep(0.2 * attempt)
        except psycopg.Error as exc:
            _close_all(conns)
            raise ExecuteError(f"locking the old shards against writes failed: {describe_error(exc)}") from None
        except BaseException:
            _close_all(conns)
            raise
    raise ExecuteError(f"the old shards stayed busy with writes for {LOCK_ATTEMPTS} attempts of {LOCK_TIMEOUT}",
                       hint="run the command again when fewer long transactions write to the table")


def _close_all(conns: dict[str, Conn]) -> None:
    for c in conns.values():
        with suppress(psycopg.Error):
            c.close()


def _copy_and_verify(members: Sequence[Member], sources: dict[str, Conn], targets: dict[str, Conn],
                     say: Progress) -> int:
    """Every old shard's rows into the new shards, then count and checksum per table; the rows copied."""
    expected: dict[int, tuple[int, int]] = {}
    with _failing("reading the old shards"):
        for m in members:
            expected[m.dist.oid] = rc.sums(sources, m.old, tables.column_list(m.parent.columns))
    total = sum(c for c, _ in expected.values())
    done = 0
    say("copy", 0, total)
    for m in members:
        cols = tables.column_list(m.parent.columns, writable_only=True)
        for old, new in rc.pairs(m.old, m.new):
            with _failing(f"copying rows of {m.dist.name} from {old.node}:{old.shard_table} to "
                          f"{new.node}:{new.shard_table}"):
                done += rc.copy_pair(sources[old.node], targets[new.node], old, new, cols,
                                     rc.new_rule_filter(m.key, m.hash_function, new))
            say("copy", done, total)
    say("verify", 0, len(members))
    for checked, m in enumerate(members, 1):
        with _failing(f"verifying the new shards of {m.dist.name}"):
            got = rc.sums(targets, m.new, tables.column_list(m.parent.columns))
        want = expected[m.dist.oid]
        if got != want:
            raise ExecuteError(f"verification of {m.dist.name} failed: the old shards have {want[0]} rows, the new "
                               f"{got[0]}{'' if got[0] != want[0] else ' with a different checksum'}")
        say("verify", checked, len(members))
    return done


def _add_foreign_keys(fleet: Fleet, members: Sequence[Member], targets: dict[str, Conn]) -> None:
    """The group's foreign keys on the new shards: to a reference copy on the same worker, or to the new shard
    of the same index of a table of the group (co-located keys reference only tables of their group)."""
    conn = fleet.conn()
    topo = fleet.topology()
    new_by_table = {m.dist.oid: {s.index: s for s in m.new} for m in members}
    for m in members:
        for fk in rc.foreign_keys(conn, m.dist.oid):
            ref = topo.table(fk.ref_relid)
            for shard in m.new:
                if fk.ref_relid in new_by_table:
                    target = new_by_table[fk.ref_relid][shard.index]
                elif ref is not None and ref.method == "reference":
                    target = next(s for s in ref.shards if s.node == shard.node)
                else:
                    raise TopologyError(f"foreign key {fk.name} of {m.dist.name} references a table outside its "
                                        "co-location group")
                targets[shard.node].execute(rc.foreign_key_ddl(fk, shard, target))


def _switch(lock: Conn, members: Sequence[Member], ops: dict[int, int], servers: dict[str, str]) -> None:
    """In the coordinator's lock-holding transaction: foreign partitions and catalog rows to the new shards,
    the group's shard count, and the old shards as each operation's leftovers."""
    colocated = len(members) > 1
    for m in members:
        for old in m.old:
            lock.execute(sql.SQL("DROP FOREIGN TABLE IF EXISTS {}").format(tables.ident(old.foreign_name)))
        for new in m.new:
            lock.execute(tables.foreign_partition_ddl(m.dist.name, new, servers[new.node], remote_estimate=colocated))
        lock.execute("DELETE FROM pgfleet.shards WHERE relid = %s", (m.dist.oid,))
        for insert in tables.catalog_rows(sql.Literal(m.dist.oid), m.dist.name, "hash", m.key,
                                          m.dist.colocation_id, m.new).shard_inserts:
            lock.execute(insert)
        lock.execute("SELECT pgfleet.align_owners(%s)", (m.dist.oid,))
        lock.execute("UPDATE pgfleet.operations SET kind = %s, detail = %s WHERE id = %s",
                     (CLEANUP_KIND, json.dumps(_detail(m.old)), ops[m.dist.oid]))
    lock.execute("UPDATE pgfleet.colocation_groups SET shard_count = %s WHERE id = %s",
                 (len(members[0].new), members[0].dist.colocation_id))


def _detail(shards: Iterable[Shard]) -> dict[str, object]:
    return {"staging": None, "shards": [{"node": s.node, "schema": s.shard_schema, "table": s.shard_table,
                                         "id": s.shard_id} for s in shards]}


def _committed(fleet: Fleet, new: Sequence[Shard]) -> bool | None:
    """Whether a switch whose COMMIT reported an error did commit (its connection may have died after it);
    None when the coordinator cannot tell now."""
    try:
        with fleet.new_coordinator_conn() as conn:
            row = conn.execute("SELECT count(*) FROM pgfleet.shards WHERE shard_id = ANY(%s)",
                               ([s.shard_id for s in new],)).fetchone()
    except (PgfleetError, psycopg.Error):
        return None
    return row is not None and int(str(row[0])) == len(new)


def _abandon(fleet: Fleet, lock: Conn | None, sources: dict[str, Conn], created: tuple[Shard, ...],
             ops: dict[int, int]) -> None:
    """Before the switch: release the locks and drop the new shards. Operations whose shards could not all
    be dropped stay 'running' for the next run (and ``pgfleet status``)."""
    if lock is not None:
        with suppress(psycopg.Error):
            lock.rollback()
    _close_all(sources)
    if not drop_shards(fleet, created)[0]:
        for op in ops.values():
            operation_end(fleet.conn(), op, "failed")


def _drop_old(sources: dict[str, Conn], members: Sequence[Member]) -> list[Shard]:
    """After the switch, in each worker's lock-holding transaction: drop its old shards; those left."""
    left: list[Shard] = []
    for node, shards in shards_by_node(tuple(s for m in members for s in m.old)).items():
        conn = sources[node]
        try:
            drop_marked(conn, shards)
            conn.commit()
        except psycopg.Error as exc:
            log.warning("could not drop the old shards on %s: %s", node, describe_error(exc))
            left.extend(shards)
        finally:
            conn.close()
    return left


def drop_marked(conn: Conn, shards: Sequence[Shard]) -> int:
    """Drop ``shards`` (all on ``conn``'s worker) in one statement, so foreign keys among them do not stand in
    the way; only tables that carry their shard's marker (never one pgfleet did not create). How many."""
    names = [tables.ident(s.shard_name).as_string(conn) for s in shards]
    rows = conn.execute("SELECT n, obj_description(to_regclass(n), 'pg_class') FROM unnest(%s::text[]) n",
                        (names,)).fetchall()
    marker = {n: tables.shard_marker(s.shard_id) for n, s in zip(names, shards, strict=True)}
    mine = [s for s, (n, found) in zip(shards, rows, strict=True) if found == marker[str(n)]]
    if mine:
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.SQL(", ").join(tables.ident(s.shard_name) for s in mine)))
    return len(mine)


def drop_shards(fleet: Fleet, shards: Sequence[Shard]) -> tuple[list[Shard], int]:
    """Drop ``shards`` on their workers, a transaction per worker; those that could not be dropped, and how
    many were."""
    topo = fleet.topology()
    left: list[Shard] = []
    dropped = 0
    for node_name, node_shards in shards_by_node(tuple(shards)).items():
        node = topo.node(node_name)
        if node is None:
            continue
        try:
            with fleet.worker_conn(node) as w, w.transaction():
                dropped += drop_marked(w, node_shards)
        except (PgfleetError, psycopg.Error) as exc:
            log.warning("could not drop shards on %s: %s", node_name, exc)
            left.extend(node_shards)
    return left, dropped


def clean_leftovers(fleet: Fleet, oids: Sequence[int]) -> int:
    """Drop the shards that unfinished reshards of these tables left (new ones of a failed run, old ones of a
    run whose drops failed); return how many were dropped. A worker that cannot be reached stops the run."""
    conn = fleet.conn()
    rows = conn.execute("SELECT id, detail FROM pgfleet.operations WHERE relid = ANY(%s) AND state = 'running' "
                        "AND kind IN (%s, %s) ORDER BY id", (list(oids), KIND, CLEANUP_KIND)).fetchall()
    shards = []
    for _op, detail in rows:
        info = detail if isinstance(detail, dict) else json.loads(str(detail))
        shards += [Shard(shard_id=int(s["id"]), table_oid=0, index=0, node=s["node"], shard_schema=s["schema"],
                         shard_table=s["table"], foreign_schema="", foreign_table="") for s in info.get("shards", [])]
    left, dropped = drop_shards(fleet, shards)
    if left:
        raise TopologyError(f"an unfinished reshard left shard {left[0].shard_name} on node {left[0].node}, which "
                            "cannot be dropped now", hint=f"start node {left[0].node} and run the command again")
    for op_id, _detail in rows:
        operation_end(conn, int(str(op_id)), "cleaned")
    return dropped


def _analyze_parents(conn: Conn, members: Sequence[Member]) -> None:
    """The coordinator's statistics of the new foreign partitions (best effort: the data did not change)."""
    for m in members:
        try:
            conn.execute(sql.SQL("ANALYZE {}").format(tables.ident(m.dist.name)))
        except psycopg.Error as exc:
            log.warning("could not analyze %s: %s", m.dist.name, describe_error(exc))
