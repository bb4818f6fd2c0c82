"""Routes computed from the real catalog are right: the rewritten statement, run on the node the route
names, returns what the coordinator returns for the original statement (and writes land where the
coordinator then finds them)."""

from __future__ import annotations

from typing import Any

import pytest
import test_fastpath

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.execute.connect import connect
from pgfleet.router.analyze import Coordinator, Shard, Split, analyze
from pgfleet.router.topology import load_routing_topology

pytestmark = pytest.mark.cluster

data = test_fastpath.data  # the tables of the fast-path tests: t, items, grps (reference), r (range), sites (list)


def on_node(cluster: LocalCluster, node: str, sql: str) -> list[tuple[Any, ...]]:
    with connect(cluster.endpoint(node)) as conn:
        return conn.execute(sql.encode()).fetchall()


STATEMENTS = [
    "SELECT * FROM t WHERE id = {k}",
    "SELECT t.val, i.n, i.qty, g.label FROM t JOIN items i ON i.t_id = t.id JOIN grps g ON g.grp = t.grp "
    "WHERE t.id = {k} ORDER BY i.n",
    "SELECT count(*), sum(qty) FROM items WHERE t_id IN ({k}, {k})",
    "SELECT v FROM r WHERE id = {k}",
]


@pytest.mark.parametrize("statement", STATEMENTS)
def test_routed_reads_match_the_coordinator(fleet: Fleet, cluster: LocalCluster, data: str, statement: str) -> None:
    topology = load_routing_topology(fleet.conn())
    nodes = set()
    for k in (1, 2, 3, 77, 123, 499, 500, 999, 1000, 2500):
        sql = statement.format(k=k)
        route = analyze(sql, topology, search_path=(data, "public"))
        assert isinstance(route, Shard), route
        assert on_node(cluster, route.node, route.sql) == fleet.conn().execute(sql.encode()).fetchall()
        nodes.add(route.node)
    assert nodes == {"w1", "w2"}


def test_list_and_search_path(fleet: Fleet, cluster: LocalCluster, data: str) -> None:
    topology = load_routing_topology(fleet.conn())
    for city, node in (("paris", "w1"), ("lagos", "w2"), ("rome", "w1")):
        sql = f"SELECT id, v FROM sites WHERE city = '{city}' ORDER BY id"
        route = analyze(sql, topology, search_path=(data, "public"))
        assert isinstance(route, Shard) and route.node == node
        assert on_node(cluster, node, route.sql) == fleet.conn().execute(sql.encode()).fetchall()
    # without the schema on the path the name does not resolve to the distributed table
    assert isinstance(analyze("SELECT * FROM t WHERE id = 1", topology, search_path=("public",)), Coordinator)


def test_split_insert_lands_where_the_coordinator_reads(fleet: Fleet, cluster: LocalCluster, data: str) -> None:
    topology = load_routing_topology(fleet.conn())
    keys = list(range(10001, 10013))
    sql = "INSERT INTO t (id, grp, val) VALUES " + ", ".join(f"({k}, 1, {k % 5})" for k in keys)
    route = analyze(sql, topology, search_path=(data, "public"))
    assert isinstance(route, Split) and len(route.parts) > 1
    for shard, rows in route.parts:
        with connect(cluster.endpoint(shard.node)) as conn:
            assert conn.execute(shard.sql.encode()).rowcount == len(rows)
    got = fleet.conn().execute("SELECT id, val FROM t WHERE id > 10000 ORDER BY id").fetchall()
    assert got == [(k, k % 5) for k in keys]
