"""The multi-shard write planner without servers: SQL in, the statement of every shard out (or None: the
coordinator runs it)."""

from __future__ import annotations

import pytest
from pglast import parse_sql
from test_router_analyze import COUNTRIES, ITEMS, ORDERS, TOPOLOGY, index_of

from pgfleet.router.mwrite import plan_write
from pgfleet.router.routing import decide
from pgfleet.router.shardwrite import ShardWrite, combined_tag
from pgfleet.router.snapshot import RoutedTable


def plan(sql: str) -> ShardWrite | None:
    [raw] = parse_sql(sql)
    assert raw.stmt is not None
    return plan_write(raw.stmt, sql, TOPOLOGY, ("public",))


def statements(found: ShardWrite | None) -> dict[str, list[str]]:
    assert found is not None
    return {part.node: list(part.statements) for part in found.parts}


def shard(table: RoutedTable, index: int) -> str:
    found = table.shard(index)
    assert found is not None
    return f'"public"."{found.shard_table}"'


def test_update_without_the_key_runs_on_every_shard() -> None:
    got = statements(plan("UPDATE orders SET note = 'x' WHERE amount > 3 RETURNING id, note"))
    assert got == {
        "w1": [f"UPDATE {shard(ORDERS, i)} AS \"orders\" SET note = 'x' WHERE amount > 3 RETURNING id, note" for i in (0, 2)],
        "w2": [f"UPDATE {shard(ORDERS, i)} AS \"orders\" SET note = 'x' WHERE amount > 3 RETURNING id, note" for i in (1, 3)],
    }


def test_delete_everything_and_an_in_list_over_two_shards() -> None:
    got = statements(plan("DELETE FROM orders o"))
    assert got == {"w1": [f"DELETE FROM {shard(ORDERS, i)} o" for i in (0, 2)],
                   "w2": [f"DELETE FROM {shard(ORDERS, i)} o" for i in (1, 3)]}
    a, b = 1, next(k for k in range(2, 100) if index_of(k) != index_of(1))
    got = statements(plan(f"DELETE FROM orders WHERE id IN ({a}, {b})"))
    assert sorted(s for node in got.values() for s in node) == sorted(
        f'DELETE FROM {shard(ORDERS, index_of(k))} AS "orders" WHERE id IN ({a}, {b})' for k in (a, b))


def test_joins_to_reference_tables_and_colocated_tables_on_the_key() -> None:
    assert COUNTRIES.is_reference
    got = statements(plan("DELETE FROM orders USING countries c WHERE orders.note = c.code AND c.name = 'x'"))
    assert got["w1"][0] == f'DELETE FROM {shard(ORDERS, 0)} AS "orders" USING "public"."countries" c ' \
        "WHERE orders.note = c.code AND c.name = 'x'"
    got = statements(plan("UPDATE orders o SET amount = i.qty FROM items i WHERE i.order_id = o.id AND i.sku = 'a'"))
    assert got["w2"] == [f"UPDATE {shard(ORDERS, i)} o SET amount = i.qty FROM {shard(ITEMS, i)} i "
                         "WHERE i.order_id = o.id AND i.sku = 'a'" for i in (1, 3)]
    got = statements(plan("UPDATE orders SET note = 'y' WHERE EXISTS (SELECT 1 FROM items WHERE items.order_id = orders.id)"))
    assert got["w1"][1] == f"UPDATE {shard(ORDERS, 2)} AS \"orders\" SET note = 'y' WHERE EXISTS " \
        f'(SELECT 1 FROM {shard(ITEMS, 2)} AS "items" WHERE items.order_id = orders.id)'


@pytest.mark.parametrize("sql", [
    "UPDATE orders SET id = id + 1",  # the key moves rows between shards
    "UPDATE countries SET name = 'x'",  # a reference table: every copy and the coordinator's
    "UPDATE orders o SET amount = 1 FROM items i WHERE i.sku = o.note",  # joined not on the key
    "UPDATE orders o SET amount = 1 FROM accounts a WHERE a.aid = o.id",  # another co-location group
    "DELETE FROM orders WHERE id IN (SELECT order_id FROM items)",  # a subquery over every shard
    "UPDATE orders SET note = nextval('s')::text",  # a function with side effects
    "UPDATE ONLY orders SET note = 'x'",
    "DELETE FROM orders WHERE amount > (SELECT avg(amount) FROM orders)",
    "WITH x AS (SELECT 1) DELETE FROM orders",
    "UPDATE local_t SET a = 1",
    "TRUNCATE countries",
    "TRUNCATE orders RESTART IDENTITY",
    "TRUNCATE orders CASCADE",
    "TRUNCATE ONLY orders",
    "INSERT INTO items (order_id, sku, qty) SELECT id + 1, note, 1 FROM orders",  # a computed key
    "INSERT INTO items (order_id, sku, qty) SELECT customer, note, 1 FROM orders",  # not the source's key
    "INSERT INTO items (order_id, sku, qty) SELECT id, note, count(*) FROM orders GROUP BY id, note",
    "INSERT INTO items (order_id, sku, qty) SELECT id, note, 1 FROM orders LIMIT 5",
    "INSERT INTO items (order_id, sku, qty) SELECT id, note, row_number() OVER () FROM orders",  # numbers all rows
    "INSERT INTO items (order_id, sku, qty) SELECT id, note, (abs(count(*)))::int FROM orders",  # one row in all
    "INSERT INTO items (order_id, sku, qty) SELECT DISTINCT id, note, 1 FROM orders",
    "INSERT INTO items (order_id, sku, qty) SELECT id, note, 1 FROM orders ON CONFLICT DO NOTHING",
    "INSERT INTO accounts SELECT id, 1 FROM orders",  # another co-location group
    "INSERT INTO items (sku, qty) SELECT note, 1 FROM orders",  # the key from its default
    "INSERT INTO orders (note, id) SELECT * FROM orders",  # * puts orders' key first, the target wants it second
])
def test_left_to_the_coordinator(sql: str) -> None:
    assert plan(sql) is None


def test_truncate_every_shard_one_statement_per_node() -> None:
    got = statements(plan("TRUNCATE orders, public.items"))
    assert got == {"w1": [f"TRUNCATE TABLE {shard(ORDERS, 0)}, {shard(ORDERS, 2)}, {shard(ITEMS, 0)}, {shard(ITEMS, 2)}"],
                   "w2": [f"TRUNCATE TABLE {shard(ORDERS, 1)}, {shard(ORDERS, 3)}, {shard(ITEMS, 1)}, {shard(ITEMS, 3)}"]}


def test_multi_row_insert_over_several_shards_keeps_the_row_numbers() -> None:
    keys = [1, 2, 3, 4, 5, 6]
    found = plan("INSERT INTO orders (id, note) VALUES " + ", ".join(f"({k}, 'n{k}')" for k in keys) + " RETURNING id")
    assert found is not None
    seen: dict[int, int] = {}
    for part in found.parts:
        for text, numbers in zip(part.statements, part.row_numbers, strict=True):
            for n in numbers:
                assert f"({keys[n]}, 'n{keys[n]}')" in text
                assert text.endswith("RETURNING id")
                seen[n] = index_of(keys[n])
    assert sorted(seen) == list(range(len(keys)))


def test_insert_select_between_colocated_tables_per_shard_pair() -> None:
    got = statements(plan("INSERT INTO items (order_id, sku, qty) SELECT o.id, o.note, 1 FROM orders o WHERE o.amount > 0"))
    assert got["w1"] == [f'INSERT INTO {shard(ITEMS, i)} AS "items" (order_id, sku, qty) SELECT o.id, o.note, 1 '
                         f"FROM {shard(ORDERS, i)} o WHERE o.amount > 0" for i in (0, 2)]
    got = statements(plan("INSERT INTO orders SELECT * FROM orders WHERE id = 5"))
    assert len(got[next(iter(got))]) == 1 and sum(map(len, got.values())) == 1  # the source is pinned to one shard


def test_decisions_through_routing() -> None:
    truncate = decide("TRUNCATE orders", TOPOLOGY, ("public",))
    assert isinstance(truncate.route, ShardWrite) and truncate.keeps_state
    split = decide("INSERT INTO orders (id) VALUES (1), (2), (3), (4)", TOPOLOGY, ("public",))
    assert isinstance(split.route, ShardWrite)
    assert not decide("TRUNCATE orders; SET x.y = 1", TOPOLOGY, ("public",)).keeps_state


def test_combined_tags() -> None:
    assert combined_tag(["UPDATE 3", "UPDATE 0", "UPDATE 4"]) == "UPDATE 7"
    assert combined_tag(["INSERT 0 2", "INSERT 0 5"]) == "INSERT 0 7"
    assert combined_tag(["TRUNCATE TABLE", "TRUNCATE TABLE"]) == "TRUNCATE TABLE"
