"""A differential test of the router (hypothesis): random single- and multi-shard statements and short
transactions on a distributed table, by key and not by key, in both protocols, through the router; the
same against one plain table with the same rows on the coordinator. Same results (rows, command tags,
SQLSTATEs, transaction status) and the same final contents.

The one documented difference is a refusal: a statement that needs the coordinator after the transaction
wrote on a worker gets 0A000 from the router (its transaction fails, nothing stale is read). The plain
side then fails its transaction too (a division by zero), both are recorded as "refused", and the
statements after it must agree again (25P02)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from psycopg import sql

from conftest import routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from test_router_logical import plain_twin
from test_router_txn import connect

pytestmark = pytest.mark.cluster

ROWS = 30
KEYS = st.integers(1, ROWS + 10)
VALUES = st.integers(-5, 20)

Statement = tuple[str, tuple[Any, ...]]

STATEMENTS: list[st.SearchStrategy[Statement]] = [
    st.tuples(st.just("SELECT id, v, note FROM d WHERE id = %s"), st.tuples(KEYS)),
    st.tuples(st.just("SELECT id, v FROM d WHERE id IN (%s, %s) ORDER BY id"), st.tuples(KEYS, KEYS)),
    st.tuples(st.just("SELECT count(*), sum(v), max(note) FROM d WHERE v > %s"), st.tuples(VALUES)),
    st.tuples(st.just("SELECT id, v FROM d WHERE v = %s ORDER BY id"), st.tuples(VALUES)),
    st.tuples(st.just("INSERT INTO d (id, v, note) VALUES (%s, %s, 'new') RETURNING id, v, note"), st.tuples(KEYS, VALUES)),
    st.tuples(st.just("INSERT INTO d (id, v, note) VALUES (%s, %s, 'nc') ON CONFLICT DO NOTHING"), st.tuples(KEYS, VALUES)),
    st.tuples(st.just("UPDATE d SET v = v + %s WHERE id = %s RETURNING v"), st.tuples(VALUES, KEYS)),
    st.tuples(st.just("UPDATE d SET note = note || '+' WHERE id = %s"), st.tuples(KEYS)),
    st.tuples(st.just("UPDATE d SET v = v + 1 WHERE v < %s"), st.tuples(VALUES)),
    st.tuples(st.just("DELETE FROM d WHERE id = %s RETURNING id"), st.tuples(KEYS)),
    st.tuples(st.just("DELETE FROM d WHERE v = %s"), st.tuples(VALUES)),
    st.tuples(st.just("SELECT 1 / (v - %s) FROM d WHERE id = %s"), st.tuples(VALUES, KEYS)),  # may fail: 22012
]

STEP = st.tuples(st.one_of(STATEMENTS), st.booleans())  # (statement, with server-side parameters)
TRANSACTION = st.tuples(st.lists(STEP, min_size=1, max_size=4), st.sampled_from(["COMMIT", "ROLLBACK"]))
STORY = st.lists(st.one_of(STEP, TRANSACTION), min_size=1, max_size=5)


@pytest.fixture
def tables(fleet: Fleet, schema: str) -> Iterator[tuple[str, str]]:
    """``d`` distributed (4 shards) in ``schema``, a plain ``d`` with the same rows in ``<schema>_plain``."""
    conn = fleet.conn()
    with plain_twin(conn, schema) as plain:
        for name in (schema, plain):
            conn.execute(sql.SQL("CREATE TABLE {}.d (id bigint PRIMARY KEY, v int NOT NULL, note text)")
                         .format(sql.Identifier(name)))
        fleet.distribute(DistributeSpec(QualifiedName(schema, "d"), "id", HashSpec(4)))
        yield schema, plain


@pytest.fixture
def router(cluster: LocalCluster, tables: tuple[str, str]) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def outcome(conn: psycopg.Connection[Any], statement: Statement, server_side: bool) -> tuple[Any, ...]:
    text, params = statement
    cur = conn.cursor() if server_side else psycopg.ClientCursor(conn)
    try:
        cur.execute(text, params)
    except psycopg.Error as exc:
        return ("error", exc.sqlstate, conn.info.transaction_status)
    rows = sorted(cur.fetchall()) if cur.description else None
    return (rows, cur.statusmessage, conn.info.transaction_status)


def refused(result: tuple[Any, ...]) -> bool:
    return result[:2] == ("error", "0A000")


def play(via_router: psycopg.Connection[Any], plain: psycopg.Connection[Any],
         story: list[Any]) -> list[tuple[Any, ...]]:
    """Run the story on both sides; the results, with the router's refusals mirrored on the plain side."""
    results: list[tuple[Any, ...]] = []

    def step(statement: Statement, server_side: bool) -> None:
        got = outcome(via_router, statement, server_side)
        if refused(got):
            expected = outcome(plain, ("SELECT 1 / 0", ()), False)  # fail the plain side's transaction as well
            assert expected[:2] == ("error", "22012")
            results.append(("refused", got[2]))
            assert expected[2] == got[2]
            return
        expected = outcome(plain, statement, server_side)
        assert got == expected, statement
        results.append(got)

    for item in story:
        if isinstance(item[0], list):  # a transaction
            steps, end = item
            for conn in (via_router, plain):
                psycopg.ClientCursor(conn).execute("BEGIN")
            for statement, server_side in steps:
                step(statement, server_side)
            for conn in (via_router, plain):
                psycopg.ClientCursor(conn).execute(end)
            assert via_router.info.transaction_status == plain.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        else:
            step(*item)
    return results


def test_router_matches_one_plain_table(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                        tables: tuple[str, str]) -> None:
    schema, plain_schema = tables
    stats = router.context.stats
    reset = fleet.conn()
    names = [sql.Identifier(s, "d") for s in (schema, plain_schema)]
    seen: dict[str, int] = {"examples": 0, "refused": 0}

    with connect(cluster, router.config.port, schema) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, plain_schema) as plain:

        # no shrinking: each example costs round trips to real servers; a failure shows its story as found
        @settings(max_examples=60, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
        @given(story=STORY)
        def check(story: list[Any]) -> None:
            for name in names:
                reset.execute(sql.SQL("DELETE FROM {}").format(name))
                reset.execute(sql.SQL("INSERT INTO {} SELECT g, g % 7, 'n' || g FROM generate_series(1, {}) g")
                              .format(name, sql.Literal(ROWS)))
            results = play(via_router, plain, story)
            seen["examples"] += 1
            seen["refused"] += sum(1 for r in results if r[0] == "refused")
            contents = [reset.execute(sql.SQL("SELECT id, v, note FROM {} ORDER BY id").format(name)).fetchall()
                        for name in names]
            assert contents[0] == contents[1]

        check()
    assert seen["examples"] >= 30
    assert stats.routed > 50  # most statements by key went straight to a worker
    assert stats.pinned_sessions == 0
