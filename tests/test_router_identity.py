"""Columns the shards cannot fill: an identity or a serial that is not the distribution key. The shards have no
sequences (the coordinator computes every value), so a routed INSERT that left such a column to its default
would store NULL, and a value for a GENERATED ALWAYS identity would be taken where one server refuses it. The
router sends such statements to the coordinator (router/identity.py); compared with one plain table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conftest import connect
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.analyze import Coordinator, Shard, analyze
from pgfleet.router.server import RouterServer
from pgfleet.router.snapshot import RoutedTable, RoutingTopology
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from pgfleet.topology.model import Shard as CatalogShard
from test_router_keyfill import outcome
from test_router_txn import routing_router

DEFINITION = "(id bigint PRIMARY KEY, n bigint GENERATED ALWAYS AS IDENTITY, s serial, note text)"

STATEMENTS = [
    "INSERT INTO {t} (id, note) VALUES (1, 'a') RETURNING id, n, s, note",
    "INSERT INTO {t} (id, n, note) VALUES (2, 50, 'b')",  # 428C9
    "INSERT INTO {t} (id, n, s, note) OVERRIDING SYSTEM VALUE VALUES (3, 50, 60, 'c') RETURNING n, s",
    "INSERT INTO {t} (id, n, s, note) OVERRIDING SYSTEM VALUE VALUES (4, 51, DEFAULT, 'd') RETURNING n, s",
    "INSERT INTO {t} VALUES (5, DEFAULT, DEFAULT, 'e') RETURNING *",
    "INSERT INTO {t} (id, n, s, note) OVERRIDING SYSTEM VALUE VALUES (6, 52, 61, 'f'), (7, 53, 62, 'g')",
    "UPDATE {t} SET n = 9 WHERE id = 1",  # 428C9
    "UPDATE {t} SET n = DEFAULT WHERE id = 1 RETURNING n",
    "UPDATE {t} SET s = DEFAULT WHERE id = 3 RETURNING s",
    "UPDATE {t} SET note = 'changed', s = 70 WHERE id = 6 RETURNING n, s, note",
    "SELECT * FROM {t} ORDER BY id",
]


@pytest.fixture
def router(cluster: LocalCluster, fleet: Fleet, schema: str) -> Iterator[RouterServer]:
    conn = fleet.conn()
    conn.execute(f"CREATE TABLE ledger {DEFINITION}")
    conn.execute(f"CREATE TABLE plain_ledger {DEFINITION}")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "ledger"), "id", HashSpec(4)))
    with routing_router(cluster) as server:
        yield server


def test_the_same_values_and_errors_as_one_plain_table(cluster: LocalCluster, router: RouterServer,
                                                       schema: str) -> None:
    routed = router.context.stats.routed
    with connect(cluster, router.config.port, schema) as conn:
        for statement in STATEMENTS:
            assert outcome(conn, statement.format(t="ledger")) == outcome(conn, statement.format(t="plain_ledger")), \
                statement
    assert router.context.stats.routed > routed  # what gives every value went to its shard


# --- pure ---------------------------------------------------------------------------------------------------------
SHARDS = tuple(CatalogShard(shard_id=102000 + i, table_oid=7, index=i, node=f"w{i + 1}", shard_schema="pgfleet_shards",
                            shard_table=f"ledger_{102000 + i}", foreign_schema="s", foreign_table=f"ledger_{i}",
                            modulus=2, remainder=i) for i in range(2))
TOPOLOGY = RoutingTopology(tables=(RoutedTable(
    oid=7, name=QualifiedName("public", "ledger"), method="hash", key="id", colocation_id=1, shards=SHARDS,
    columns=("id", "n", "s", "note"), key_type="bigint", always=("n",), drawn=("n", "s")),))


@pytest.mark.parametrize(("statement", "routed"), [
    ("INSERT INTO ledger (id, n, s) OVERRIDING SYSTEM VALUE VALUES (1, 2, 3)", True),
    ("INSERT INTO ledger OVERRIDING SYSTEM VALUE VALUES (1, 2, 3, 'x')", True),
    ("INSERT INTO ledger (id, n, s) VALUES (1, 2, 3)", False),  # a value for the ALWAYS identity
    ("INSERT INTO ledger (id, s) VALUES (1, 3)", False),  # n left to its sequence
    ("INSERT INTO ledger (id, n, s) OVERRIDING SYSTEM VALUE VALUES (1, 2, 3), (2, 3, DEFAULT)", False),
    ("UPDATE ledger SET note = 'x', s = 4 WHERE id = 1", True),
    ("UPDATE ledger SET n = 4 WHERE id = 1", False),
    ("UPDATE ledger SET n = DEFAULT WHERE id = 1", False),  # the next value of n's sequence
    ("UPDATE ledger SET s = DEFAULT WHERE id = 1", False),
])
def test_which_writes_go_to_a_shard(statement: str, routed: bool) -> None:
    route = analyze(statement, TOPOLOGY)
    assert isinstance(route, Shard) == routed, route
    if not routed:
        assert isinstance(route, Coordinator) and ("identity" in route.reason or "sequence" in route.reason), route
