"""Routed replies speak of the logical table, as one server with that table would: errors and notices name
the table and its constraints (not the shard's ``orders_102000`` / ``orders_pkey_102000``), and a simple
Query's RowDescription carries the coordinator's table oid and attribute numbers (not the worker's)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec
from test_router_txn import connect

pytestmark = pytest.mark.cluster

TABLE = """CREATE TABLE {}.orders (id bigint PRIMARY KEY, dropped int, qty int CHECK (qty > 0), note text,
 grp int, UNIQUE (note, id))"""


@contextmanager
def plain_twin(conn: psycopg.Connection[Any], schema: str) -> Iterator[str]:
    """A schema ``<schema>_plain`` beside the test's, for plain tables with the same names (one server's
    answers, for differential tests); dropped afterwards."""
    plain = schema + "_plain"
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(plain)))
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(plain)))
    yield plain
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(plain)))


@pytest.fixture
def orders(fleet: Fleet, schema: str) -> Iterator[tuple[str, str]]:
    """``orders`` distributed in ``schema`` and a plain ``orders`` with the same rows in ``<schema>_plain``
    (one server's answers), and a reference table ``grps``."""
    conn = fleet.conn()
    with plain_twin(conn, schema) as plain:
        yield from _orders(fleet, conn, schema, plain)


def _orders(fleet: Fleet, conn: psycopg.Connection[Any], schema: str, plain: str) -> Iterator[tuple[str, str]]:
    for name in (schema, plain):
        conn.execute(sql.SQL(TABLE).format(sql.Identifier(name)))
        conn.execute(sql.SQL("ALTER TABLE {}.orders DROP COLUMN dropped").format(sql.Identifier(name)))
        conn.execute(sql.SQL("INSERT INTO {}.orders SELECT g, g, 'n' || g, g % 3 FROM generate_series(1, 20) g")
                     .format(sql.Identifier(name)))
    conn.execute(sql.SQL("CREATE TABLE {}.grps (grp int PRIMARY KEY, label text)").format(sql.Identifier(schema)))
    conn.execute(sql.SQL("INSERT INTO {}.grps VALUES (0, 'zero'), (1, 'one'), (2, 'two')").format(sql.Identifier(schema)))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "orders"), "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "grps")))
    yield schema, plain


@pytest.fixture
def router(cluster: LocalCluster, orders: tuple[str, str]) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


FAILING = [
    "INSERT INTO orders (id, qty, note) VALUES (1, 1, 'x')",  # primary key
    "INSERT INTO orders (id, qty, note) VALUES (2, 1, 'n2')",  # primary key, two-column unique
    "UPDATE orders SET qty = -1 WHERE id = 3",  # check constraint, "new row for relation …"
    "INSERT INTO orders (id, qty) VALUES (4, 0) ON CONFLICT (id) DO UPDATE SET qty = 0",
    "SELECT nocol FROM orders WHERE id = 5",
]


def error_of(conn: psycopg.Connection[Any], statement: str, *, simple: bool, schemas: tuple[str, str]) -> tuple[Any, ...]:
    """The error's SQLSTATE and fields (the schema field as "S" when it is either test schema)."""
    try:
        if simple:
            psycopg.ClientCursor(conn).execute(statement)
        else:
            conn.execute(statement)  # psycopg: Parse/Bind/Execute
    except psycopg.Error as exc:
        d = exc.diag
        return (exc.sqlstate, d.message_primary, d.message_detail, d.message_hint, d.table_name, d.constraint_name,
                d.column_name, "S" if d.schema_name in schemas else d.schema_name)
    raise AssertionError(f"no error for {statement}")


@pytest.mark.parametrize("simple", [True, False], ids=["simple", "extended"])
def test_errors_name_the_logical_table(cluster: LocalCluster, router: RouterServer, orders: tuple[str, str],
                                       simple: bool) -> None:
    schema, plain = orders
    stats = router.context.stats
    with connect(cluster, router.config.port, schema) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, plain) as one_server:
        for statement in FAILING:
            before = stats.routed
            got = error_of(via_router, statement, simple=simple, schemas=orders)
            assert stats.routed == before + 1, statement
            assert got == error_of(one_server, statement, simple=simple, schemas=orders), statement
        # in a transaction on a worker as well
        via_router.autocommit = one_server.autocommit = False
        for conn in (via_router, one_server):
            psycopg.ClientCursor(conn).execute("SELECT qty FROM orders WHERE id = 7")
        got = error_of(via_router, FAILING[0], simple=simple, schemas=orders)
        assert got == error_of(one_server, FAILING[0], simple=simple, schemas=orders)
        assert got[5] == "orders_pkey" and got[4] == "orders"
        via_router.rollback()
        one_server.rollback()


def described(conn: psycopg.Connection[Any], statement: str) -> list[tuple[str, int, int]]:
    cur = psycopg.ClientCursor(conn)  # simple protocol: the RowDescription comes from the worker
    cur.execute(statement)
    result = cur.pgresult
    assert result is not None
    return [((result.fname(i) or b"").decode(), result.ftable(i), result.ftablecol(i)) for i in range(result.nfields)]


def test_row_description_has_the_coordinators_oids(cluster: LocalCluster, router: RouterServer,
                                                   orders: tuple[str, str]) -> None:
    schema, _ = orders
    stats = router.context.stats
    statements = [
        "SELECT * FROM orders WHERE id = 1",
        "SELECT note, id, 1 AS one, qty + 1 AS more FROM orders WHERE id = 2",
        "SELECT o.id, g.label, g.grp FROM orders o JOIN grps g ON g.grp = o.grp WHERE o.id = 3",
        "UPDATE orders SET qty = qty WHERE id = 4 RETURNING grp, note",
    ]
    with connect(cluster, router.config.port, schema) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, schema) as coordinator:
        oid = coordinator.execute("SELECT 'orders'::regclass::oid").fetchone()
        for statement in statements * 2:  # the second time from the cache
            before = stats.routed
            got = described(via_router, statement)
            assert stats.routed == before + 1, statement
            assert got == described(coordinator, statement), statement
        assert oid is not None and {t for _, t, _ in described(via_router, statements[0])} == {oid[0]}
        via_router.autocommit = False  # in a transaction on the worker as well
        assert described(via_router, statements[1]) == described(coordinator, statements[1])
        via_router.rollback()
