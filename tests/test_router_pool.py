"""Worker connections are pooled per router process: more clients than the pool size share them (the
worker backends stay within the size), no session's settings, role or transaction reaches another, an
exhausted pool makes a session wait (then it runs, or it gets a clear error), a new primary empties a
node's pool."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from conftest import pgfleet_cli, routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.execute.connect import connect as connect_node
from pgfleet.router.analyze import Shard, analyze
from pgfleet.router.backend import WorkerLogin
from pgfleet.router.files import read_settings
from pgfleet.router.pool import WorkerPools
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from test_roles import drop_role

pytestmark = pytest.mark.cluster

APP, PASSWORD = "pgfleet_pool_app", "pool app pw"
ROUTER_BACKENDS = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgfleet router'"


@pytest.fixture
def data(fleet: Fleet, schema: str) -> Iterator[str]:
    """t (distributed by id, 4 shards; SELECT for the app role) and u (co-located, nothing for the app role)."""
    conn = fleet.conn()
    drop_role(fleet, APP)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP), sql.Literal(PASSWORD)))
    for name in ("t", "u"):
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, note text, at timestamptz)").format(
            sql.Identifier(name)))
        conn.execute(sql.SQL("INSERT INTO {} SELECT g, 'n' || g, '2024-01-01 00:00+00'::timestamptz + g * interval '1 hour' "
                             "FROM generate_series(1, 100) g").format(sql.Identifier(name)))
        fleet.distribute(DistributeSpec(QualifiedName(schema, name), "id", HashSpec(4)) if name == "t" else
                         DistributeSpec(QualifiedName(schema, name), "id", colocate_with=QualifiedName(schema, "t")))
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), sql.Identifier(APP)))
    conn.execute(sql.SQL("GRANT SELECT ON t TO {}").format(sql.Identifier(APP)))
    yield schema
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    drop_role(fleet, APP)


@pytest.fixture
def router(cluster: LocalCluster, data: str) -> Iterator[RouterServer]:
    with routing_router(cluster, pool_size=2, pool_timeout=30.0) as server:
        yield server


def connect(cluster: LocalCluster, port: int, schema: str, **params: Any) -> psycopg.Connection[Any]:
    info = dict(host="127.0.0.1", port=port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
                password=cluster.spec.coordinator.password, options=f"-c search_path={schema}")
    return psycopg.connect(**{"autocommit": True, **info, **params})  # type: ignore[arg-type]


def run(conn: psycopg.Connection[Any], statement: str) -> Any:
    cur = psycopg.ClientCursor(conn)  # simple protocol, as psql and pgbench -M simple
    cur.execute(statement)
    return cur.fetchall() if cur.description else cur.statusmessage


def node_of(router: RouterServer, schema: str, key: int) -> str:
    routing = router.config.routing
    assert routing is not None
    route = analyze(f"SELECT * FROM t WHERE id = {key}", routing.topology, search_path=(schema,))
    assert isinstance(route, Shard)
    return route.node


def router_backends(cluster: LocalCluster, node: str) -> int:
    with connect_node(cluster.endpoint(node), autocommit=True) as admin:
        row = admin.execute(ROUTER_BACKENDS).fetchone()
    assert row is not None
    return int(row[0])


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_more_clients_than_the_pool_share_its_connections(cluster: LocalCluster, router: RouterServer, data: str) -> None:
    """Eight clients (simple and extended protocol) run routed statements at once through a pool of two
    connections per worker: every answer is right, every statement ran on a worker, and no worker ever
    had more than two backends of the router."""
    clients, rounds = 8, 25
    workers = sorted({node_of(router, data, key) for key in range(1, 40)})
    assert len(workers) == 2
    stats = router.context.stats
    routed = stats.routed
    peak: dict[str, int] = dict.fromkeys(workers, 0)
    stop = threading.Event()
    failures: list[BaseException] = []

    def sample() -> None:
        admins = {node: connect_node(cluster.endpoint(node), autocommit=True) for node in workers}
        try:
            while not stop.is_set():
                for node, admin in admins.items():
                    row = admin.execute(ROUTER_BACKENDS).fetchone()
                    peak[node] = max(peak[node], int(row[0]) if row else 0)
                time.sleep(0.01)
        finally:
            for admin in admins.values():
                admin.close()

    def client(index: int) -> None:
        try:
            with connect(cluster, router.config.port, data) as conn:
                for i in range(rounds):
                    key = 1 + (index * rounds + i) % 100
                    if index % 2:
                        rows = conn.execute("SELECT id, note FROM t WHERE id = %s", (key,)).fetchall()
                    else:
                        rows = run(conn, f"SELECT id, note FROM t WHERE id = {key}")
                    assert rows == [(key, f"n{key}")]
        except BaseException as exc:
            failures.append(exc)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    sampler.join()
    assert not failures, failures[0]
    assert stats.routed == routed + clients * rounds
    assert stats.routing_fallbacks == 0
    assert all(1 <= peak[node] <= 2 for node in workers), peak
    assert all(router_backends(cluster, node) <= 2 for node in workers)
    pools = router.context.pools
    assert pools is not None
    status = pools.status()
    assert all(status[node]["size"] == 2 and status[node]["in_use"] == 0 and status[node]["waiting"] == 0
               and 1 <= status[node]["idle"] <= 2 for node in workers), status
    assert all(pools.node(node).opening == 0 for node in workers)


def test_a_session_setting_does_not_reach_another_session(cluster: LocalCluster, data: str) -> None:
    """One connection per worker: a session that started with another time zone, and one that SETs it,
    do not change what another session's routed statements return."""
    statement = "SELECT at::text FROM t WHERE id = 9"
    with routing_router(cluster, pool_size=1) as router:
        stats = router.context.stats
        node = node_of(router, data, 9)
        with connect(cluster, router.config.port, data) as plain, \
                connect(cluster, router.config.port, data, options=f"-c search_path={data} -c TimeZone=Asia/Tokyo") as tokyo, \
                connect(cluster, cluster.spec.coordinator.port, data) as direct:
            expected = run(direct, statement)
            assert expected != [("2024-01-01 18:00:00+09",)]
            for _ in range(3):  # the sessions take turns on the node's one connection
                routed = stats.routed
                assert run(plain, statement) == expected
                assert run(tokyo, statement) == [("2024-01-01 18:00:00+09",)]
                assert stats.routed == routed + 2
                assert router_backends(cluster, node) <= 1
                assert router.context.pools is not None
                pool = router.context.pools.node(node)
                assert (pool.total(), pool.in_use, pool.opening, pool.idle_count()) == (1, 0, 0, 1)
            run(plain, "SET TimeZone = 'America/New_York'")  # state: the session stays on the coordinator
            assert run(plain, statement) == [("2024-01-01 04:00:00-05",)]
            routed = stats.routed
            assert run(tokyo, statement) == [("2024-01-01 18:00:00+09",)]
            with connect(cluster, router.config.port, data) as other:
                assert run(other, statement) == expected
            assert stats.routed == routed + 2


def test_a_role_does_not_leak_to_the_next_session(cluster: LocalCluster, data: str) -> None:
    """A role's routed statements, refused ones included, run under SET ROLE on the shared connection; the
    next session on it runs as itself."""
    with routing_router(cluster, pool_size=1) as router:
        routing = router.config.routing
        assert routing is not None and routing.roles_current
        stats = router.context.stats
        superuser = cluster.spec.superuser
        with connect(cluster, router.config.port, data, user=APP, password=PASSWORD) as app, \
                connect(cluster, router.config.port, data) as admin:
            for _ in range(2):
                routed = stats.routed
                assert run(app, "SELECT current_user, note FROM t WHERE id = 5") == [(APP, "n5")]
                assert run(admin, "SELECT current_user, note FROM t WHERE id = 5") == [(superuser, "n5")]
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied for table u"):
                    run(app, "SELECT note FROM u WHERE id = 5")
                assert run(admin, "SELECT current_user, note FROM u WHERE id = 5") == [(superuser, "n5")]
                assert run(admin, "UPDATE u SET note = note WHERE id = 5 RETURNING current_user") == [(superuser,)]
                assert stats.routed == routed + 4  # the refused one is answered by the coordinator
            assert run(app, "SELECT current_user FROM t WHERE id = 7") == [(APP,)]
            with connect(cluster, router.config.port, data) as switched:  # SET ROLE: on the coordinator from now on
                run(switched, sql.SQL("SET ROLE {}").format(sql.Identifier(APP)).as_string(switched))
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    run(switched, "SELECT note FROM u WHERE id = 5")
                routed = stats.routed
                assert run(admin, "SELECT current_user, note FROM u WHERE id = 5") == [(superuser, "n5")]
                assert stats.routed == routed + 1


def test_a_transaction_left_open_or_failed_is_not_handed_on(cluster: LocalCluster, router: RouterServer,
                                                            data: str) -> None:
    """A session that ends inside a transaction on a worker (open, or failed) does not pass its connection
    on: the next session's autocommit statement commits on its own."""
    pools = router.context.pools
    assert pools is not None
    stats = router.context.stats
    for failed in (False, True):
        note = f"after {'failed' if failed else 'open'}"
        with connect(cluster, router.config.port, data) as left:
            run(left, "BEGIN")
            assert run(left, "UPDATE t SET note = 'uncommitted' WHERE id = 3 RETURNING id") == [(3,)]
            if failed:
                with pytest.raises(psycopg.errors.DivisionByZero):
                    run(left, "SELECT 1 / (id - id) FROM t WHERE id = 3")
            left.close()  # no COMMIT or ROLLBACK (leaving the with block would send one)
        # the client is gone without COMMIT or ROLLBACK: its worker connection is closed, not pooled
        with connect(cluster, router.config.port, data) as nxt:
            for _ in range(3):  # the pool hands every idle connection it has on
                routed = stats.routed
                assert run(nxt, f"UPDATE t SET note = '{note}' WHERE id = 3 RETURNING note") == [(note,)]
                assert stats.routed == routed + 1
        with connect(cluster, cluster.spec.coordinator.port, data) as direct:
            assert run(direct, "SELECT note FROM t WHERE id = 3") == [(note,)]


def test_an_exhausted_pool_waits_then_runs_or_times_out(cluster: LocalCluster, data: str) -> None:
    """With the node's one connection held by a transaction, another session waits for it (first come,
    first served) and runs when it is given back; past the pool's timeout it gets a clear error and its
    session goes on working."""
    with routing_router(cluster, pool_size=1, pool_timeout=3.0) as router:
        pools = router.context.pools
        assert pools is not None
        node = node_of(router, data, 5)
        statement = "SELECT note FROM t WHERE id = 5"
        with connect(cluster, router.config.port, data) as holder, connect(cluster, router.config.port, data) as waiter:
            run(holder, "BEGIN")
            assert run(holder, statement) == [("n5",)]  # the transaction holds the node's only connection
            assert pools.node(node).status()["in_use"] == 1
            with pytest.raises(psycopg.errors.TooManyConnections, match=f"no connection to worker {node} became free"):
                run(waiter, statement)
            result: list[Any] = []
            thread = threading.Thread(target=lambda: result.append(run(waiter, statement)))
            thread.start()
            wait_for(lambda: pools.node(node).status()["waiting"] == 1, "the session to wait for the pool")
            assert run(holder, "COMMIT") == "COMMIT"
            thread.join()
            assert result == [[("n5",)]]
            assert pools.node(node).status() == {"size": 1, "in_use": 0, "idle": 1, "waiting": 0}
            assert router_backends(cluster, node) == 1


def test_a_new_primary_empties_the_pool(cluster: LocalCluster, data: str) -> None:
    """When the login of a node names another server (what a failover does to cluster.json), its idle
    connections are closed and the next lease connects to the new one."""
    first, second = sorted(g for g in cluster.spec.groups if cluster.spec.primary_of(g).role == "worker")[:2]
    target = {"node": first}

    def login(node: str) -> WorkerLogin:
        ep = cluster.endpoint(target["node"])
        return WorkerLogin(ep.host, ep.port, ep.user, ep.password or "", ep.dbname)

    async def scenario() -> tuple[int, int]:
        pools = WorkerPools(login, size=2)
        pool = pools.node("w")
        conn = await pool.lease(())
        pool.release(conn, ())
        before = router_backends(cluster, first)
        target["node"] = second
        pools.follow_primaries()
        assert pool.status()["idle"] == 0 and conn.transport is not None and conn.transport.is_closing()
        moved = await pool.lease(())
        assert moved.address[1] == cluster.endpoint(second).port
        pool.release(moved, ())
        await asyncio.sleep(0.3)  # the old server sees the connection end
        after = router_backends(cluster, first)
        for idle in pool.idle.get((), []):
            idle.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before >= 1 and after == before - 1


def test_router_status_shows_the_pools(cluster: LocalCluster, data: str) -> None:
    """'pgfleet router start --pool-size' keeps the size; 'router status' shows each node's pool."""
    directory = cluster.directory
    assert pgfleet_cli("router", "start", "--pool-size", "0", directory=directory).returncode == 2  # refused by click
    started = pgfleet_cli("router", "start", "--route", "--processes", "1", "--pool-size", "3", directory=directory)
    try:
        assert started.returncode == 0, started.stderr
        settings = read_settings(directory)
        assert settings is not None and settings.pool_size == 3
        with psycopg.connect(started.stdout.strip(), autocommit=True, options=f"-c search_path={data}") as conn:
            assert run(conn, "SELECT note FROM t WHERE id = 5") == [("n5",)]
            deadline = time.monotonic() + 30
            while True:  # the status file is refreshed every second
                state = json.loads(pgfleet_cli("router", "status", "--json", directory=directory).stdout)
                if state.get("pools") or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        assert state["routed"] == 1
        [(node, figures)] = state["pools"].items()
        assert figures == {"size": 3, "in_use": 0, "idle": 1, "waiting": 0} and state["worker_connections"] == 1
        table = pgfleet_cli("router", "status", directory=directory).stdout
        assert "pool size" in table and node in table
    finally:
        pgfleet_cli("router", "stop", directory=directory)


def test_an_extended_protocol_transaction_holds_its_connection_until_it_ends(cluster: LocalCluster, router: RouterServer,
                                                                            data: str) -> None:
    """psycopg's own transactions (extended protocol): the session holds its worker connection from the
    transaction's first routed statement to COMMIT, then gives it back clean."""
    pools = router.context.pools
    assert pools is not None
    node = node_of(router, data, 5)
    stats = router.context.stats
    with connect(cluster, router.config.port, data, autocommit=False) as conn:
        routed = stats.routed
        assert conn.execute("SELECT note FROM t WHERE id = %s", (5,)).fetchall() == [("n5",)]
        assert conn.execute("UPDATE t SET note = %s WHERE id = %s RETURNING note", ("x5", 5)).fetchall() == [("x5",)]
        assert stats.routed == routed + 2
        assert pools.node(node).status()["in_use"] == 1  # held by the open transaction
        conn.commit()
        assert pools.node(node).status()["in_use"] == 0 and pools.node(node).status()["idle"] >= 1
        assert conn.execute("SELECT note FROM t WHERE id = %s", (5,)).fetchall() == [("x5",)]
        conn.rollback()
    assert pools.node(node).status()["in_use"] == 0
