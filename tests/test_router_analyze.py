"""Golden tests of the router's routing decisions, without servers: SQL in, route out."""

from __future__ import annotations

from typing import Any

import pytest

from pgfleet import hashing
from pgfleet.router.analyze import Coordinator, Route, Shard, Split, analyze
from pgfleet.router.snapshot import RoutedTable, RoutingTopology
from pgfleet.spec import QualifiedName
from pgfleet.topology.model import Shard as CatalogShard

NODES = ("w1", "w2")


def placement(index: int, shard_id: int, node: str, schema: str, table: str, **bounds: Any) -> CatalogShard:
    return CatalogShard(shard_id=shard_id, table_oid=0, index=index, node=node, shard_schema=schema, shard_table=table,
                        foreign_schema="pgfleet_shards", foreign_table=f"{table}_{shard_id}", **bounds)


def table(schema: str, name: str, method: str, key: str | None, key_type: str, colocation: int | None,
          columns: tuple[str, ...], shards: tuple[CatalogShard, ...]) -> RoutedTable:
    return RoutedTable(oid=0, name=QualifiedName(schema, name), method=method, key=key, colocation_id=colocation,
                       shards=shards, key_type=key_type, columns=columns)


def hash_table(name: str, key: str, key_type: str, columns: tuple[str, ...], colocation: int, first_id: int,
               modulus: int = 4) -> RoutedTable:
    shards = tuple(placement(i, first_id + i, NODES[i % 2], "public", f"{name}_{first_id + i}", modulus=modulus, remainder=i)
                   for i in range(modulus))
    return table("public", name, "hash", key, key_type, colocation, columns, shards)


ORDERS = hash_table("orders", "id", "bigint", ("id", "customer", "amount", "note"), 1, 100)
ITEMS = hash_table("items", "order_id", "bigint", ("order_id", "sku", "qty"), 1, 200)
ACCOUNTS = hash_table("accounts", "aid", "integer", ("aid", "balance"), 4, 300)
MIXED = hash_table("Mixed Case", "Key", "integer", ("Key", "val"), 5, 400)
EVENTS = table("public", "events", "range", "ts_id", "integer", 2, ("ts_id", "kind"), (
    placement(0, 500, "w1", "public", "events_500", upper="100"),
    placement(1, 501, "w2", "public", "events_501", lower="100", upper="200"),
    placement(2, 502, "w1", "public", "events_502", lower="200")))
SITES = table("public", "sites", "list", "city", "text", 3, ("city", "name"), (
    placement(0, 600, "w1", "geo", "sites_600", values=("Paris", "Lyon")),
    placement(1, 601, "w2", "geo", "sites_601", values=("Lagos",))))
COUNTRIES = table("public", "countries", "reference", None, "", None, ("code", "name"), (
    placement(0, 700, "w1", "public", "countries"), placement(0, 701, "w2", "public", "countries")))

TOPOLOGY = RoutingTopology(
    tables=(ORDERS, ITEMS, ACCOUNTS, MIXED, EVENTS, SITES, COUNTRIES),
    relations=frozenset({("other", "orders"), ("public", "local_t"), ("pg_catalog", "pg_class"),
                         *((t.schema, t.relname) for t in (ORDERS, ITEMS, ACCOUNTS, MIXED, EVENTS, SITES, COUNTRIES))}))


def index_of(key: int, key_type: str = "bigint") -> int:
    return hashing.remainder(key, 4, key_type)


def shard_name(table: RoutedTable, key: int) -> str:
    return f'"public"."{table.relname}_{table.shard(index_of(key, table.key_type)).shard_id}"'  # type: ignore[union-attr]


def route(sql: str, *params: str | None, **kwargs: object) -> Route:
    return analyze(sql, TOPOLOGY, params=params, **kwargs)  # type: ignore[arg-type]


def node_of(key: int, key_type: str = "bigint") -> str:
    return NODES[index_of(key, key_type) % 2]


# --- routed ------------------------------------------------------------------------------------------
ROUTED = [
    ("SELECT * FROM orders WHERE id = 5", (), 5,
     f'SELECT * FROM {shard_name(ORDERS, 5)} AS "orders" WHERE id = 5'),
    ("SELECT o.amount FROM orders o WHERE o.id = $1", ("5",), 5,
     f"SELECT o.amount FROM {shard_name(ORDERS, 5)} o WHERE o.id = $1"),
    ("select amount from orders where id = '7'::bigint and amount > 3", (), 7,
     f"select amount from {shard_name(ORDERS, 7)} AS \"orders\" where id = '7'::bigint and amount > 3"),
    ("SELECT * FROM public.orders WHERE 5 = id", (), 5,
     f'SELECT * FROM {shard_name(ORDERS, 5)} AS "orders" WHERE 5 = id'),
    ("SELECT count(*), sum(amount) FROM orders WHERE id IN (9, 9)", (), 9,
     f'SELECT count(*), sum(amount) FROM {shard_name(ORDERS, 9)} AS "orders" WHERE id IN (9, 9)'),
    ("SELECT 'orders' AS orders, amount FROM orders WHERE id = 5 -- orders", (), 5,
     f"SELECT 'orders' AS orders, amount FROM {shard_name(ORDERS, 5)} AS \"orders\" WHERE id = 5 -- orders"),
    ("SELECT 'ééé', amount FROM orders WHERE id = 5", (), 5,
     f"SELECT 'ééé', amount FROM {shard_name(ORDERS, 5)} AS \"orders\" WHERE id = 5"),
    ("SELECT * FROM orders o JOIN items i ON i.order_id = o.id WHERE o.id = 7", (), 7,
     f"SELECT * FROM {shard_name(ORDERS, 7)} o JOIN {shard_name(ITEMS, 7)} i ON i.order_id = o.id WHERE o.id = 7"),
    ("SELECT * FROM orders o, items i WHERE o.id = 3 AND i.order_id = 3", (), 3,
     f"SELECT * FROM {shard_name(ORDERS, 3)} o, {shard_name(ITEMS, 3)} i WHERE o.id = 3 AND i.order_id = 3"),
    ("SELECT * FROM orders o LEFT JOIN items i ON i.order_id = o.id WHERE o.id = $1", ("11",), 11,
     f"SELECT * FROM {shard_name(ORDERS, 11)} o LEFT JOIN {shard_name(ITEMS, 11)} i ON i.order_id = o.id WHERE o.id = $1"),
    ("SELECT o.id, c.name FROM orders o JOIN countries c ON c.code = o.note WHERE o.id = 3", (), 3,
     f'SELECT o.id, c.name FROM {shard_name(ORDERS, 3)} o JOIN "public"."countries" c ON c.code = o.note WHERE o.id = 3'),
    ("SELECT * FROM orders o WHERE o.id = 4 AND EXISTS (SELECT 1 FROM items i WHERE i.order_id = o.id)", (), 4,
     f"SELECT * FROM {shard_name(ORDERS, 4)} o WHERE o.id = 4 AND EXISTS (SELECT 1 FROM {shard_name(ITEMS, 4)} i "
     "WHERE i.order_id = o.id)"),
    ("SELECT * FROM orders WHERE id = 1 FOR UPDATE", (), 1,
     f'SELECT * FROM {shard_name(ORDERS, 1)} AS "orders" WHERE id = 1 FOR UPDATE'),
    ("INSERT INTO orders (id, amount) VALUES (5, 10) RETURNING id, orders.amount", (), 5,
     f'INSERT INTO {shard_name(ORDERS, 5)} AS "orders" (id, amount) VALUES (5, 10) RETURNING id, orders.amount'),
    ("INSERT INTO orders VALUES ($1, 'c', 1, 'n') ON CONFLICT (id) DO UPDATE SET amount = EXCLUDED.amount", ("8",), 8,
     f"INSERT INTO {shard_name(ORDERS, 8)} AS \"orders\" VALUES ($1, 'c', 1, 'n') ON CONFLICT (id) "
     "DO UPDATE SET amount = EXCLUDED.amount"),
    ("UPDATE orders SET amount = amount + 1 WHERE id = 5", (), 5,
     f'UPDATE {shard_name(ORDERS, 5)} AS "orders" SET amount = amount + 1 WHERE id = 5'),
    ("UPDATE orders SET note = c.name FROM countries c WHERE orders.id = 6 AND c.code = orders.note", (), 6,
     f'UPDATE {shard_name(ORDERS, 6)} AS "orders" SET note = c.name FROM "public"."countries" c '
     "WHERE orders.id = 6 AND c.code = orders.note"),
    ("DELETE FROM orders WHERE id = $1 RETURNING *", ("2",), 2,
     f'DELETE FROM {shard_name(ORDERS, 2)} AS "orders" WHERE id = $1 RETURNING *'),
]


@pytest.mark.parametrize(("sql", "params", "key", "rewritten"), ROUTED)
def test_routed(sql: str, params: tuple[str, ...], key: int, rewritten: str) -> None:
    result = route(sql, *params)
    assert isinstance(result, Shard), result
    assert (result.node, result.shard_index, result.sql) == (node_of(key), index_of(key), rewritten)


def test_range_and_list_bounds() -> None:
    for key, index in ((-5, 0), (99, 0), (100, 1), (199, 1), (200, 2), (10**6, 2)):
        result = route("SELECT kind FROM events WHERE ts_id = $1", str(key))
        assert isinstance(result, Shard) and result.shard_index == index
        assert result.sql == f'SELECT kind FROM "public"."events_{500 + index}" AS "events" WHERE ts_id = $1'
    lagos = route("SELECT name FROM sites WHERE city = 'Lagos'")
    assert isinstance(lagos, Shard) and (lagos.node, lagos.sql) == (
        "w2", "SELECT name FROM \"geo\".\"sites_601\" AS \"sites\" WHERE city = 'Lagos'")
    assert isinstance(route("SELECT * FROM sites WHERE city IN ('Paris', 'Lyon')"), Shard)
    assert route("SELECT * FROM sites WHERE city = 'Berlin'") == Coordinator("no shard of public.sites holds the key 'Berlin'")


def test_quoted_identifiers() -> None:
    result = route('SELECT val FROM "Mixed Case" WHERE "Key" = 3')
    assert isinstance(result, Shard)
    assert result.sql == f'SELECT val FROM {shard_name(MIXED, 3)} AS "Mixed Case" WHERE "Key" = 3'
    assert route('SELECT val FROM "Mixed Case" WHERE key = 3') == Coordinator(
        'public."Mixed Case" is not restricted to one shard by its key Key '
        "(equality to a constant or parameter, or to a co-located pinned key)")
    assert route('SELECT * FROM "ORDERS" WHERE id = 5') == Coordinator("relation ORDERS is not known to the router")


def test_multi_row_insert_split_per_shard() -> None:
    keys = [1, 2, 3, 4, 5, 6]
    sql = "INSERT INTO orders (id, note) VALUES " + ", ".join(f"({k}, 'n{k}')" for k in keys) + " RETURNING id"
    result = route(sql)
    assert isinstance(result, Split)
    seen = []
    for shard, rows in result.parts:
        mine = [keys[r] for r in rows]
        assert {index_of(k) for k in mine} == {shard.shard_index}
        assert shard.sql == (f'INSERT INTO {shard_name(ORDERS, mine[0])} AS "orders" (id, note) VALUES '
                             + ", ".join(f"({k}, 'n{k}')" for k in mine) + " RETURNING id")
        seen += rows
    assert sorted(seen) == list(range(len(keys)))
    same = [k for k in range(1, 40) if index_of(k) == index_of(1)][:3]
    one = route("INSERT INTO orders (id) VALUES " + ", ".join(f"(({k}))" for k in same))
    assert isinstance(one, Shard)


NOT_ROUTED = [
    ("SELECT * FROM orders", (), "orders is not restricted to one shard"),
    ("SELECT 1", (), "no distributed table"),
    ("SELECT * FROM orders WHERE id = 1; SELECT 2", (), "not exactly one statement"),
    ("SELECT * FROM orders WHERE id = amount", (), "orders is not restricted to one shard"),
    ("SELECT * FROM orders WHERE id = 1 OR id = 2", (), "orders is not restricted to one shard"),
    ("SELECT * FROM orders WHERE id IN (1, 2, 3, 4, 5, 6)", (), "fall in several shards"),
    ("SELECT * FROM orders WHERE id = ANY($1)", ("{1}",), "orders is not restricted to one shard"),
    ("SELECT * FROM orders WHERE id = 5.5", (), "'5.5' is not an integer"),
    ("SELECT * FROM orders WHERE id = $1", (), "parameter $1 has no value"),
    ("SELECT * FROM orders WHERE id = $1", (None,), "NULL key for public.orders"),
    ("SELECT * FROM orders WHERE id = 1 AND id = 2", (), "contradictory conditions"),
    ("SELECT nextval('s') FROM orders WHERE id = 1", (), "function nextval may have side effects"),
    ("SELECT pg_sleep(1) FROM orders WHERE id = 1", (), "function pg_sleep may have side effects"),
    ("SELECT my_func(id) FROM orders WHERE id = 1", (), "function my_func may have side effects"),
    ("SELECT public.lower(note) FROM orders WHERE id = 1", (), "function public.lower may have side effects"),
    ("WITH d AS (DELETE FROM orders WHERE id = 1 RETURNING *) SELECT * FROM d", (), "WITH queries are not routed"),
    ("SELECT * FROM orders o JOIN countries c ON c.code = o.note WHERE o.id = 1 FOR UPDATE", (),
     "row locks on a reference table"),
    ("SELECT * FROM orders o WHERE o.id = 1 AND EXISTS (SELECT 1 FROM items i WHERE i.order_id = 2)", (),
     "the statement reads or writes more than one shard"),
    ("SELECT * FROM orders o WHERE o.id = 1 AND o.amount IN (SELECT qty FROM items)", (), "items is not restricted"),
    ("SELECT * FROM orders o JOIN accounts a ON a.aid = o.id WHERE o.id = 1", (), "accounts is not restricted"),
    ("SELECT * FROM orders o LEFT JOIN items i ON i.order_id = o.id AND o.id = 5", (), "orders is not restricted"),
    ("SELECT * FROM orders o FULL JOIN items i ON i.order_id = o.id WHERE o.id = 5", (), "FULL JOIN"),
    ("SELECT * FROM other.orders WHERE id = 5", (), "other.orders is not a distributed or reference table"),
    ("SELECT * FROM orders o JOIN local_t l ON true WHERE o.id = 5", (), "public.local_t is not a distributed"),
    ("SELECT orders FROM orders WHERE id = 5", (), "whole-row reference orders"),
    ("SELECT public.orders.id FROM orders WHERE id = 5", (), "schema-qualified column references"),
    ("SELECT * FROM orders WHERE id = 1 UNION SELECT * FROM orders WHERE id = 1", (), "set operations"),
    ("SELECT * FROM (SELECT * FROM orders WHERE id = 1) s", (), "RangeSubselect in FROM"),
    ("SELECT * FROM orders, generate_series(1, 3) WHERE id = 1", (), "RangeFunction in FROM"),
    ("INSERT INTO orders (amount) VALUES (1)", (), "INSERT without the distribution key id"),
    ("INSERT INTO orders (id) VALUES (DEFAULT)", (), "the key id of an inserted row is not a constant"),
    ("INSERT INTO orders SELECT * FROM orders WHERE id = 1", (), "INSERT without a VALUES list"),
    ("INSERT INTO orders (id) VALUES ($1), ($2)", ("1", "2"), "a multi-row INSERT with parameters over several shards"),
    ("INSERT INTO countries VALUES ('fr', 'France')", (), "writes to reference table public.countries"),
    ("UPDATE orders SET id = 6 WHERE id = 5", (), "UPDATE of the distribution key id"),
    ("UPDATE countries SET name = 'x' WHERE code = 'fr'", (), "writes to reference table public.countries"),
    ("DELETE FROM orders WHERE amount > 3", (), "orders is not restricted"),
    ("CREATE TABLE x (i int)", (), "CreateStmt is not routed"),
    ("SELEC 1", (), "does not parse here"),
    ("", (), "empty statement"),
]


@pytest.mark.parametrize(("sql", "params", "reason"), NOT_ROUTED)
def test_not_routed(sql: str, params: tuple[str | None, ...], reason: str) -> None:
    result = route(sql, *params)
    assert isinstance(result, Coordinator), result
    assert reason in result.reason


def test_search_path_and_temp_tables() -> None:
    sql = "SELECT * FROM orders WHERE id = 5"
    assert route(sql, search_path=("other", "public")) == Coordinator("other.orders is not a distributed or reference table")
    assert isinstance(route(sql, search_path=("nothing_here", "public")), Shard)
    assert route(sql, search_path=()) == Coordinator("relation orders is not known to the router")
    assert route(sql, temp_names=frozenset({"orders"})) == Coordinator("orders is a temporary table of this session")
    # a schema-qualified name is not shadowed by a temporary table
    assert isinstance(route("SELECT * FROM public.orders WHERE id = 5", temp_names=frozenset({"orders"})), Shard)
    # pg_catalog comes first unless the path places it
    assert route("SELECT * FROM pg_class WHERE oid = 1") == Coordinator(
        "pg_catalog.pg_class is not a distributed or reference table")
