"""Transactions through the router (simple protocol): on one worker directly, on several with two-phase
commit, with the semantics of one server (failed transactions, savepoints, refusals)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from conftest import connect
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.node.ports import claim_ports, release_ports
from pgfleet.pgbench import pgbench_numbers
from pgfleet.proc import run as run_proc
from pgfleet.router.analyze import Shard
from pgfleet.router.process import local_routing
from pgfleet.router.routing import decide
from pgfleet.router.server import RouterConfig, RouterServer, serve_in_thread
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName

pytestmark = pytest.mark.cluster

ACCOUNTS = 40
BALANCE = 100


@pytest.fixture
def accounts(fleet: Fleet, schema: str) -> str:
    conn = fleet.conn()
    conn.execute("CREATE TABLE acct (id bigint PRIMARY KEY, balance bigint NOT NULL, note text)")
    conn.execute(f"INSERT INTO acct SELECT g, {BALANCE}, '' FROM generate_series(1, {ACCOUNTS}) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "acct"), "id", HashSpec(4)))
    return schema


@contextlib.contextmanager
def routing_router(cluster: LocalCluster, recovery_min_age: float = 1.0) -> Iterator[RouterServer]:
    """A router in a thread whose recovery passes run every half second."""
    [port] = claim_ports(1, cluster.directory, start=6700)
    upstream = ("127.0.0.1", cluster.spec.coordinator.port)
    config = RouterConfig(port=port, upstream=lambda: upstream, routing=local_routing(cluster),
                          recovery_interval=0.5, recovery_min_age=recovery_min_age)
    try:
        with serve_in_thread(config) as server:
            yield server
    finally:
        release_ports([port], cluster.directory)


@pytest.fixture
def router(cluster: LocalCluster, accounts: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        yield server


def run(conn: psycopg.Connection[Any], statement: str) -> list[tuple[Any, ...]] | None:
    cur = psycopg.ClientCursor(conn)  # simple protocol, as psql and pgbench -M simple
    cur.execute(statement)
    return cur.fetchall() if cur.description else None


def node_of(router: RouterServer, schema: str, key: int) -> str:
    routing = router.context.routing
    assert routing is not None
    route = decide(f"SELECT * FROM acct WHERE id = {key}", routing.topology, (schema, "public")).route
    assert isinstance(route, Shard)
    return route.node


def keys_by_node(router: RouterServer, schema: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for key in range(1, ACCOUNTS + 1):
        out.setdefault(node_of(router, schema, key), []).append(key)
    assert len(out) == 2, out
    return out


def balance(conn: psycopg.Connection[Any], key: int) -> int:
    rows = run(conn, f"SELECT balance FROM acct WHERE id = {key}")
    assert rows is not None
    return int(rows[0][0])


def test_one_worker_commit_and_rollback(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    stats = router.context.stats
    a, b = keys_by_node(router, accounts)[node_of(router, accounts, 1)][:2]
    with connect(cluster, router.config.port, accounts) as conn, \
            connect(cluster, cluster.spec.coordinator.port, accounts) as direct:
        run(conn, "BEGIN")
        run(conn, f"UPDATE acct SET balance = balance - 10 WHERE id = {a}")
        run(conn, f"UPDATE acct SET balance = balance + 10 WHERE id = {b}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert balance(direct, a) == BALANCE  # not visible before COMMIT
        run(conn, "COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert (balance(direct, a), balance(direct, b)) == (BALANCE - 10, BALANCE + 10)
        run(conn, "START TRANSACTION READ WRITE")
        run(conn, f"UPDATE acct SET balance = 0 WHERE id = {a}")
        assert balance(conn, a) == 0  # the transaction sees its own write
        run(conn, "ROLLBACK")
        assert balance(direct, a) == BALANCE - 10
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(f"{d.sqlstate} {d.message_primary}"))
        run(conn, "ROLLBACK")  # no transaction: the server's warning, and the session is not pinned
        run(conn, "BEGIN")
        run(conn, "BEGIN")
        run(conn, "COMMIT")
        assert notices == ["25P01 there is no transaction in progress", "25001 there is already a transaction in progress"]
    assert stats.worker_transactions == 2 and stats.two_phase_commits == 0 and stats.coordinator_transactions == 0
    assert stats.pinned_sessions == 0


def test_a_large_statement_in_a_transaction(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    """A Query longer than one read reaches the router in pieces: inside a transaction it is routed whole."""
    with connect(cluster, router.config.port, accounts) as conn, \
            connect(cluster, cluster.spec.coordinator.port, accounts) as direct:
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET note = 'small' WHERE id = 1")
        run(conn, f"UPDATE acct SET note = '{'x' * 300_000}' WHERE id = 1")
        run(conn, "COMMIT")
        assert run(direct, "SELECT length(note) FROM acct WHERE id = 1") == [(300_000,)]
    assert router.context.stats.worker_transactions == 1 and router.context.stats.pinned_sessions == 0


def test_isolation_level_is_the_clients(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    """READ COMMITTED sees a commit made between two statements; REPEATABLE READ does not."""
    key = 3
    with connect(cluster, router.config.port, accounts) as conn, \
            connect(cluster, cluster.spec.coordinator.port, accounts) as other:
        seen = {}
        for level in ("READ COMMITTED", "REPEATABLE READ"):
            run(conn, f"BEGIN ISOLATION LEVEL {level}")
            first = balance(conn, key)
            run(other, f"UPDATE acct SET balance = balance + 1 WHERE id = {key}")
            seen[level] = balance(conn, key) - first
            run(conn, "COMMIT")
        assert seen == {"READ COMMITTED": 1, "REPEATABLE READ": 0}
        run(conn, "BEGIN")  # SET TRANSACTION before the first statement counts
        run(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        first = balance(conn, key)
        run(other, f"UPDATE acct SET balance = balance + 1 WHERE id = {key}")
        assert balance(conn, key) == first
        run(conn, "COMMIT")
        run(conn, "BEGIN READ ONLY")
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            run(conn, f"UPDATE acct SET balance = 0 WHERE id = {key}")
        run(conn, "ROLLBACK")
    # the session's default from its start-up options applies to a plain BEGIN
    with psycopg.connect(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname,
                         user=cluster.spec.superuser, password=cluster.spec.coordinator.password, autocommit=True,
                         options=f"-c search_path={accounts},public -c default_transaction_isolation=repeatable\\ read"
                         ) as conn, connect(cluster, cluster.spec.coordinator.port, accounts) as other:
        run(conn, "BEGIN")
        first = balance(conn, key)
        run(other, f"UPDATE acct SET balance = balance + 1 WHERE id = {key}")
        assert balance(conn, key) == first
        run(conn, "COMMIT")
        assert balance(conn, key) == first + 1
    assert router.context.stats.worker_transactions == 5 and router.context.stats.pinned_sessions == 0


def test_failed_transaction_and_savepoints(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    by_node = keys_by_node(router, accounts)
    here, there = (keys[0] for keys in by_node.values())
    with connect(cluster, router.config.port, accounts) as conn, \
            connect(cluster, cluster.spec.coordinator.port, accounts) as direct:
        run(conn, "BEGIN")
        run(conn, f"UPDATE acct SET balance = balance + 1 WHERE id = {here}")
        run(conn, "SAVEPOINT s1")
        run(conn, f"UPDATE acct SET balance = balance + 100 WHERE id = {here}")
        with pytest.raises(psycopg.errors.DivisionByZero):
            run(conn, f"SELECT 1 / 0 FROM acct WHERE id = {here}")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            run(conn, f"SELECT balance FROM acct WHERE id = {there}")
        run(conn, "ROLLBACK TO SAVEPOINT s1")
        assert balance(conn, here) == BALANCE + 1
        run(conn, f"UPDATE acct SET balance = balance + 5 WHERE id = {there}")  # joins a second worker, replays s1
        run(conn, "SAVEPOINT s2")
        run(conn, f"UPDATE acct SET balance = balance + 1000 WHERE id = {there}")
        run(conn, "ROLLBACK TO s1")  # on both workers
        assert balance(conn, there) == BALANCE
        with pytest.raises(psycopg.errors.InvalidSavepointSpecification):
            run(conn, "RELEASE s2")  # rolled back with s1's rollback
        run(conn, "ROLLBACK TO s1")
        run(conn, f"UPDATE acct SET balance = balance + 7 WHERE id = {there}")
        run(conn, "RELEASE SAVEPOINT s1")
        run(conn, "COMMIT")
        assert (balance(direct, here), balance(direct, there)) == (BALANCE + 1, BALANCE + 7)
        # COMMIT of a failed transaction answers ROLLBACK and undoes everything
        run(conn, "BEGIN")
        run(conn, f"UPDATE acct SET balance = 0 WHERE id = {here}")
        with pytest.raises(psycopg.errors.UniqueViolation):
            run(conn, f"INSERT INTO acct VALUES ({here}, 1)")
        cur = psycopg.ClientCursor(conn)
        cur.execute("COMMIT")
        assert cur.statusmessage == "ROLLBACK"
        assert balance(direct, here) == BALANCE + 1


COORDINATOR_SUM = "WITH s AS (SELECT sum(balance) AS total FROM acct) SELECT total FROM s"  # not scattered


def test_coordinator_statement_after_worker_write_is_refused(cluster: LocalCluster, router: RouterServer,
                                                             accounts: str) -> None:
    with connect(cluster, router.config.port, accounts) as conn, \
            connect(cluster, cluster.spec.coordinator.port, accounts) as direct:
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = balance - 1 WHERE id = 5")
        with pytest.raises(psycopg.errors.FeatureNotSupported) as caught:
            run(conn, COORDINATOR_SUM)  # a shape the router does not scatter
        assert "needs the coordinator" in str(caught.value) and caught.value.diag.message_hint
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            run(conn, "SELECT balance FROM acct WHERE id = 5")
        run(conn, "ROLLBACK")
        assert balance(direct, 5) == BALANCE
        # a transaction whose first statement needs the coordinator runs there, all of it
        run(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        rows = run(conn, COORDINATOR_SUM)
        assert rows == [(ACCOUNTS * BALANCE,)]
        run(conn, "UPDATE acct SET balance = balance - 1 WHERE id = 5")
        run(direct, "UPDATE acct SET balance = balance + 1 WHERE id = 6")
        assert run(conn, COORDINATOR_SUM) == [(ACCOUNTS * BALANCE - 1,)]  # its snapshot
        run(conn, "COMMIT")
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert balance(direct, 5) == BALANCE - 1
        routed = router.context.stats.routed
        assert balance(conn, 5) == BALANCE - 1  # back to routing after the coordinator's transaction
        assert router.context.stats.routed == routed + 1
        # only plain SELECTs on a worker so far: in READ COMMITTED the transaction moves to the coordinator
        run(conn, "BEGIN")
        assert balance(conn, 5) == BALANCE - 1
        run(conn, "SAVEPOINT before_sum")
        assert run(conn, COORDINATOR_SUM) == [(ACCOUNTS * BALANCE,)]
        run(conn, "UPDATE acct SET balance = balance + 1 WHERE id = 5")
        run(conn, "ROLLBACK TO SAVEPOINT before_sum")  # the savepoint was replayed on the coordinator
        run(conn, "UPDATE acct SET balance = balance + 2 WHERE id = 5")
        run(conn, "COMMIT")
        assert balance(direct, 5) == BALANCE + 1
        # in REPEATABLE READ the snapshot is the worker's: refused
        run(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ")
        assert balance(conn, 5) == BALANCE + 1
        assert run(conn, "SELECT sum(balance) FROM acct") == [(ACCOUNTS * BALANCE + 2,)]  # scattered (id 6 got +1)
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="snapshot"):
            run(conn, COORDINATOR_SUM)
        run(conn, "ROLLBACK")
        assert router.context.stats.coordinator_transactions == 2 and router.context.stats.pinned_sessions == 0
        # a statement that may change session state moves the transaction too, and pins the session
        run(conn, "BEGIN")
        assert balance(conn, 5) == BALANCE + 1
        run(conn, "SET LOCAL work_mem = '8MB'")
        assert run(conn, "SHOW work_mem") == [("8MB",)]
        run(conn, "COMMIT")
    assert router.context.stats.coordinator_transactions == 3 and router.context.stats.pinned_sessions == 1


def test_extended_protocol_in_a_transaction(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    """Simple and extended-protocol statements mix in one transaction on a worker (the ORM path, more in
    test_router_orm.py): the bound statement sees the transaction's write, and ROLLBACK undoes both."""
    info = dict(host="127.0.0.1", port=router.config.port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
                password=cluster.spec.coordinator.password, options=f"-c search_path={accounts},public")
    with psycopg.connect(**info) as conn:  # type: ignore[arg-type]  # psycopg's own BEGIN, then bound parameters
        conn.execute("UPDATE acct SET balance = balance + 1 WHERE id = %s", (8,))
        conn.commit()
    stats = router.context.stats
    assert (stats.worker_transactions, stats.coordinator_transactions) == (1, 0)
    with connect(cluster, router.config.port, accounts) as conn:
        run(conn, "BEGIN")
        run(conn, "UPDATE acct SET balance = 0 WHERE id = 8")
        assert conn.execute("SELECT balance FROM acct WHERE id = %s", (8,)).fetchone() == (0,)
        assert conn.execute("UPDATE acct SET balance = balance + %s WHERE id = %s", (5, 8)).rowcount == 1
        assert balance(conn, 8) == 5
        run(conn, "ROLLBACK")
        assert balance(conn, 8) == BALANCE + 1
    assert (stats.worker_transactions, stats.coordinator_transactions) == (2, 0)


def test_two_phase_transfer_is_atomic(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    by_node = keys_by_node(router, accounts)
    here, there = (keys[0] for keys in by_node.values())
    with connect(cluster, router.config.port, accounts) as conn, \
            connect(cluster, cluster.spec.coordinator.port, accounts) as direct:
        run(conn, "BEGIN")
        run(conn, f"UPDATE acct SET balance = balance - 30 WHERE id = {here}")
        run(conn, f"UPDATE acct SET balance = balance + 30 WHERE id = {there}")
        run(conn, "COMMIT")
        assert (balance(direct, here), balance(direct, there)) == (BALANCE - 30, BALANCE + 30)
        assert router.context.stats.two_phase_commits == 1
        # a PREPARE that fails (a deferred constraint on one worker) rolls back both
        run(conn, "BEGIN")
        run(conn, f"UPDATE acct SET balance = balance - 30 WHERE id = {here}")
        run(conn, f"UPDATE acct SET balance = balance + 30 WHERE id = {there}")
        run(conn, "ROLLBACK")
        assert (balance(direct, here), balance(direct, there)) == (BALANCE - 30, BALANCE + 30)
        assert direct.execute("SELECT count(*) FROM pgfleet.commit_decisions").fetchone() is not None


def test_ledger_from_several_clients(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    """Transfers between random accounts from several clients: the total is conserved, nothing prepared."""
    import random

    errors: list[BaseException] = []

    def client(seed: int) -> None:
        rnd = random.Random(seed)
        try:
            with connect(cluster, router.config.port, accounts) as conn:
                for _ in range(25):
                    a, b = sorted(rnd.sample(range(1, ACCOUNTS + 1), 2))  # a fixed lock order: no deadlocks
                    amount = rnd.randint(1, 20)
                    run(conn, "BEGIN")
                    run(conn, f"UPDATE acct SET balance = balance - {amount} WHERE id = {a}")
                    run(conn, f"UPDATE acct SET balance = balance + {amount} WHERE id = {b}")
                    run(conn, "COMMIT")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)  # (a loaded 2-core machine: 100 two-phase commits take a while)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads), "clients still running after 180 s"
    with connect(cluster, cluster.spec.coordinator.port, accounts) as direct:
        assert run(direct, "SELECT sum(balance), count(*) FROM acct") == [(ACCOUNTS * BALANCE, ACCOUNTS)]
    assert router.context.stats.two_phase_commits > 10
    assert prepared_everywhere(cluster) == 0


def prepared_everywhere(cluster: LocalCluster) -> int:
    total = 0
    for node in ("w1", "w2"):
        ep = cluster.endpoint(node)
        with psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname) as conn:
            row = conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()
            total += row[0] if row else 0
    return total


def test_pgbench_tpcb_through_the_router(cluster: LocalCluster, fleet: Fleet, router: RouterServer) -> None:
    """pgbench TPC-B-like, the four tables distributed, -M simple, 4 clients: no failed transaction
    (READ COMMITTED stays READ COMMITTED on the workers), every transaction on workers, balances add up."""
    pgbench = [cluster.binaries.path("pgbench"), "-h", "127.0.0.1", "-U", cluster.spec.superuser]
    env = {"PGPASSWORD": cluster.spec.coordinator.password, "PGDATABASE": cluster.spec.dbname}
    conn = fleet.conn()
    conn.execute("DROP TABLE IF EXISTS public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers, "
                 "public.pgbench_history")
    run_proc([*pgbench, "-p", str(cluster.spec.coordinator.port), "-i", "-q", "-s", "2"], env=env, timeout=120,
             what="pgbench -i")
    try:
        for table, key in (("accounts", "aid"), ("history", "aid"), ("branches", "bid"), ("tellers", "tid")):
            fleet.distribute(DistributeSpec(QualifiedName("public", f"pgbench_{table}"), key, HashSpec(4)))
        time.sleep(2.5)  # the router reads the catalog every 2 s
        router.context.routing.refresh()  # type: ignore[union-attr]
        out = run_proc([*pgbench, "-p", str(router.config.port), "-n", "-M", "simple", "-c", "4", "-j", "2", "-T", "4"],
                       env=env, timeout=120, what="pgbench").stdout
        numbers = pgbench_numbers(out)
        assert numbers["transactions"] > 50, out
        assert numbers.get("failed", 0) == 0, out
        stats = router.context.stats
        assert stats.coordinator_transactions == 0  # (pgbench's own start-up query pins its first session)
        assert stats.worker_transactions + stats.two_phase_commits >= numbers["transactions"]
        assert stats.two_phase_commits > 0
        sums = conn.execute("SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM "
                            "pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(delta) "
                            "FROM pgbench_history), (SELECT count(*) FROM pgbench_history)").fetchone()
        assert sums is not None and sums[0] == sums[1] == sums[2] == sums[3] and sums[4] >= numbers["transactions"]
        assert prepared_everywhere(cluster) == 0
    finally:
        conn.execute("DROP TABLE IF EXISTS public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers, "
                     "public.pgbench_history")


def test_ddl_after_reads_in_a_transaction_commits(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    """Through the coordinator, ALTER TABLE after reading the table in the same transaction waits for the
    transaction's own postgres_fdw locks and fails with 55P03 (README, Limits). Through the router the reads
    ran on pooled worker connections in READ COMMITTED: the transaction moves to the coordinator at the ALTER,
    the workers' parts ended, and it commits."""
    with connect(cluster, router.config.port, accounts) as conn, \
            connect(cluster, cluster.spec.coordinator.port, accounts) as direct:
        run(conn, "BEGIN")
        assert balance(conn, 5) == BALANCE
        assert run(conn, "SELECT count(*) FROM acct") == [(ACCOUNTS,)]  # every shard, scattered
        run(conn, "ALTER TABLE acct ADD COLUMN flag int DEFAULT 1")
        run(conn, "COMMIT")
        assert run(direct, "SELECT flag FROM acct WHERE id = 5") == [(1,)]
