"""Which multi-shard SELECTs the router plans as scatter/gather reads, and the per-node and final SQL it
builds (pure: no servers)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pglast import parse_sql
from test_router_analyze import TOPOLOGY

from pgfleet.router.gather import ScatterRead, array_literal, split_reply
from pgfleet.router import protocol as p
from pgfleet.router.scatter import plan_scatter

INT8, INT4, NUMERIC, FLOAT4, TEXT = 20, 23, 1700, 700, 25


def plan(sql: str) -> ScatterRead | None:
    found = plan_scatter(parse_sql(sql)[0].stmt, sql, TOPOLOGY, ("public",))
    assert found is None or isinstance(found, ScatterRead)
    return found


def test_count_runs_per_shard_and_sums_the_counts() -> None:
    found = plan("SELECT count(*) FROM orders")
    assert found is not None and found.final is not None
    assert [(n.node, n.sql) for n in found.nodes] == [
        ("w1", "SELECT count(*) FROM public.orders_100 AS orders UNION ALL SELECT count(*) FROM public.orders_102 AS orders"),
        ("w2", "SELECT count(*) FROM public.orders_101 AS orders UNION ALL SELECT count(*) FROM public.orders_103 AS orders")]
    assert found.final.sql([INT8]) == ("SELECT CAST(sum(_pgfleet_p0) AS int8) AS count "
                                       "FROM unnest($1) AS _pgfleet_partials (_pgfleet_p0)")


def test_group_by_having_order_limit_are_the_final_statements() -> None:
    found = plan("SELECT customer AS c, sum(amount), avg(amount) AS a FROM orders WHERE note <> 'x' GROUP BY customer "
                 "HAVING count(*) > 1 ORDER BY 2 DESC NULLS LAST, c LIMIT 3 OFFSET 1")
    assert found is not None and found.final is not None
    assert found.nodes[0].sql.startswith(
        "SELECT customer, sum(amount), count(amount), count(*) FROM public.orders_100 AS orders WHERE note <> 'x' "
        "GROUP BY customer UNION ALL ")
    head = ("SELECT _pgfleet_p0 AS c, {sum} AS sum, {avg} AS a FROM unnest($1, $2, $3, $4) AS _pgfleet_partials "
            "(_pgfleet_p0, _pgfleet_p1, _pgfleet_p2, _pgfleet_p3) GROUP BY _pgfleet_p0 HAVING CAST(sum(_pgfleet_p3) AS int8) > 1 "
            "ORDER BY 2 DESC NULLS LAST, c LIMIT 3 OFFSET 1")
    # sum of int4 partials (int8) is cast back to int8; numeric stays numeric; avg divides as PostgreSQL does
    avg = "CAST(sum(_pgfleet_p1) AS numeric) / CAST(sum(_pgfleet_p2) AS numeric)"
    assert found.final.sql([TEXT, INT8, INT8, INT8]) == head.format(sum="CAST(sum(_pgfleet_p1) AS int8)", avg=avg)
    assert found.final.sql([TEXT, NUMERIC, INT8, INT8]) == head.format(sum="sum(_pgfleet_p1)", avg=avg)
    assert found.final.sql([TEXT, FLOAT4, INT8, INT8]) is None  # avg of real accumulates in float8: the coordinator


def test_group_keys_are_matched_in_expressions() -> None:
    found = plan("SELECT orders.customer || '!', count(*) FROM orders GROUP BY customer ORDER BY customer")
    assert found is not None and found.final is not None
    assert found.final.sql([TEXT, INT8]) == (
        "SELECT _pgfleet_p0 || '!' AS \"?column?\", CAST(sum(_pgfleet_p1) AS int8) AS count FROM unnest($1, $2) "
        "AS _pgfleet_partials (_pgfleet_p0, _pgfleet_p1) GROUP BY _pgfleet_p0 ORDER BY _pgfleet_p0")


def test_co_located_and_reference_joins_run_per_shard() -> None:
    found = plan("SELECT c.name, count(i.sku) FROM orders o JOIN items i ON i.order_id = o.id "
                 "JOIN countries c ON c.code = o.note GROUP BY c.name")
    assert found is not None
    assert found.nodes[0].sql.split(" UNION ALL ")[0] == (
        "SELECT c.name, count(i.sku) FROM public.orders_100 AS o INNER JOIN public.items_200 AS i ON i.order_id = o.id "
        "INNER JOIN public.countries AS c ON c.code = o.note GROUP BY c.name")


def test_order_by_limit_pushes_down_limit_plus_offset_and_merges() -> None:
    found = plan("SELECT id, note FROM orders ORDER BY amount DESC, note COLLATE \"C\" LIMIT 5 OFFSET 2")
    assert found is not None and found.merge is not None
    assert found.nodes[0].sql.split(" UNION ALL ")[0] == (
        "(SELECT id, note, amount, note COLLATE \"C\" FROM public.orders_100 AS orders "
        "ORDER BY amount DESC, note COLLATE \"C\" LIMIT 7)")
    assert (found.merge.keys, found.merge.hidden, found.limit, found.offset) == (
        ((-2, " DESC"), (-1, " COLLATE \"C\"")), 2, 5, 2)


def test_order_by_without_limit_sorts_every_shard_and_merges() -> None:
    found = plan("SELECT note FROM orders WHERE amount > 3 ORDER BY id DESC")
    assert found is not None and found.merge is not None and found.limit is None and found.offset == 0
    assert found.nodes[0].sql.split(" UNION ALL ")[0] == (
        "SELECT note, id FROM public.orders_100 AS orders WHERE amount > 3")  # the merge sorts
    assert (found.merge.keys, found.merge.hidden) == (((-1, " DESC"),), 1)


def test_plain_rows_are_concatenated() -> None:
    found = plan("SELECT * FROM orders WHERE amount = 5")
    assert found is not None and found.final is None and found.merge is None and found.limit is None
    assert found.nodes[1].sql == ("SELECT * FROM public.orders_101 AS orders WHERE amount = 5 UNION ALL "
                                  "SELECT * FROM public.orders_103 AS orders WHERE amount = 5")


@pytest.mark.parametrize("sql", [
    "SELECT count(DISTINCT customer) FROM orders",
    "SELECT string_agg(note, ',') FROM orders",
    "SELECT o.id FROM orders o JOIN accounts a ON a.aid = o.id",  # not co-located
    "SELECT o.id FROM orders o JOIN items i ON i.sku = o.note",  # co-located, not joined on the key
    "SELECT * FROM countries c LEFT JOIN orders o ON o.note = c.code",  # reference rows preserved on every shard
    "SELECT customer, note FROM orders GROUP BY customer",  # an error the coordinator reports
    "SELECT DISTINCT customer FROM orders",
    "SELECT id, rank() OVER (ORDER BY amount) FROM orders",
    "SELECT * FROM orders WHERE id IN (SELECT order_id FROM items)",
    "SELECT * FROM orders LIMIT 5 FOR UPDATE",
    "SELECT count(*) FROM orders UNION ALL SELECT count(*) FROM items",
    "WITH x AS (SELECT * FROM orders) SELECT count(*) FROM x",
    "SELECT random(), count(*) FROM orders",
    "SELECT count(*) FROM orders GROUP BY ROLLUP (customer)",
    "SELECT count(*) FROM local_t",
    "SELECT * FROM orders ORDER BY 1 LIMIT 3",  # a position over *
])
def test_other_shapes_stay_with_the_coordinator(sql: str) -> None:
    assert plan(sql) is None, sql


def test_a_column_with_another_collation_keeps_the_statement_on_the_coordinator() -> None:
    orders = next(t for t in TOPOLOGY.tables if t.relname == "orders")
    topology = replace(TOPOLOGY, tables=tuple(replace(t, collated=("note",)) if t is orders else t for t in TOPOLOGY.tables))
    sql = "SELECT max(note) FROM orders"
    assert plan(sql) is not None
    assert plan_scatter(parse_sql(sql)[0].stmt, sql, topology, ("public",)) is None


def test_array_literal_quotes_every_element() -> None:
    assert array_literal([b"a", None, b'say "x"', b"back\\slash", b"", b"NULL"]) == (
        b'{"a",NULL,"say \\"x\\"","back\\\\slash","","NULL"}')


def test_split_reply_finds_rows_without_walking_them() -> None:
    description = p.RowDescription((p.Field("x", type_oid=TEXT),)).encode()
    rows = [p.DataRow((b"C\0\0\0\x0dSELECT 1",)).encode(), p.DataRow((None,)).encode()]
    tail = p.CommandComplete("SELECT 2").encode() + p.ReadyForQuery("I").encode()
    reply = split_reply(description + b"".join(rows) + tail, False)
    assert reply is not None and (reply.rows, reply.count) == (b"".join(rows), 2)
    wrapped = p.CommandComplete("SET").encode() + description + b"".join(rows) + p.CommandComplete("SELECT 2").encode() \
        + p.CommandComplete("RESET").encode() + p.ReadyForQuery("I").encode()
    again = split_reply(wrapped, True)
    assert again is not None and (again.rows, again.count) == (b"".join(rows), 2)
    error = p.error_response("22012", "division by zero", severity="ERROR").encode()
    failed = split_reply(description + rows[0] + error + p.ReadyForQuery("I").encode(), False)
    assert failed is not None and failed.error == error[5:]


def test_shard_texts_from_one_deparse_match_a_deparse_per_shard() -> None:
    """The per-shard texts are made from one deparse with markers for the table names; a statement that
    holds such a marker itself is deparsed per shard, with the same result shape."""
    found = plan('SELECT o.id FROM orders o JOIN "Mixed Case" m ON true JOIN countries c ON c.code = o.note '
                 "WHERE o.id > 1 ORDER BY o.id LIMIT 2")
    assert found is None  # not co-located: left to the coordinator (checked before any text is made)
    found = plan("SELECT count(*) FROM orders JOIN countries ON countries.code = orders.note")
    assert found is not None
    assert found.nodes[1].sql.split(" UNION ALL ")[1] == (
        "SELECT count(*) FROM public.orders_103 AS orders INNER JOIN public.countries AS countries "
        "ON countries.code = orders.note")
    marked = plan("SELECT count(*) FROM orders WHERE note <> 'pgfleet_table_0_x'")
    assert marked is not None
    assert marked.nodes[0].sql.split(" UNION ALL ")[1] == (
        "SELECT count(*) FROM public.orders_102 AS orders WHERE note <> 'pgfleet_table_0_x'")
    mixed = plan('SELECT count(*) FROM "Mixed Case" WHERE val > 1')
    assert mixed is not None and mixed.nodes[0].sql == (
        'SELECT count(*) FROM public."Mixed Case_400" AS "Mixed Case" WHERE val > 1 UNION ALL '
        'SELECT count(*) FROM public."Mixed Case_402" AS "Mixed Case" WHERE val > 1')
