"""VACUUM and ANALYZE of distributed and reference tables act on their shards: the per-node plan (pure,
also what the router will intercept) and `pgfleet vacuum` / `pgfleet analyze` on real servers."""

from __future__ import annotations

import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.vacuum import maintain
from pgfleet.errors import SpecError
from pgfleet.plan.vacuum import Maintenance
from pgfleet.router.vacuum import intercept
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName, ReferenceSpec
from conftest import pgfleet_cli, shard_rows
from test_router_analyze import COUNTRIES, ORDERS, TOPOLOGY


def rendered(statement: str) -> tuple[list[tuple[str, str]], list[str]] | None:
    plan = intercept(statement, TOPOLOGY, ("public",), temp_names=frozenset({"scratch"}))
    if plan is None:
        return None
    return [(node, s.as_string()) for node, s in plan.workers], [s.as_string() for s in plan.coordinator]


def test_vacuum_of_a_distributed_table_becomes_one_per_shard() -> None:
    plan = rendered("VACUUM orders")
    assert plan == ([(s.node, f'VACUUM "public"."{s.shard_table}"') for s in ORDERS.shards], [])
    plan = rendered("vacuum (full, analyze, parallel 2) public.orders (id, amount)")
    assert plan is not None
    assert plan[0][0] == ("w1", "VACUUM (FULL, ANALYZE, PARALLEL '2') \"public\".\"orders_100\" (\"id\", \"amount\")")
    assert plan[1] == ['ANALYZE "public"."orders" ("id", "amount")']  # statistics of the parent after its shards


def test_analyze_and_reference_tables() -> None:
    plan = rendered("ANALYZE VERBOSE countries, orders")
    assert plan is not None
    workers, coordinator = plan
    assert workers[:2] == [("w1", 'ANALYZE (VERBOSE) "public"."countries"'), ("w2", 'ANALYZE (VERBOSE) "public"."countries"')]
    assert len(workers) == len(COUNTRIES.shards) + len(ORDERS.shards)
    assert coordinator == ['ANALYZE (VERBOSE) "public"."countries"', 'ANALYZE (VERBOSE) "public"."orders"']
    assert rendered("VACUUM countries") == ([(s.node, 'VACUUM "public"."countries"') for s in COUNTRIES.shards],
                                            ['VACUUM "public"."countries"'])  # the coordinator's own table too


@pytest.mark.parametrize("statement", [
    "VACUUM", "ANALYZE", "VACUUM local_t", "VACUUM orders, local_t", "VACUUM scratch", "VACUUM other.orders",
    "VACUUM (NO_SUCH_OPTION) orders", "SELECT 1", "VACUUM orders; VACUUM orders",
])
def test_what_the_coordinator_keeps(statement: str) -> None:
    assert rendered(statement) is None


def test_options_are_checked() -> None:
    with pytest.raises(SpecError, match="ANALYZE option 'full' is not known here"):
        Maintenance(vacuum=False, options=(("full", None),))
    with pytest.raises(SpecError, match="option full takes true or false"):
        Maintenance(options=(("full", "1; DROP TABLE x"),))


def _shard_stats(fleet: Fleet, table: QualifiedName) -> set[tuple[object, ...]]:
    """(vacuumed, analyzed, dead tuples) of every shard of ``table``."""
    return shard_rows(fleet, table, "SELECT last_vacuum IS NOT NULL, last_analyze IS NOT NULL, n_dead_tup "
                                    "FROM pg_stat_user_tables WHERE relid = %(shard)s::regclass")


def test_vacuum_reaches_every_shard_without_warnings(fleet: Fleet, schema: str) -> None:
    conn = fleet.conn()
    conn.execute("CREATE TABLE v (id bigint PRIMARY KEY, pad text)")
    conn.execute("INSERT INTO v SELECT g, repeat('x', 50) FROM generate_series(1, 2000) g")
    conn.execute("CREATE TABLE r (id int PRIMARY KEY)")
    name, ref = QualifiedName(schema, "v"), QualifiedName(schema, "r")
    fleet.distribute(DistributeSpec(name, "id", HashSpec(4)))
    fleet.reference(ReferenceSpec(ref))
    conn.execute("DELETE FROM v WHERE id % 2 = 0")
    assert {s[0] for s in _shard_stats(fleet, name)} == {False}
    assert fleet.local is not None
    done = pgfleet_cli("vacuum", "--analyze", f"{schema}.v", f"{schema}.r", directory=fleet.local.directory)
    assert done.returncode == 0, done.stderr
    assert f"vacuumed {schema}.v, {schema}.r" in done.stdout and "skipping" not in done.stdout + done.stderr
    assert _shard_stats(fleet, name) == {(True, True, 0)}
    assert _shard_stats(fleet, ref) == {(True, True, 0)}
    with pytest.raises(SpecError, match=f"{schema}.plain is neither distributed nor a reference table"):
        conn.execute("CREATE TABLE plain (id int)")
        maintain(fleet, Maintenance(), [QualifiedName(schema, "plain")])
