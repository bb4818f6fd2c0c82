"""A dead worker during distribute: nothing half-applied, nothing lost, and the run can be repeated."""

from __future__ import annotations

import pytest
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.errors import NodeError, PgfleetError, SpecError
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

CHECK = "SELECT count(*), sum(hashtext(t::text)::numeric) FROM t"


def _worker_tables(fleet: Fleet, node: str, schema: str) -> list[str]:
    topo = fleet.topology()
    n = topo.node(node)
    assert n is not None
    with fleet.worker_conn(n) as w:
        return [str(r[0]) for r in w.execute(
            "SELECT relname FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace "
            "WHERE s.nspname = %s AND c.relkind = 'r' ORDER BY 1", (schema,)).fetchall()]


def _make(fleet: Fleet) -> tuple[object, ...]:
    conn = fleet.conn()
    conn.execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
    conn.execute("INSERT INTO t SELECT g, repeat('x', g % 50) FROM generate_series(1, 120000) g")
    row = conn.execute(CHECK).fetchone()
    assert row is not None
    return row


def test_worker_down_before_distribute(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    before = _make(fleet)
    cluster.server("w2").stop(mode="immediate")
    try:
        with pytest.raises(NodeError, match="node w2: cannot connect"):
            fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    finally:
        cluster.server("w2").start()
    conn = fleet.conn()
    assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 't'::regclass").fetchone() == ("r",)
    assert conn.execute(CHECK).fetchone() == before
    assert _worker_tables(fleet, "w1", schema) == [] and _worker_tables(fleet, "w2", schema) == []
    assert all(t.name.schema != schema for t in fleet.topology().tables)


def test_worker_dies_during_the_move(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    before = _make(fleet)
    killed = []

    def kill_w2(phase: str, done: int, total: int) -> None:
        if phase == "copy" and done > 0 and not killed:
            cluster.server("w2").stop(mode="immediate")
            killed.append(done)

    try:
        with pytest.raises(PgfleetError):
            fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)), kill_w2)
        assert killed, "the move finished before the worker could be killed"
        conn = fleet.conn()
        # The original is untouched, readable and writable
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 't'::regclass").fetchone() == ("r",)
        assert conn.execute(CHECK).fetchone() == before
        assert _worker_tables(fleet, "w1", schema) == []
        assert conn.execute("SELECT count(*) FROM pgfleet.operations WHERE state = 'running' AND table_name = %s",
                            (f"{schema}.t",)).fetchone() == (1,)
        assert any(schema in op for op in fleet.status().unfinished)
    finally:
        cluster.server("w2").start()
    # Running it again cleans up what the dead worker kept and distributes
    moved = fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    assert moved == 120000
    assert fleet.conn().execute(CHECK).fetchone() == before
    assert len(_worker_tables(fleet, "w2", schema)) == 2


def test_unknown_table_and_column(fleet: Fleet, schema: str) -> None:
    with pytest.raises(SpecError, match=r"table .*nope does not exist on the coordinator"):
        fleet.distribute(DistributeSpec(QualifiedName(schema, "nope"), "id", HashSpec(4)))
    fleet.conn().execute("CREATE TABLE t (id bigint)")
    with pytest.raises(SpecError, match=r"column 'idd' does not exist in .*choose one of: id"):
        fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "idd", HashSpec(4)))


def test_unique_constraint_without_the_key(fleet: Fleet, schema: str) -> None:
    fleet.conn().execute("CREATE TABLE t (id bigint PRIMARY KEY, email text UNIQUE)")
    with pytest.raises(SpecError, match=r"unique constraint t_email_key \(email\) .* does not include the distribution key id"):
        fleet.distribute(DistributeSpec(QualifiedName(schema, "t"), "id", HashSpec(4)))
    assert fleet.conn().execute("SELECT relkind FROM pg_class WHERE oid = 't'::regclass").fetchone() == ("r",)


def test_reference_copy_name_taken_leaves_foreign_table_alone(fleet: Fleet, cluster: LocalCluster, schema: str) -> None:
    """A worker already holding a table of that name: clear error, and that table is not touched."""
    topo = fleet.topology()
    w2 = topo.node("w2")
    assert w2 is not None
    with fleet.worker_conn(w2) as w:
        w.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        w.execute(sql.SQL("CREATE TABLE {} (x int)").format(sql.Identifier(schema, "ref")))
        w.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(sql.Identifier(schema, "ref")))
    fleet.conn().execute("CREATE TABLE ref (id int PRIMARY KEY)")
    with pytest.raises(PgfleetError, match=r'node w2: creating the copy of .*ref failed: relation "ref" already exists'):
        fleet.reference(ReferenceSpec(QualifiedName(schema, "ref")))
    with fleet.worker_conn(w2) as w:
        assert w.execute(sql.SQL("SELECT x FROM {}").format(sql.Identifier(schema, "ref"))).fetchall() == [(1,)]
        w.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
    assert _worker_tables(fleet, "w1", schema) == []
