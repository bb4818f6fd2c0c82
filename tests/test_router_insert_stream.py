"""INSERT … SELECT of any number of rows into a distributed table, in autocommit, run by the router: the
coordinator streams the selected rows (COPY TO) and the router sends them to their shards as a client's COPY
(router/insertstream.py), committing all shards or none. Compared with the same statements on a plain table:
the same rows and the same errors (by SQLSTATE), nothing inserted by a statement that failed."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from pglast import parse_sql

from conftest import connect, create_twins
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.insertstream import InsertStream, plan_insert_stream
from pgfleet.router.rowsource import MAX_ROWS
from pgfleet.router.server import RouterServer
from pgfleet.router.snapshot import RoutedTable, RoutingTopology
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from pgfleet.topology.model import Shard
from test_router_txn import routing_router

ROWS = MAX_ROWS + 1000  # more than the router gets first as a VALUES list (router/rowsource.py)

SETUP = [
    "CREATE TABLE {p}wide (id bigint PRIMARY KEY, d date, n int, s varchar(12))",
]

# (statement, whether the router runs it itself)
STATEMENTS = [
    ("INSERT INTO {p}wide SELECT id, d, n, s FROM stage", True),  # no column list; text into varchar
    ("INSERT INTO {p}wide SELECT * FROM stage", True),  # 23505: every key is there
    ("INSERT INTO {p}wide (id, d, n, s) SELECT id + 10000, '2025-06-01', n, s FROM stage", True),  # a date constant
    ("INSERT INTO {p}wide (s, id, n, d) SELECT s, id + 20000, 1.5, d FROM stage", False),  # numeric into int
    ("INSERT INTO {p}wide SELECT id + 30000, d, 10 / (n - 3000), s FROM stage", True),  # 22012 in the SELECT
    ("INSERT INTO {p}wide SELECT id + 40000, d, n, s || '-too-long' FROM stage", True),  # 22001 on a shard
    ("INSERT INTO {p}wide SELECT a.id + 50000, a.d, b.n, a.s FROM stage a JOIN stage b ON b.id = a.id "
     "WHERE a.id % 2 = 0;", True),
    ("INSERT INTO {p}wide (id, d, n, s) SELECT g, '2024-02-30', 1, 'x' FROM generate_series(60000, 67000) g", True),
    ("INSERT INTO {p}wide (id, n, s) SELECT id + 70000, n, s FROM stage", False),  # d left to its default
    ("INSERT INTO {p}wide SELECT id + 80000, d, n, s FROM stage WHERE false", True),
    ("SELECT count(*), sum(n), min(d), max(d), max(s), sum(hashtext(s)), count(DISTINCT d) FROM {p}wide", None),
]


@pytest.fixture
def router(cluster: LocalCluster, fleet: Fleet, schema: str) -> Iterator[RouterServer]:
    conn = fleet.conn()
    create_twins(conn, SETUP)
    conn.execute("CREATE TABLE stage (id bigint, d date, n int, s text)")
    conn.execute(f"INSERT INTO stage SELECT g, date '2024-01-01' + g % 400, g, 'row ' || g "
                 f"FROM generate_series(1, {ROWS}) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "wide"), "id", HashSpec(4)))
    with routing_router(cluster) as server:  # stage stays a table of the coordinator's
        yield server


def outcome(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> object:
    try:
        cur = conn.execute(statement)
        return cur.statusmessage, cur.fetchall() if cur.description else None
    except psycopg.Error as exc:
        return type(exc).__name__, exc.diag.sqlstate


def test_the_same_rows_and_errors_as_a_plain_table(cluster: LocalCluster, router: RouterServer, schema: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, schema) as conn:
        for statement, streamed in STATEMENTS:
            routed = stats.routed
            got = outcome(conn, statement.format(p=""))
            assert got == outcome(conn, statement.format(p="plain_")), statement
            if streamed is not None:
                assert (stats.routed == routed + 1) == streamed, statement
    assert got[1][0][0] == 4 * ROWS + ROWS // 2  # type: ignore[index]
    assert stats.coordinator_transactions == 0


def test_in_a_transaction_the_coordinator_runs_it(cluster: LocalCluster, router: RouterServer, schema: str) -> None:
    """Inside a transaction the SELECT must see the transaction's own writes: the coordinator runs it."""
    with connect(cluster, router.config.port, schema) as conn, conn.transaction():
        conn.execute("INSERT INTO stage VALUES (-1, '2024-01-01', -1, 'mine')")
        conn.execute("INSERT INTO wide SELECT * FROM stage WHERE id < 0")
        assert conn.execute("SELECT s FROM wide WHERE id = -1").fetchall() == [("mine",)]
        conn.execute("DELETE FROM stage WHERE id < 0")
    assert router.context.stats.coordinator_transactions == 1


# --- pure ---------------------------------------------------------------------------------------------------------
def _shards(oid: int, name: str) -> tuple[Shard, ...]:
    return tuple(Shard(shard_id=100 + i, table_oid=oid, index=i, node=f"w{i % 2 + 1}", shard_schema="public",
                       shard_table=f"{name}_{100 + i}", foreign_schema="public", foreign_table=f"{name}_{100 + i}",
                       modulus=4, remainder=i) for i in range(4))


TOPOLOGY = RoutingTopology(tables=(
    RoutedTable(oid=7, name=QualifiedName("public", "dst"), method="hash", key="id", colocation_id=1,
                columns=("id", "note"), key_type="bigint", shards=_shards(7, "dst")),
    RoutedTable(oid=8, name=QualifiedName("public", "kind"), method="reference", key=None, colocation_id=0,
                columns=("id", "name")),
    RoutedTable(oid=9, name=QualifiedName("public", "ticket"), method="hash", key="id", colocation_id=2,
                columns=("id", "note"), key_type="bigint", shards=_shards(9, "ticket"), key_identity="a")),
    relations=frozenset({("public", "dst"), ("public", "kind"), ("public", "ticket"), ("public", "src")}),
    local_tables=frozenset({("public", "src")}), coordinator="coord")


@pytest.mark.parametrize(("statement", "select"), [
    ("INSERT INTO dst SELECT * FROM src", "SELECT * FROM src"),
    ("insert into dst (note, id) select note, id from src;", "select note, id from src"),
    ("INSERT INTO dst AS d SELECT a.id, b.note FROM src a JOIN src b ON a.id = b.id ORDER BY 1",
     "SELECT a.id, b.note FROM src a JOIN src b ON a.id = b.id ORDER BY 1"),
    ("INSERT INTO dst SELECT g, 'x' FROM generate_series(1, 10) g", "SELECT g, 'x' FROM generate_series(1, 10) g"),
    ("INSERT INTO dst (id, note) SELECT id, note FROM src RETURNING id", None),
    ("INSERT INTO dst (id, note) SELECT id, note FROM src ON CONFLICT DO NOTHING", None),
    ("INSERT INTO dst (id, note) SELECT $1, note FROM src", None),  # a parameter
    ("INSERT INTO dst (note) SELECT note FROM src", None),  # the key left to its default
    ("INSERT INTO dst (id, note) SELECT nextval('s'), note FROM src", None),  # a side effect
    ("INSERT INTO dst (id, note) SELECT id, note FROM src FOR UPDATE", None),  # locks
    ("INSERT INTO dst (id, note) VALUES (1, 'x')", None),
    ("WITH x AS (SELECT 1 AS id, 'n' AS note) INSERT INTO dst SELECT * FROM x", None),
    ("INSERT INTO dst (id, id) SELECT 1, 2", None),  # the coordinator names the error
    ("INSERT INTO kind SELECT * FROM src", None),  # a reference table
    ("INSERT INTO ticket SELECT * FROM src", None),  # GENERATED ALWAYS: the coordinator refuses a value
    ("INSERT INTO ticket OVERRIDING SYSTEM VALUE SELECT * FROM src", "SELECT * FROM src"),
])
def test_which_inserts_are_streamed(statement: str, select: str | None) -> None:
    plan = plan_insert_stream(parse_sql(statement)[0].stmt, statement, TOPOLOGY, ("public",))
    assert (plan.select if isinstance(plan, InsertStream) else None) == select
