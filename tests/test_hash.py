"""The shard rule's hash arithmetic agrees with PostgreSQL's own hash partitioning."""

import pytest
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.plan.tables import hash_remainder_expr
from pgfleet.topology.read import hash_function


@pytest.mark.parametrize(("type_name", "values"), [
    ("bigint", "SELECT g::bigint FROM generate_series(-50000, 50000) g"),
    ("integer", "SELECT g::int FROM generate_series(-20000, 20000) g"),
    ("text", "SELECT md5(g::text) FROM generate_series(1, 20000) g"),
    ("character varying", "SELECT ('k' || g)::varchar FROM generate_series(1, 20000) g"),
    ("uuid", "SELECT md5(g::text)::uuid FROM generate_series(1, 20000) g"),
    ("numeric", "SELECT (g / 7.0)::numeric FROM generate_series(1, 20000) g"),
])
@pytest.mark.parametrize("modulus", [1, 7, 8, 64, 1000])
def test_rule_matches_satisfies_hash_partition(fleet: Fleet, schema: str, type_name: str, values: str,
                                                modulus: int) -> None:
    conn = fleet.conn()
    conn.execute(sql.SQL("CREATE TABLE hp (k {}) PARTITION BY HASH (k)").format(sql.SQL(type_name)))
    fn = hash_function(conn, type_name)
    expr = hash_remainder_expr(sql.Identifier("v"), fn, modulus)
    row = conn.execute(sql.SQL(
        "SELECT count(*), count(*) FILTER (WHERE satisfies_hash_partition('hp'::regclass, {m}, ({e})::int, v)) "
        "FROM ({values}) AS s(v)").format(m=sql.Literal(modulus), e=expr, values=sql.SQL(values))).fetchone()
    assert row is not None
    assert row[0] > 0 and row[0] == row[1]
