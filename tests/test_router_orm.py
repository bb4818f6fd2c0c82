"""The ORM path through the router: BEGIN (a Query, or a prepared statement) then Parse/Bind/Execute/Sync
with $n values, as a non-superuser role. Autocommit batches of any role run on the worker under that
role; batches in a transaction are statements of the router's transaction (on one worker, or on several
with two-phase commit); the results are those of the coordinator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.types import TypeInfo

from conftest import routing_router
from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.pgbench import pgbench_numbers
from pgfleet.proc import run as run_proc
from pgfleet.router import protocol as p
from pgfleet.router import wire
from pgfleet.router.backend import WorkerConnection, WorkerLogin
from pgfleet.router.server import RouterServer
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from test_roles import drop_role
from test_router_txn import ACCOUNTS, BALANCE, keys_by_node, prepared_everywhere

pytestmark = pytest.mark.cluster

APP, PASSWORD = "pgfleet_test_orm", "orm pw 1"


@pytest.fixture
def accounts(fleet: Fleet, schema: str) -> Iterator[str]:
    """acct (distributed, 4 shards on 2 workers): SELECT, INSERT and UPDATE (balance) for APP, not note."""
    conn = fleet.conn()
    drop_role(fleet, APP)
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(APP), sql.Literal(PASSWORD)))
    conn.execute("CREATE TABLE acct (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0), note text)")
    conn.execute(f"INSERT INTO acct SELECT g, {BALANCE}, '' FROM generate_series(1, {ACCOUNTS}) g")
    fleet.distribute(DistributeSpec(QualifiedName(schema, "acct"), "id", HashSpec(4)))
    app = sql.Identifier(APP)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), app))
    conn.execute(sql.SQL("GRANT SELECT, INSERT, UPDATE (balance) ON acct TO {}").format(app))
    yield schema
    conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    drop_role(fleet, APP)


@pytest.fixture
def router(cluster: LocalCluster, accounts: str) -> Iterator[RouterServer]:
    with routing_router(cluster) as server:
        assert server.config.routing is not None
        server.config.routing.refresh()  # the role and its grants are copied to the workers
        yield server


def connect(cluster: LocalCluster, port: int, schema: str, *, autocommit: bool = False) -> psycopg.Connection[Any]:
    """As an ORM connects: psycopg's own BEGIN (a Query), then statements with bound parameters."""
    return psycopg.connect(host="127.0.0.1", port=port, dbname=cluster.spec.dbname, user=APP, password=PASSWORD,
                           options=f"-c search_path={schema}", autocommit=autocommit)


def balance(conn: psycopg.Connection[Any], key: int) -> int:
    row = conn.execute("SELECT balance FROM acct WHERE id = %s", (key,)).fetchone()
    assert row is not None
    return int(row[0])


def direct_balance(cluster: LocalCluster, schema: str, key: int) -> int:
    with connect(cluster, cluster.spec.coordinator.port, schema, autocommit=True) as direct:
        return balance(direct, key)


def test_autocommit_batches_of_a_role_run_on_the_worker(cluster: LocalCluster, router: RouterServer,
                                                       accounts: str) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, accounts, autocommit=True) as conn:
        before = stats.routed
        assert conn.execute("SELECT current_user, balance FROM acct WHERE id = %s", (3,)).fetchone() == (APP, BALANCE)
        assert conn.execute("UPDATE acct SET balance = balance + 1 WHERE id = %s", (3,)).rowcount == 1
        assert stats.routed == before + 2  # both on the worker, as the role
        before = (stats.routed, stats.routing_fallbacks)
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as denied:  # no UPDATE on note
            conn.execute("UPDATE acct SET note = %s WHERE id = %s", ("x", 3))
        assert "permission denied for table acct" in str(denied.value)  # the coordinator's words
        assert (stats.routed, stats.routing_fallbacks) == (before[0], before[1] + 1)
        assert conn.execute("SELECT current_user").fetchone() == (APP,)  # the role ended with the batch
    assert direct_balance(cluster, accounts, 3) == BALANCE + 1
    assert stats.pinned_sessions == 0


def test_transaction_on_one_worker(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    stats = router.context.stats
    a, b = next(iter(keys_by_node(router, accounts).values()))[:2]
    with connect(cluster, router.config.port, accounts) as conn:
        before = (stats.routed, stats.worker_transactions)
        conn.execute("UPDATE acct SET balance = balance - %s WHERE id = %s", (10, a))
        conn.execute("UPDATE acct SET balance = balance + %s WHERE id = %s", (10, b))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        assert (balance(conn, a), balance(conn, b)) == (BALANCE - 10, BALANCE + 10)  # its own writes
        assert conn.execute("SELECT current_user FROM acct WHERE id = %s", (a,)).fetchone() == (APP,)  # its role
        assert direct_balance(cluster, accounts, a) == BALANCE  # not visible before COMMIT
        conn.commit()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert (direct_balance(cluster, accounts, a), direct_balance(cluster, accounts, b)) == (BALANCE - 10, BALANCE + 10)
        assert stats.routed >= before[0] + 4 and stats.worker_transactions == before[1] + 1
        assert stats.coordinator_transactions == 0

        conn.execute("UPDATE acct SET balance = 0 WHERE id = %s", (a,))
        assert balance(conn, a) == 0
        conn.rollback()
        assert direct_balance(cluster, accounts, a) == BALANCE - 10

        # an error fails the transaction: the next statement gets 25P02, ROLLBACK ends it
        conn.execute("UPDATE acct SET balance = balance + 1 WHERE id = %s", (a,))
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE acct SET balance = balance - %s WHERE id = %s", (1000, b))
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT balance FROM acct WHERE id = %s", (a,))
        conn.rollback()
        # a privilege the role lacks fails it as on the coordinator
        conn.execute("SELECT balance FROM acct WHERE id = %s", (a,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE acct SET note = %s WHERE id = %s", ("x", a))
        conn.rollback()
        assert balance(conn, a) == BALANCE - 10
        conn.commit()
    assert stats.coordinator_transactions == 0 and stats.pinned_sessions == 0


def test_transfer_between_two_workers(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    stats = router.context.stats
    here, there = (keys[0] for keys in keys_by_node(router, accounts).values())
    with connect(cluster, router.config.port, accounts) as conn:
        before = stats.two_phase_commits
        with conn.transaction():
            conn.execute("UPDATE acct SET balance = balance - %s WHERE id = %s", (30, here))
            conn.execute("UPDATE acct SET balance = balance + %s WHERE id = %s", (30, there))
            assert (balance(conn, here), balance(conn, there)) == (BALANCE - 30, BALANCE + 30)
            with conn.transaction():  # a savepoint on both participants
                conn.execute("UPDATE acct SET balance = 0 WHERE id = %s", (here,))
                conn.execute("UPDATE acct SET balance = 0 WHERE id = %s", (there,))
                raise psycopg.Rollback()
        assert stats.two_phase_commits == before + 1
        conn.commit()
    assert (direct_balance(cluster, accounts, here), direct_balance(cluster, accounts, there)) == (BALANCE - 30,
                                                                                                BALANCE + 30)
    assert prepared_everywhere(cluster) == 0


def test_statements_match_the_coordinator(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                          accounts: str) -> None:
    """The same transactions through the router and on the coordinator: the same results (differential)."""
    here, there = (keys[0] for keys in keys_by_node(router, accounts).values())
    stats = router.context.stats

    def session(port: int) -> list[Any]:
        seen: list[Any] = []
        with connect(cluster, port, accounts) as conn:
            seen.append(conn.execute("INSERT INTO acct VALUES (%s, %s, NULL) RETURNING id, balance",
                                     (ACCOUNTS + 1, 7)).fetchall())
            seen.append(conn.execute("UPDATE acct SET balance = balance * %s WHERE id = %s RETURNING balance",
                                     (2, here)).fetchall())
            seen.append(conn.execute("SELECT id, balance, note FROM acct WHERE id = %s", (here,)).fetchall())
            conn.commit()
            seen.append(conn.execute("UPDATE acct SET balance = balance - %s WHERE id = %s", (5, there)).rowcount)
            seen.append(conn.execute("SELECT balance FROM acct WHERE id = %s", (there,)).fetchall())
            seen.append(conn.execute("SELECT balance FROM acct WHERE id = %s", (here,)).fetchall())  # joins
            conn.rollback()
            seen.append(conn.execute("SELECT id, balance FROM acct WHERE id = ANY(%s) ORDER BY id",
                                     ([here, there],)).fetchall())
            conn.commit()
        return seen

    via_router = session(router.config.port)
    undo = fleet.conn()  # then the same on the coordinator
    undo.execute(sql.SQL("UPDATE {}.acct SET balance = balance / 2 WHERE id = %s").format(sql.Identifier(accounts)), (here,))
    undo.execute(sql.SQL("DELETE FROM {}.acct WHERE id = %s").format(sql.Identifier(accounts)), (ACCOUNTS + 1,))
    assert stats.routed == 7 and stats.coordinator_transactions == 0  # the two-shard SELECT too (merged by the router)
    direct_results = session(cluster.spec.coordinator.port)
    assert via_router == direct_results


def test_pgbench_prepared_tpcb(cluster: LocalCluster, fleet: Fleet, router: RouterServer) -> None:
    """pgbench -M prepared sends BEGIN, its statements and END as prepared statements: every transaction
    runs on the workers, none fails, the balances add up."""
    pgbench = [cluster.binaries.path("pgbench"), "-h", "127.0.0.1", "-U", cluster.spec.superuser]
    env = {"PGPASSWORD": cluster.spec.coordinator.password, "PGDATABASE": cluster.spec.dbname}
    conn = fleet.conn()
    tables = "public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers, public.pgbench_history"
    conn.execute(f"DROP TABLE IF EXISTS {tables}")
    run_proc([*pgbench, "-p", str(cluster.spec.coordinator.port), "-i", "-q", "-s", "2"], env=env, timeout=120,
             what="pgbench -i")
    try:
        for table, key in (("accounts", "aid"), ("history", "aid"), ("branches", "bid"), ("tellers", "tid")):
            fleet.distribute(DistributeSpec(QualifiedName("public", f"pgbench_{table}"), key, HashSpec(4)))
        time.sleep(2.5)  # the router reads the catalog every 2 s
        assert router.context.routing is not None
        router.context.routing.refresh()
        stats = router.context.stats
        before = (stats.routed, stats.two_phase_commits, stats.worker_transactions)
        out = run_proc([*pgbench, "-p", str(router.config.port), "-n", "-M", "prepared", "-c", "4", "-j", "2", "-T", "4"],
                       env=env, timeout=120, what="pgbench").stdout
        numbers = pgbench_numbers(out)
        assert numbers["transactions"] > 50, out
        assert numbers.get("failed", 0) == 0, out
        assert stats.coordinator_transactions == 0
        assert stats.routed - before[0] >= 5 * numbers["transactions"]  # the five statements of each, on workers
        assert stats.two_phase_commits > before[1]
        assert (stats.worker_transactions - before[2]) + (stats.two_phase_commits - before[1]) >= numbers["transactions"]
        sums = conn.execute("SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM "
                            "pgbench_branches), (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT sum(delta) "
                            "FROM pgbench_history), (SELECT count(*) FROM pgbench_history)").fetchone()
        assert sums is not None and sums[0] == sums[1] == sums[2] == sums[3] and sums[4] >= numbers["transactions"]
        assert prepared_everywhere(cluster) == 0
    finally:
        conn.execute(f"DROP TABLE IF EXISTS {tables}")


def test_prepared_statements_and_refusals_in_a_transaction(cluster: LocalCluster, router: RouterServer,
                                                           accounts: str) -> None:
    """Named prepared statements (Parse alone, then Bind/Execute), SAVEPOINT and COMMIT sent as prepared
    statements, a statement that needs the coordinator (refused after a write, moving the transaction
    after reads), a syntax error: as on one server."""
    stats = router.context.stats
    a = next(iter(keys_by_node(router, accounts).values()))[0]
    intrans, inerror = psycopg.pq.TransactionStatus.INTRANS, psycopg.pq.TransactionStatus.INERROR
    with connect(cluster, router.config.port, accounts) as conn:
        assert conn.execute("SELECT balance FROM acct WHERE id = %s", (a,), prepare=True).fetchone() == (BALANCE,)
        conn.execute("UPDATE acct SET balance = balance + %s WHERE id = %s", (1, a), prepare=True)
        assert conn.execute("SELECT balance FROM acct WHERE id = %s", (a,), prepare=True).fetchone() == (BALANCE + 1,)
        assert conn.info.transaction_status == intrans
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="wrote on worker"):
            conn.execute("SELECT count(DISTINCT balance) FROM acct WHERE balance > %s", (0,))  # not scattered
        assert conn.info.transaction_status == inerror
        conn.rollback()
        assert stats.coordinator_transactions == 0

        assert balance(conn, a) == BALANCE  # reads only: the transaction moves to the coordinator
        assert conn.execute("SELECT count(DISTINCT id) FROM acct WHERE balance >= %s", (0,)).fetchone() == (ACCOUNTS,)
        conn.execute("UPDATE acct SET balance = balance + %s WHERE id = %s", (1, a))
        conn.commit()
        assert stats.coordinator_transactions == 1
        assert direct_balance(cluster, accounts, a) == BALANCE + 1

        assert balance(conn, a) == BALANCE + 1  # a syntax error fails the transaction (moved: the coordinator says it)
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute("SELEC %s", (1,))
        assert conn.info.transaction_status == inerror
        conn.rollback()
        assert stats.coordinator_transactions == 2

        routed = stats.routed
        conn.execute("UPDATE acct SET balance = balance + %s WHERE id = %s", (100, a))
        conn.execute("SAVEPOINT s1", prepare=True)
        conn.execute("UPDATE acct SET balance = %s WHERE id = %s", (0, a))
        assert balance(conn, a) == 0
        conn.execute("ROLLBACK TO SAVEPOINT s1", prepare=True)
        assert balance(conn, a) == BALANCE + 101
        assert conn.info.transaction_status == intrans
        conn.execute("COMMIT", prepare=True)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        assert stats.routed == routed + 4
    assert direct_balance(cluster, accounts, a) == BALANCE + 101
    assert stats.coordinator_transactions == 2 and stats.pinned_sessions == 0  # DEALLOCATE ALL did not pin it


def extended(sql_text: str, *params: bytes | None, describe: bool = True, name: str = "") -> bytes:
    """Parse (of ``name``, the types left to the server, as libpq and pgbench send them), Bind, [Describe
    portal,] Execute, Sync."""
    return b"".join((p.Parse(name, sql_text, ()).encode(), p.Bind("", name, (), params, ()).encode(),
                     p.Describe("P", "").encode() if describe else b"", p.Execute("", 0).encode(), p.Sync().encode()))


def test_replies_in_a_transaction_are_the_coordinators(cluster: LocalCluster, fleet: Fleet, router: RouterServer,
                                                       accounts: str) -> None:
    """Raw batches, as a client sends them, in autocommit and in transactions (prepared BEGIN/COMMIT, the
    unnamed statement parsed again with values that do not place it, an error failing the transaction):
    through the router and straight to the coordinator, the same messages."""
    stats = router.context.stats
    lookup = "SELECT balance FROM acct WHERE id = $1"
    update = "UPDATE acct SET balance = balance + 1 WHERE id = $1"
    named_bind = b"".join((p.Bind("", "b", (), (), ()).encode(), p.Describe("P", "").encode(),
                           p.Execute("", 0).encode(), p.Sync().encode()))
    batches = [  # (messages, routed)
        (extended(lookup, b"5"), 1), (extended(lookup, b"6"), 1),
        (extended(lookup, None), 1),  # parsed again, NULL places it on no shard: read from every shard (no row)
        (p.Parse("b", "BEGIN", ()).encode() + p.Sync().encode(), 0),
        (named_bind, 0),  # a prepared BEGIN: the router's transaction
        (extended(update, b"5"), 1), (extended(lookup, b"5"), 1),
        (extended("UPDATE acct SET balance = balance - 1000 WHERE id = $1", b"5"), 1),  # 23514: the transaction fails
        (extended(lookup, b"5"), 0),  # 25P02
        (p.Parse("q", lookup, ()).encode() + p.Sync().encode(), 0),  # a Parse in a failed transaction: 25P02
        (p.Close("S", "q").encode() + p.Parse("q", lookup, ()).encode() + p.Sync().encode(), 0),  # Close, then 25P02
        (p.Parse("r", "ROLLBACK", ()).encode() + p.Sync().encode(), 0),  # accepted
        (extended("ROLLBACK"), 0),
        (extended(lookup, b"5"), 1),
        (extended("BEGIN", describe=False), 0), (extended(lookup, b"7"), 1), (extended(update, b"7"), 1),
        (extended("COMMIT"), 0), (extended("COMMIT"), 0),  # the second: no transaction, a warning
    ]

    async def replies(port: int) -> list[list[tuple[bytes, bytes]]]:
        login = WorkerLogin("127.0.0.1", port, APP, PASSWORD, cluster.spec.dbname)
        conn = await WorkerConnection.open(login, (("search_path", accounts),))
        out = []
        for batch, routed in batches:
            before = stats.routed
            reply = await conn.roundtrip(batch)
            out.append([(t, payload if t not in (b"E", b"N") else sqlstate_of(t, payload)) for t, payload in
                        wire.Framer().feed(reply)])
            if port == router.config.port:
                assert stats.routed - before == routed, (batch, out[-1])
        conn.close()
        return out

    via_router = asyncio.run(replies(router.config.port))
    reset = fleet.conn()
    reset.execute(sql.SQL("UPDATE {}.acct SET balance = balance - 1 WHERE id = 7").format(sql.Identifier(accounts)))
    direct = asyncio.run(replies(cluster.spec.coordinator.port))
    for (batch, _), got, expected in zip(batches, via_router, direct, strict=True):
        assert got == expected, batch  # errors and notices compared by SQLSTATE
    assert [t for t, _ in direct[4]] == [b"2", b"n", b"C", b"Z"] and direct[4][-1] == (b"Z", b"T")
    assert direct[7][-1] == (b"Z", b"E") and direct[8][-1] == (b"Z", b"E")
    assert [t for t, _ in direct[9]] == [b"E", b"Z"] and direct[9][0][1] == b"25P02"
    assert [t for t, _ in direct[10]] == [b"3", b"E", b"Z"] and [t for t, _ in direct[11]] == [b"1", b"Z"]


def sqlstate_of(type_byte: bytes, payload: bytes) -> bytes:
    error = p.decode_backend(type_byte, payload)
    assert isinstance(error, p.ErrorResponse)
    return (error.sqlstate or "").encode()


def test_type_lookup_in_a_transaction_does_not_pin(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    """psycopg's TypeInfo.fetch in a transaction (SQLAlchemy's hstore lookup at connect: a SAVEPOINT, then
    a query calling to_regtype) runs on the coordinator without keeping the session there."""
    stats = router.context.stats
    with connect(cluster, router.config.port, accounts) as conn:
        conn.execute("SELECT pg_catalog.version()")
        assert TypeInfo.fetch(conn, "hstore") is None  # not installed: to_regtype gives NULL
        assert TypeInfo.fetch(conn, "int4") is not None
        conn.rollback()
        before = stats.routed
        assert balance(conn, 5) == BALANCE
        assert stats.routed == before + 1
    assert stats.pinned_sessions == 0


def executemany_story(conn: psycopg.Connection[Any], a: int, b: int, c: int) -> list[Any]:
    """psycopg's executemany (a pipeline: several Parse/Bind/Describe/Execute, one Sync) in transactions:
    after a routed write, spanning two workers, with an error in the middle; what the client sees."""
    update = "UPDATE acct SET balance = balance + %s WHERE id = %s"
    seen: list[Any] = []
    conn.execute(update, (10, a))
    conn.cursor().executemany(update, [(1, a), (2, b), (3, c), (4, a)])
    seen.append([balance(conn, k) for k in (a, b, c)])
    conn.commit()
    conn.cursor().executemany(update, [(1, a), (2, b)])  # the transaction's first statement
    conn.rollback()
    conn.execute(update, (5, c))
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        conn.cursor().executemany(update, [(1, a), (-1000, b), (3, c)])
    seen.append((caught.value.sqlstate, conn.info.transaction_status))
    conn.rollback()
    many = [(1, k) for k in range(1, ACCOUNTS + 1)] * 2  # longer than a batch the router keeps whole
    conn.cursor().executemany(update, many)
    conn.commit()
    seen.append([balance(conn, k) for k in range(1, ACCOUNTS + 1)])
    conn.commit()
    return seen


def test_executemany_in_a_transaction(cluster: LocalCluster, fleet: Fleet, router: RouterServer, accounts: str) -> None:
    """executemany in transactions through the router: each statement of the pipeline is a statement of the
    transaction (routed, two-phase commit over both workers), an error fails the transaction as on one
    server; the same story straight on the coordinator sees the same."""
    stats = router.context.stats
    first, second = keys_by_node(router, accounts).values()
    (a, b), c = first[:2], second[0]
    with connect(cluster, router.config.port, accounts) as conn:
        via_router = executemany_story(conn, a, b, c)
    assert stats.pinned_sessions == 0 and stats.coordinator_transactions == 0 and stats.two_phase_commits >= 2
    assert stats.routed >= 4 + 2 + 3 + 80
    reset = fleet.conn()
    reset.execute(sql.SQL("UPDATE {}.acct SET balance = {}").format(sql.Identifier(accounts), sql.Literal(BALANCE)))
    with connect(cluster, cluster.spec.coordinator.port, accounts) as conn:
        assert executemany_story(conn, a, b, c) == via_router
    assert via_router[0] == [BALANCE + 15, BALANCE + 2, BALANCE + 3]


def test_flush_before_sync_in_a_worker_transaction(cluster: LocalCluster, router: RouterServer,
                                                   accounts: str) -> None:
    """A Flush between two statements before Sync in a transaction on a worker (a pipeline): both run
    there as statements of the transaction, with one ReadyForQuery; ROLLBACK undoes both."""
    update = "UPDATE acct SET balance = balance + 1 WHERE id = $1"

    async def run() -> list[list[tuple[bytes, bytes]]]:
        conn = await WorkerConnection.open(WorkerLogin("127.0.0.1", router.config.port, APP, PASSWORD,
                                                       cluster.spec.dbname), (("search_path", accounts),))
        replies = []
        flushed = extended(update, b"5")[:-len(p.Sync().encode())] + p.Flush().encode() + extended(update, b"6")
        for request in (p.Query("BEGIN").encode(), extended(update, b"5"), flushed, p.Query("ROLLBACK").encode(),
                        extended("SELECT balance FROM acct WHERE id = $1", b"5")):
            replies.append(wire.Framer().feed(await conn.roundtrip(request)))
        conn.close()
        return replies

    replies = asyncio.run(run())
    assert replies[1][-1] == (b"Z", b"T")
    assert [t for t, _ in replies[2]] == [b"1", b"2", b"n", b"C"] * 2 + [b"Z"] and replies[2][-1] == (b"Z", b"T")
    assert replies[3][-1] == (b"Z", b"I")
    assert (b"D", p.DataRow((str(BALANCE).encode(),)).encode()[5:]) in replies[4]  # rolled back
