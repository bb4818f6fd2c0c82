"""Multi-shard writes the router runs itself (UPDATE / DELETE without the key, joins on the key or to
reference tables, TRUNCATE, multi-row INSERT over several shards, co-located INSERT … SELECT), compared
statement by statement with the same rows in plain tables on the coordinator: counts, RETURNING rows,
the tables' contents afterwards, errors. A failure on one shard applies nothing anywhere."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from conftest import login_role
from test_router_txn import connect, prepared_everywhere, routing_router

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec

pytestmark = pytest.mark.cluster

SETUP = [
    "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, amount int, note text)",
    "CREATE TABLE items (order_id bigint, sku text, qty int CHECK (qty < 1000), PRIMARY KEY (order_id, sku))",
    "CREATE TABLE countries (code int PRIMARY KEY, name text)",
    "INSERT INTO orders SELECT g, g % 7, g % 100, CASE WHEN g % 5 = 0 THEN NULL ELSE 'n' || g END "
    "FROM generate_series(1, 300) g",
    "INSERT INTO items SELECT g, 'a', g % 5 FROM generate_series(1, 300) g",
    "INSERT INTO items VALUES (1, 'b', 1)",
    "INSERT INTO countries SELECT g, 'c' || g FROM generate_series(0, 5) g",
]

# (statement, whether RETURNING rows keep their order: a multi-row INSERT returns them in VALUES order)
STATEMENTS = [
    ("UPDATE orders SET note = 'big' WHERE amount > 90 RETURNING id, note, amount", False),
    ("UPDATE orders SET amount = amount + 1", False),
    ("DELETE FROM orders WHERE customer = 3 RETURNING *", False),
    ("UPDATE orders o SET note = c.name FROM countries c WHERE c.code = o.customer AND o.amount < 10 "
     "RETURNING o.id, o.note, c.code", False),
    ("DELETE FROM items USING orders WHERE items.order_id = orders.id AND orders.amount < 20", False),
    ("UPDATE orders SET note = 'has b' WHERE EXISTS (SELECT 1 FROM items i WHERE i.order_id = orders.id AND i.sku = 'b') "
     "RETURNING id", False),
    ("UPDATE orders SET note = NULL WHERE false RETURNING id", False),
    ("UPDATE orders SET customer = 9 WHERE id IN (2, 3, 5, 7, 11) RETURNING id, customer", False),
    ("INSERT INTO orders (id, customer, amount, note) VALUES (1001, 1, 5, 'x'), (1002, 2, 6, NULL), (1003, 3, 7, 'z'), "
     "(1004, 4, 8, 'w'), (1005, 5, 9, 'v') RETURNING id, note", True),
    ("INSERT INTO items (order_id, sku, qty) SELECT id, 'copy', amount FROM orders WHERE amount > 30", False),
    ("INSERT INTO items SELECT o.id, 'ret', 2 FROM orders o WHERE o.customer = 1 RETURNING order_id, sku", False),
    ("DELETE FROM orders", False),
    ("TRUNCATE items", False),
]


@pytest.fixture
def tables(fleet: Fleet, schema: str) -> Iterator[tuple[str, str]]:
    """The same tables and rows twice: distributed (orders, items co-located, countries reference) in
    ``schema``, plain in ``schema``_plain."""
    plain = f"{schema}_plain"
    conn = fleet.conn()
    conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(plain)))
    for name in (schema, plain):
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(name)))
        for statement in SETUP:
            conn.execute(statement.encode())
    fleet.distribute(DistributeSpec(QualifiedName(schema, "orders"), "id", HashSpec(4)))
    fleet.distribute(DistributeSpec(QualifiedName(schema, "items"), "order_id", colocate_with=QualifiedName(schema, "orders")))
    fleet.reference(ReferenceSpec(QualifiedName(schema, "countries")))
    try:
        yield schema, plain
    finally:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(plain)))


@pytest.fixture
def router(cluster: LocalCluster, tables: tuple[str, str]) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def outcome(conn: psycopg.Connection[Any], statement: str) -> tuple[str, int, list[tuple[Any, ...]] | None]:
    """(SQLSTATE or '', rows affected, RETURNING rows) of one statement in the simple protocol."""
    cur = psycopg.ClientCursor(conn)
    try:
        cur.execute(statement)
    except psycopg.Error as exc:
        return exc.sqlstate or "?", -1, None
    return "", cur.rowcount, cur.fetchall() if cur.description else None


def message(conn: psycopg.Connection[Any], statement: str) -> tuple[str | None, str | None, str | None]:
    """The error's message, table and constraint name (nothing changes: the statement fails; the detail
    names the first failing row, which depends on the order the shards meet them)."""
    with pytest.raises(psycopg.Error) as info:
        psycopg.ClientCursor(conn).execute(statement)
    diag = info.value.diag
    return diag.message_primary, diag.table_name, diag.constraint_name


def contents(conn: psycopg.Connection[Any]) -> tuple[list[tuple[Any, ...]], ...]:
    return tuple(conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("orders", "items", "countries"))


@contextlib.contextmanager
def sessions(cluster: LocalCluster, router: RouterServer, tables: tuple[str, str]) -> Iterator[tuple[Any, Any, Any]]:
    """Autocommit sessions: through the router on the distributed tables, on the coordinator on the plain
    twins, and on the coordinator on the distributed tables."""
    schema, plain = tables
    with connect(cluster, router.config.port, schema) as routed, \
            connect(cluster, cluster.spec.coordinator.port, plain) as single, \
            connect(cluster, cluster.spec.coordinator.port, schema) as direct:
        yield routed, single, direct


def by_value(rows: list[tuple[Any, ...]] | None) -> list[tuple[Any, ...]] | None:
    return None if rows is None else sorted(rows, key=repr)


def test_writes_match_a_plain_table(cluster: LocalCluster, router: RouterServer, tables: tuple[str, str]) -> None:
    schema, plain = tables
    stats = router.context.stats
    with connect(cluster, router.config.port, schema) as routed, \
            connect(cluster, cluster.spec.coordinator.port, plain) as single:
        assert contents(routed) == contents(single)
        for statement, ordered in STATEMENTS:
            before = stats.routed
            got, want = outcome(routed, statement), outcome(single, statement)
            assert stats.routed == before + 1, f"not run by the router: {statement}"
            assert got[:2] == want[:2], statement
            assert (got[2] if ordered else by_value(got[2])) == (want[2] if ordered else by_value(want[2])), statement
            assert contents(routed) == contents(single), statement
    assert stats.routing_fallbacks == 0 and stats.pinned_sessions == 0
    assert prepared_everywhere(cluster) == 0


def test_left_to_the_coordinator_gives_the_same_result(cluster: LocalCluster, router: RouterServer,
                                                      tables: tuple[str, str]) -> None:
    """Shapes the router does not run: the coordinator's answer, with the same result as one server."""
    schema, plain = tables
    stats = router.context.stats
    with connect(cluster, router.config.port, schema) as routed, \
            connect(cluster, cluster.spec.coordinator.port, plain) as single:
        for statement in ["DELETE FROM orders WHERE id IN (SELECT order_id FROM items WHERE qty = 4)",
                          "UPDATE countries SET name = 'renamed' WHERE code = 2"]:
            before = stats.routed
            got, want = outcome(routed, statement), outcome(single, statement)
            assert stats.routed == before, statement
            assert got[:2] == want[:2], statement
            assert contents(routed) == contents(single), statement


@pytest.mark.parametrize("statement", [
    "UPDATE items SET sku = 'b' WHERE sku = 'a'",  # only the shard of order 1 has both 'a' and 'b'
    "UPDATE items SET qty = qty * 400 WHERE sku = 'a'",  # the CHECK fails on the shards with qty >= 3
    "INSERT INTO items (order_id, sku, qty) VALUES (2, 'n', 1), (3, 'n', 1), (4, 'n', 1), (1, 'b', 1), (5, 'n', 1)",
    "INSERT INTO items SELECT order_id, sku, qty FROM items",  # every row is already there
], ids=["unique", "check", "values", "insert_select"])
def test_an_error_on_one_shard_applies_nothing(cluster: LocalCluster, router: RouterServer, tables: tuple[str, str],
                                               statement: str) -> None:
    stats = router.context.stats
    with sessions(cluster, router, tables) as (routed, single, direct):
        before = contents(direct)
        routed_count = stats.routed
        got, want = outcome(routed, statement), outcome(single, statement)
        assert stats.routed == routed_count + 1
        assert got[0] == want[0] and got[0] in ("23505", "23514"), (got, want)
        assert contents(direct) == before == contents(single)
        assert message(routed, statement) == message(single, statement)  # the logical table's names, not the shard's
        assert outcome(routed, "SELECT 1")[2] == [(1,)]  # the session goes on
    assert prepared_everywhere(cluster) == 0


def test_a_role_without_the_privilege_gets_the_coordinators_error(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                                                  tables: tuple[str, str]) -> None:
    schema, _ = tables
    conn = fleet.conn()
    with login_role(fleet, f"{schema}_reader"[:60]) as role:
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(role)))
        time.sleep(1.5)  # the router's next refresh copies the role to the workers
        with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=role, password="pw",
                             autocommit=True, options=f"-c search_path={schema}") as reader:
            for statement in ("UPDATE orders SET note = 'no'", "TRUNCATE orders"):
                state, _, _ = outcome(reader, statement)
                assert state == "42501", statement
        with connect(cluster, cluster.spec.coordinator.port, schema) as direct:
            assert outcome(direct, "SELECT count(*) FROM orders WHERE note = 'no'")[2] == [(0,)]


def shard_on(cluster: LocalCluster, fleet: Fleet, schema: str, node: str) -> tuple[str, int]:
    """A shard table of ``schema``.orders on ``node`` and one key it holds."""
    topo = fleet.topology()
    orders = next(t for t in topo.tables if t.name == QualifiedName(schema, "orders"))
    shard = next(s for s in orders.shards if s.node == node)
    name = sql.Identifier(shard.shard_schema, shard.shard_table).as_string()
    ep = cluster.endpoint(node)
    with psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname) as w:
        row = w.execute(f"SELECT min(id) FROM {name}").fetchone()
    assert row is not None
    return name, int(row[0])


@pytest.mark.slow
def test_worker_killed_during_a_multi_shard_update(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                                   tables: tuple[str, str]) -> None:
    """w1's shards are updated and prepared while w2's update waits on a row lock; w2 is killed: the client
    gets an error and, once w2 is back, no row changed anywhere and no prepared transaction is left."""
    schema, _ = tables
    holder = lock_a_row_on(cluster, fleet, schema, "w2")
    result: list[Any] = []
    routed = connect(cluster, router.config.port, schema)
    try:
        thread = threading.Thread(target=lambda: result.append(outcome(routed, "UPDATE orders SET note = 'half'")),
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while prepared_on(cluster, "w1") == 0:
            assert time.monotonic() < deadline, "w1 never prepared"
            time.sleep(0.1)
        cluster.server("w2").kill()
        thread.join(30)
    finally:
        holder.close()  # (gone with w2 already, unless the drill failed before)
        routed.close()
    assert result and result[0][0] == "08006", result
    while cluster.server("w2").is_running():
        time.sleep(0.1)
    cluster.server("w2").start()
    deadline = time.monotonic() + 30
    while prepared_everywhere(cluster) != 0:
        assert time.monotonic() < deadline, "prepared transactions left"
        time.sleep(0.2)
    with connect(cluster, cluster.spec.coordinator.port, schema) as direct:
        assert outcome(direct, "SELECT count(*) FROM orders WHERE note = 'half'")[2] == [(0,)]
        assert outcome(direct, "SELECT count(*) FROM orders")[2] == [(300,)]


def prepared_on(cluster: LocalCluster, node: str) -> int:
    ep = cluster.endpoint(node)
    with psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname) as conn:
        row = conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()
        return int(row[0]) if row else 0


def test_cancel_stops_a_multi_shard_update_everywhere(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                                      tables: tuple[str, str]) -> None:
    """Ctrl-C during a multi-shard UPDATE that waits on a row lock on w2 (w1's part done): the client gets
    57014, as on one server, and no row changed on any worker."""
    schema, _ = tables
    holder = lock_a_row_on(cluster, fleet, schema, "w2")
    result: list[Any] = []
    routed = connect(cluster, router.config.port, schema)
    try:
        before = router.context.stats.cancels
        thread = threading.Thread(target=lambda: result.append(outcome(routed, "UPDATE orders SET note = 'cancelled'")),
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not waiting_on_lock(cluster, "w2"):
            assert time.monotonic() < deadline, "the update never waited on w2"
            time.sleep(0.05)
        routed.cancel_safe()
        thread.join(30)
        assert router.context.stats.cancels == before + 1
    finally:
        holder.close()
    assert result and result[0][0] == "57014", result
    assert outcome(routed, "SELECT count(*) FROM orders WHERE note = 'cancelled'")[2] == [(0,)]  # the session goes on
    routed.close()
    assert prepared_everywhere(cluster) == 0
    with connect(cluster, cluster.spec.coordinator.port, schema) as direct:
        assert outcome(direct, "SELECT count(*) FROM orders WHERE note = 'cancelled'")[2] == [(0,)]


def lock_a_row_on(cluster: LocalCluster, fleet: Fleet, schema: str, node: str) -> psycopg.Connection[Any]:
    """A connection straight to ``node`` holding a row of one of its orders shards FOR UPDATE (in its open
    transaction, until it is closed)."""
    name, key = shard_on(cluster, fleet, schema, node)
    ep = cluster.endpoint(node)
    holder = psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname)
    holder.execute(f"SELECT * FROM {name} WHERE id = {key} FOR UPDATE")
    return holder


def waiting_on_lock(cluster: LocalCluster, node: str) -> bool:
    ep = cluster.endpoint(node)
    with psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND query LIKE 'BEGIN%%cancelled%%'").fetchone()
        return bool(row and row[0])


# --- the same statements inside a transaction ------------------------------------------------------------
READS = [  # scatter/gather reads the router runs itself: they must see the transaction's writes
    "SELECT count(*), sum(amount), sum(customer), count(note) FROM orders",
    "SELECT customer, count(*), max(amount) FROM orders GROUP BY customer ORDER BY customer",
    "SELECT id, amount, note FROM orders ORDER BY id LIMIT 400",
    "SELECT order_id, sku, qty FROM items ORDER BY order_id, sku LIMIT 1000",
]


def run_all(conn: psycopg.Connection[Any], statements: list[str]) -> list[Any]:
    out: list[Any] = []
    for statement in statements:
        state, count, rows = outcome(conn, statement)
        out.append((state, count, by_value(rows)))
    return out


@pytest.mark.parametrize("end", ["COMMIT", "ROLLBACK"])
def test_multi_shard_statements_in_a_transaction(cluster: LocalCluster, router: RouterServer, tables: tuple[str, str],
                                                 end: str) -> None:
    """Multi-shard writes and scatter/gather reads inside one transaction that also wrote one row on a worker:
    each read sees what the transaction wrote, the result of every statement is one server's, and COMMIT
    applies all of it on every node (ROLLBACK none of it)."""
    stats = router.context.stats
    with sessions(cluster, router, tables) as (routed, single, direct):
        before = contents(direct)
        totals = "SELECT count(*), sum(amount), count(note) FROM orders"
        start = outcome(direct, totals)
        for conn in (routed, single):
            outcome(conn, "BEGIN")
            assert outcome(conn, "UPDATE orders SET note = 'first' WHERE id = 7")[:2] == ("", 1)  # routed: one worker
        routed_before, coordinator_before = stats.routed, stats.coordinator_transactions
        for statement, _ in STATEMENTS:
            assert run_all(routed, [statement, *READS]) == run_all(single, [statement, *READS]), statement
        assert stats.routed == routed_before + len(STATEMENTS) * (1 + len(READS))
        assert stats.coordinator_transactions == coordinator_before  # nothing went to the coordinator
        assert routed.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert outcome(direct, totals) == start  # not committed: no other session sees it (TRUNCATE items blocks)
        for conn in (routed, single):
            outcome(conn, end)
        assert contents(direct) == (contents(single) if end == "COMMIT" else before)
    assert prepared_everywhere(cluster) == 0


def test_a_failed_multi_shard_statement_in_a_transaction(cluster: LocalCluster, router: RouterServer,
                                                         tables: tuple[str, str]) -> None:
    """A multi-shard UPDATE that fails on some shards fails the transaction, as on one server; ROLLBACK TO
    SAVEPOINT undoes its part on every node, and the transaction goes on and commits the rest."""
    with sessions(cluster, router, tables) as (routed, single, direct):
        for conn in (routed, single):
            for statement in ("BEGIN", "UPDATE items SET qty = qty + 1", "SAVEPOINT s"):
                assert outcome(conn, statement)[0] == ""
        statement = "UPDATE items SET qty = qty * 400 WHERE sku = 'a'"  # the CHECK fails on some shards only
        assert message(routed, statement) == message(single, statement)
        assert outcome(routed, READS[3])[0] == outcome(single, READS[3])[0] == "25P02"
        for conn in (routed, single):
            for statement in ("ROLLBACK TO SAVEPOINT s", "UPDATE items SET sku = sku || '!' WHERE qty > 2", "COMMIT"):
                assert outcome(conn, statement)[0] == "", statement
        assert contents(direct) == contents(single)
    assert prepared_everywhere(cluster) == 0


def test_repeatable_read_scatter_keeps_the_transactions_snapshot(cluster: LocalCluster, router: RouterServer,
                                                                 tables: tuple[str, str]) -> None:
    schema, _ = tables
    with connect(cluster, router.config.port, schema) as routed, \
            connect(cluster, cluster.spec.coordinator.port, schema) as direct:
        outcome(routed, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        before = router.context.stats.routed
        first = outcome(routed, READS[0])
        outcome(direct, "UPDATE orders SET amount = amount + 1")
        assert outcome(routed, READS[0]) == first  # its snapshot of every node, taken at its first read there
        assert router.context.stats.routed == before + 2  # both run by the router, on the workers
        outcome(routed, "COMMIT")
        assert outcome(routed, READS[0]) != first


# --- the extended protocol: statements with $n values (SQLAlchemy, asyncpg, psycopg's server-side binding) ---
PARAMETERIZED: list[tuple[str, tuple[Any, ...]]] = [
    ("SELECT count(*), sum(amount), max(note) FROM orders WHERE customer = %s", (3,)),
    ("SELECT id, note FROM orders WHERE amount > %s ORDER BY id", (90,)),
    ("SELECT customer, count(*) FROM orders WHERE note LIKE %s GROUP BY customer ORDER BY customer", ("n1%",)),
    ("UPDATE orders SET note = %s WHERE amount < %s RETURNING id, note", ("it's cheap", 5)),
    ("DELETE FROM items WHERE qty = %s AND sku = %s", (4, "a")),
    ("SELECT o.id, c.name FROM orders o JOIN countries c ON c.code = o.customer WHERE o.amount = %s ORDER BY o.id",
     (42,)),
]


def bound(conn: psycopg.Connection[Any], statement: str, values: tuple[Any, ...], binary: bool = False) -> tuple[Any, ...]:
    """(SQLSTATE or '', rows affected, rows by value, column names and types), sent with the extended protocol
    (results in binary format with ``binary``)."""
    cur = conn.cursor(binary=binary)
    try:
        cur.execute(statement, values)
    except psycopg.Error as exc:
        return exc.sqlstate or "?", -1, None, None
    rows = cur.fetchall() if cur.description else None
    return "", cur.rowcount, by_value(rows), [(d.name, d.type_code) for d in cur.description or []]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "transaction"])
def test_extended_protocol_multi_shard_statements(cluster: LocalCluster, router: RouterServer, tables: tuple[str, str],
                                                  in_transaction: bool, binary: bool) -> None:
    """Statements with values run by the router over the shards, also after a routed write in the same
    transaction (which sent them to the coordinator before, and failed with 0A000)."""
    stats = router.context.stats
    with sessions(cluster, router, tables) as (routed, single, direct):
        if in_transaction:
            for conn in (routed, single):
                outcome(conn, "BEGIN")
                assert bound(conn, "UPDATE orders SET amount = %s WHERE id = %s", (1, 8))[:2] == ("", 1)
        for statement, values in PARAMETERIZED:
            before = stats.routed
            assert bound(routed, statement, values, binary) == bound(single, statement, values, binary), statement
            assert stats.routed == before + 1, f"not run by the router: {statement}"
        assert bound(routed, PARAMETERIZED[0][0], (None,)) == bound(single, PARAMETERIZED[0][0], (None,))
        for _ in range(2):  # without values, prepared (the extended protocol): parsed, then only bound
            before = stats.routed
            got, want = (conn.cursor(binary=binary).execute("SELECT count(*), max(note) FROM orders", prepare=True)
                         .fetchall() for conn in (routed, single))
            assert got == want and stats.routed == before + 1
        if in_transaction:
            for conn in (routed, single):
                outcome(conn, "COMMIT")
        assert contents(direct) == contents(single)
    assert prepared_everywhere(cluster) == 0


def test_asyncpg_multi_shard_statements(cluster: LocalCluster, router: RouterServer, tables: tuple[str, str]) -> None:
    """asyncpg (binary results, named prepared statements): multi-shard reads and writes through the router,
    in autocommit and after a routed write in a transaction, give what one server gives."""
    asyncpg = pytest.importorskip("asyncpg")
    schema, plain = tables
    stats = router.context.stats
    statements = [(statement.replace("%s", "$1", 1).replace("%s", "$2", 1), values) for statement, values in PARAMETERIZED]
    statements.append(("SELECT count(*), sum(amount) FROM orders", ()))  # no value: still every shard

    async def session(port: int, search_path: str) -> list[Any]:
        conn = await asyncpg.connect(host="127.0.0.1", port=port, user=cluster.spec.superuser,
                                     password=cluster.spec.coordinator.password, database=cluster.spec.dbname,
                                     server_settings={"search_path": search_path})
        seen: list[Any] = []
        try:
            for in_transaction in (False, True):
                txn = conn.transaction()
                if in_transaction:
                    await txn.start()
                    seen.append(await conn.execute("UPDATE orders SET amount = $1 WHERE id = $2", 2, 9))
                for statement, values in statements:
                    before = stats.routed
                    rows = await conn.fetch(statement, *values)
                    seen.append(sorted((tuple(r) for r in rows), key=repr))
                    if port == router.config.port:
                        assert stats.routed == before + 1, f"not run by the router: {statement}"
                if in_transaction:
                    await txn.commit()
            for statement, values in statements[:2]:  # Execute with a row limit of 1
                before = stats.routed
                row = await conn.fetchrow(statement, *values)
                seen.append(tuple(row) if row is not None else None)
                if port == router.config.port:
                    assert stats.routed == before + 1, f"fetchrow not run by the router: {statement}"
            async with conn.transaction():
                seen.append(tuple(await conn.fetchrow(statements[0][0], *statements[0][1])))  # one row: routed
            for bad in ("SELEC $1", "SELECT * FROM orders WHERE nope = $1"):  # refused at Parse: the session goes on
                with pytest.raises(asyncpg.PostgresError) as caught:
                    await conn.fetch(bad, 1)
                seen.append(caught.value.sqlstate)
            before = stats.routed
            seen.append(await conn.fetchval("SELECT note FROM orders WHERE id = $1", 12))  # one shard
            if port == router.config.port:
                assert stats.routed == before + 1
        finally:
            await conn.close()
        return seen

    assert asyncio.run(session(router.config.port, schema)) == asyncio.run(session(cluster.spec.coordinator.port, plain))
    with connect(cluster, cluster.spec.coordinator.port, schema) as direct, \
            connect(cluster, cluster.spec.coordinator.port, plain) as single:
        assert contents(direct) == contents(single)
    assert prepared_everywhere(cluster) == 0
