"""Extended-protocol statements (psycopg parameters, prepared statements, pipelines) through the routing
router: single-shard ones run on the owning worker and return what the coordinator returns."""

from __future__ import annotations

import asyncio
import struct
import tempfile
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.node.ports import claim_ports, release_ports
from pgfleet.pgbench import run_pgbench
from pgfleet.proc import run
from pgfleet.router import protocol as p
from pgfleet.router import wire
from pgfleet.router.backend import WorkerConnection, WorkerLogin
from pgfleet.router.process import local_routing
from pgfleet.router.server import RouterConfig, RouterServer, serve_in_thread
from pgfleet.spec import DistributeSpec, HashSpec, QualifiedName
from test_router_routing import connect, data, router  # noqa: F401 - fixtures

pytestmark = pytest.mark.cluster


def outcome(conn: psycopg.Connection[Any], statement: str, params: tuple[Any, ...], **options: Any) -> tuple[Any, ...]:
    """What a statement returns (rows, column names and types, status, row count), or its error."""
    binary = options.pop("binary", False)
    try:
        with conn.cursor(binary=binary) as cur:
            cur.execute(statement, params, **options)  # type: ignore[call-overload]
            rows = cur.fetchall() if cur.description else None
            return (rows, [(d.name, d.type_code) for d in cur.description or []], cur.statusmessage, cur.rowcount)
    except psycopg.Error as exc:
        return ("error", exc.sqlstate, type(exc).__name__)


READS = [
    ("SELECT * FROM t WHERE id = %s", lambda k: (k,)),
    ("SELECT t.id, t.val, g.label, t.at FROM t JOIN grps g ON g.grp = t.grp WHERE t.id = %s", lambda k: (k,)),
    ("SELECT count(*), sum(val), max(at) FROM t WHERE id IN (%s, %s)", lambda k: (k, k)),
    ("SELECT note, %s::text AS extra FROM t WHERE id = %s", lambda k: ("x" * k, k)),
    ("SELECT 1 / (id - %s) FROM t WHERE id = %s", lambda k: (k, k)),  # division by zero
    ("SELECT * FROM t WHERE id = %s", lambda k: ("not a number",)),  # a type error in the parameter
]


@pytest.mark.parametrize("options", [{}, {"prepare": True}, {"binary": True}, {"binary": True, "prepare": True}],
                         ids=["plain", "prepared", "binary", "binary-prepared"])
def test_reads_match_the_coordinator(cluster: LocalCluster, router: RouterServer, data: str,  # noqa: F811
                                     options: dict[str, Any]) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        before = stats.routed
        for statement, params in READS:
            for k in (1, 2, 3, 42, 299, 5000):
                for _ in range(2):  # a second time: known statements (prepared, or the unnamed one again)
                    got = outcome(via_router, statement, params(k), **options)
                    assert got == outcome(direct, statement, params(k), **options), (statement, k)
        routed = stats.routed - before
        # every statement but the type error is routed (12 runs each)
        assert routed == 12 * (len(READS) - 1), routed
        assert stats.pinned_sessions == 0


WRITES = [
    ("INSERT INTO t (id, grp, val, note) VALUES (%s, 1, 1.5, %s) RETURNING *", lambda k: (k, f"new {k}")),
    ("INSERT INTO t (id, grp) VALUES (%s, 2)", lambda k: (k,)),  # unique violation
    ("UPDATE t SET note = note || %s WHERE id = %s RETURNING id, note", lambda k: ("+", k)),
    ("DELETE FROM t WHERE id = %s RETURNING id, note", lambda k: (k,)),
    ("DELETE FROM t WHERE id = %s", lambda k: (k,)),  # nothing left to delete
]


@pytest.mark.parametrize("options", [{}, {"prepare": True}, {"binary": True}],
                         ids=["plain", "prepared", "binary"])
def test_writes_match_the_coordinator(cluster: LocalCluster, router: RouterServer, data: str,  # noqa: F811
                                      options: dict[str, Any]) -> None:
    stats = router.context.stats
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        before = stats.routed
        for statement, params in WRITES:
            for k in (7001, 7002, 7003):
                got = repr(outcome(via_router, statement, params(k), **options)).replace(str(k), "K")
                expected = repr(outcome(direct, statement, params(k + 1000), **options)).replace(str(k + 1000), "K")
                assert got == expected, (statement, k)
        assert stats.routed - before == 3 * len(WRITES)
        assert direct.execute("SELECT count(*) FROM t WHERE id > 7000").fetchone() == (0,)


def test_pipeline_and_executemany(cluster: LocalCluster, router: RouterServer, data: str) -> None:  # noqa: F811
    with connect(cluster, router.config.port, data) as via_router, \
            connect(cluster, cluster.spec.coordinator.port, data) as direct:
        results = []
        for conn, base in ((via_router, 8000), (direct, 9000)):
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO t (id, grp, note) VALUES (%s, %s, %s)",
                                [(base + i, i, f"many {i}") for i in range(5)])
            with conn.pipeline():
                cursors = [conn.execute("SELECT grp, note FROM t WHERE id = %s", (base + i,)) for i in range(5)]
                cursors.append(conn.execute("UPDATE t SET note = %s WHERE id = %s RETURNING grp", ("piped", base)))
            before = router.context.stats.routed
            with conn.pipeline() as pipeline:  # one statement per Sync, sent before the first is answered
                for i in range(5):
                    cursors.append(conn.execute("SELECT note FROM t WHERE id = %s", (base + i,), prepare=i > 2))
                    pipeline.sync()
            if conn is via_router:  # those not sent behind a Flush (psycopg's choice) run on the workers
                assert router.context.stats.routed > before
            results.append([c.fetchall() for c in cursors])
            # a pipeline then a single statement: the session goes on, routed again when idle
            results.append(conn.execute("SELECT note FROM t WHERE id = %s", (base,)).fetchall())
            conn.execute("DELETE FROM t WHERE id >= %s AND id < %s", (base, base + 5))
        assert results[0] == results[2] and results[1] == results[3] == [("piped",)]


CHECKED_SELECT = """\\set aid random(1, 100000 * :scale)
SELECT abalance AS got FROM pgbench_accounts WHERE aid = :aid \\gset
\\if :got != :aid
SELECT 1 / 0;
\\endif
"""


@pytest.fixture
def accounts(fleet: Fleet, cluster: LocalCluster) -> Iterator[None]:
    """pgbench's tables, pgbench_accounts hash-distributed by aid; every abalance set to its aid."""
    conn = fleet.conn()
    conn.execute("DROP TABLE IF EXISTS public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers, "
                 "public.pgbench_history")
    run_pgbench(cluster, "coord", ["-i", "-q", "-I", "dtgp", "-s", "1"])
    conn.execute("UPDATE public.pgbench_accounts SET abalance = aid")
    fleet.distribute(DistributeSpec(QualifiedName("public", "pgbench_accounts"), "aid", HashSpec(4)))
    yield
    conn.execute("DROP TABLE public.pgbench_accounts, public.pgbench_branches, public.pgbench_tellers, "
                 "public.pgbench_history")


@pytest.fixture
def bench_router(cluster: LocalCluster, accounts: None) -> Iterator[RouterServer]:
    [port] = claim_ports(1, cluster.directory, start=6700)
    upstream = ("127.0.0.1", cluster.spec.coordinator.port)
    try:
        with serve_in_thread(RouterConfig(port=port, upstream=lambda: upstream, routing=local_routing(cluster))) as server:
            yield server
    finally:
        release_ports([port], cluster.directory)


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_pgbench_select_only_is_routed(cluster: LocalCluster, bench_router: RouterServer, mode: str) -> None:
    stats = bench_router.context.stats
    port = str(bench_router.config.port)
    env = {"PGPASSWORD": cluster.spec.coordinator.password}
    common = [cluster.binaries.path("pgbench"), "-h", "127.0.0.1", "-p", port, "-U", cluster.spec.superuser,
              "-n", "-M", mode, "-c", "2", "-j", "2", "-t", "300"]
    # every row read is checked (a wrong row divides by zero; a missing one fails \gset): pgbench exits non-zero
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write(CHECKED_SELECT)
        script.flush()
        out = run([*common, "-f", script.name, cluster.spec.dbname], env=env, timeout=120, what="pgbench").stdout
    assert "number of transactions actually processed: 600/600" in out
    assert "number of failed transactions: 0" in out
    assert stats.routed >= 600
    routed = stats.routed
    out = run([*common, "-S", cluster.spec.dbname], env=env, timeout=120, what="pgbench").stdout
    assert "number of transactions actually processed: 600/600" in out
    assert stats.routed - routed == 600


def _comparable(reply: bytes) -> list[tuple[bytes, bytes]]:
    """A reply's messages; errors reduced to SQLSTATE and message (the source line differs by server)."""
    out = []
    for type_byte, payload in wire.Framer().feed(reply):
        error = p.decode_backend(type_byte, payload) if type_byte == b"E" else None
        assert error is None or isinstance(error, p.ErrorResponse)
        out.append((type_byte, payload if error is None else f"{error.sqlstate} {error.message}".encode()))
    return out


def _bind(statement: str, *params: bytes | None, formats: tuple[int, ...] = (), results: tuple[int, ...] = ()) -> bytes:
    return p.Bind("", statement, formats, params, results).encode()


DESCRIBE_EXECUTE_SYNC = p.Describe("P", "").encode() + p.Execute("", 0).encode() + p.Sync().encode()
SELECT_BY_ID = "SELECT id, note, val FROM t WHERE id = $1"
# (batch, routed): what the client sends up to a Sync, and whether the router runs it on a worker
PROTOCOL_BATCHES: list[tuple[bytes, bool]] = [
    (p.Parse("", SELECT_BY_ID).encode() + _bind("", b"5") + DESCRIBE_EXECUTE_SYNC, True),
    (p.Parse("", SELECT_BY_ID).encode() + _bind("", b"6") + DESCRIBE_EXECUTE_SYNC, True),  # parsed again
    (p.Parse("s1", SELECT_BY_ID, (20,)).encode() + p.Sync().encode(), False),
    (_bind("s1", struct.pack("!q", 7), formats=(1,), results=(1,)) + DESCRIBE_EXECUTE_SYNC, True),  # binary
    (p.Parse("s1", "SELECT 'other'").encode() + p.Sync().encode(), False),  # already exists: an error
    (_bind("s1", b"8") + DESCRIBE_EXECUTE_SYNC, True),  # still the first statement
    (p.Describe("S", "s1").encode() + _bind("s1", b"9") + p.Execute("", 0).encode() + p.Sync().encode(), True),
    (_bind("s1", b"9", b"10") + DESCRIBE_EXECUTE_SYNC, False),  # wrong number of parameters
    (_bind("s1", b"not a number") + DESCRIBE_EXECUTE_SYNC, False),
    (_bind("s1", None) + DESCRIBE_EXECUTE_SYNC, True),  # NULL key: read from every shard (no row)
    (p.Close("S", "s1").encode() + p.Sync().encode(), False),
    (_bind("s1", b"8") + DESCRIBE_EXECUTE_SYNC, False),  # closed: does not exist
    (p.Parse("", "SELEKT 1").encode() + _bind("") + DESCRIBE_EXECUTE_SYNC, False),  # syntax error
    (_bind("", b"5") + DESCRIBE_EXECUTE_SYNC, False),  # the failed Parse left no unnamed statement
    (p.Parse("s2", "SELECT 100 / (id - $2), note FROM t WHERE id = $1").encode() + _bind("s2", b"11", b"11")
     + DESCRIBE_EXECUTE_SYNC, True),  # division by zero on the worker
    (_bind("s2", b"12", b"11") + DESCRIBE_EXECUTE_SYNC, True),
    (p.Parse("", SELECT_BY_ID).encode() + p.Flush().encode(), False),  # a Flush (asyncpg): the coordinator answers
    (_bind("", b"13") + DESCRIBE_EXECUTE_SYNC, True),  # ... and the rest of the batch is routed
    (_bind("", b"14") + DESCRIBE_EXECUTE_SYNC, True),
    (p.Parse("", "SELECT * FROM t WHERE id = ANY($1)").encode() + _bind("", b"{1,2}") + DESCRIBE_EXECUTE_SYNC,
     True),  # two shards: a scatter read
    (p.Parse("", "UPDATE t SET note = $2 WHERE id = $1 RETURNING note").encode() + _bind("", b"15", b"fifteen")
     + DESCRIBE_EXECUTE_SYNC, True),
    (p.Parse("", "SELEKT $1").encode() + p.Describe("S", "").encode() + p.Flush().encode(), False),  # refused
    (_bind("", b"1") + DESCRIBE_EXECUTE_SYNC, False),  # skipped up to its Sync, as the server does
    (p.Parse("", SELECT_BY_ID).encode() + p.Describe("S", "").encode() + p.Flush().encode(), False),  # as asyncpg
    (_bind("", b"16") + DESCRIBE_EXECUTE_SYNC, True),
]


def test_replies_are_the_coordinators_byte_for_byte(cluster: LocalCluster, router: RouterServer, data: str) -> None:  # noqa: F811
    """The same batches on one session through the router and on one straight to the coordinator."""
    stats = router.context.stats

    async def replies(port: int) -> list[list[tuple[bytes, bytes]]]:
        login = WorkerLogin("127.0.0.1", port, cluster.spec.superuser, cluster.spec.coordinator.password,
                            cluster.spec.dbname)
        conn = await WorkerConnection.open(login, (("search_path", f"{data},public"),))
        out = []
        flushed: asyncio.Future[bytes | None] | None = None
        for batch, routed in PROTOCOL_BATCHES:
            before = stats.routed
            future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            if flushed is not None:  # the rest of a batch whose first part came with a Flush
                assert conn.transport is not None
                conn.transport.write(batch)
                future, flushed = flushed, None
            else:
                conn.send(batch, future.set_result)
            if batch.endswith(p.Flush().encode()):  # the client waits for ParseComplete, then goes on
                await asyncio.sleep(0.3)
                out.append([])
                flushed = future
                continue
            reply = await asyncio.wait_for(future, 10)
            assert reply is not None
            out.append(_comparable(reply))
            if port == router.config.port:
                assert stats.routed - before == routed, (batch, out[-1])
        conn.close()
        return out

    via_router = asyncio.run(replies(router.config.port))
    direct = asyncio.run(replies(cluster.spec.coordinator.port))
    for (batch, _), got, expected in zip(PROTOCOL_BATCHES, via_router, direct, strict=True):
        assert got == expected, batch
    assert [t for t, _ in direct[5]] == [b"2", b"T", b"D", b"C", b"Z"]
    assert any(t == b"E" for t, _ in direct[4]) and any(t == b"E" for t, _ in direct[14])


def test_cancel_reaches_the_worker_running_a_routed_batch(cluster: LocalCluster, router: RouterServer,  # noqa: F811
                                                          data: str) -> None:  # noqa: F811
    import threading
    import time

    from psycopg import sql

    from pgfleet.execute.connect import connect as connect_node
    from pgfleet.router.analyze import Shard, analyze

    routing = router.config.routing
    assert routing is not None
    route = analyze("UPDATE t SET val = 0 WHERE id = $1", routing.topology, search_path=(data, "public"), params=("1",))
    assert isinstance(route, Shard)
    table = routing.topology.table(data, "t")
    assert table is not None
    shard = next(s for s in table.shards if s.index == route.shard_index)
    with connect_node(cluster.endpoint(route.node), autocommit=False) as locker, \
            connect(cluster, router.config.port, data) as conn:
        locker.execute(sql.SQL("SELECT 1 FROM {} WHERE id = 1 FOR UPDATE").format(
            sql.Identifier(shard.shard_schema, shard.shard_table)))
        routed = router.context.stats.routed
        timer = threading.Timer(0.5, conn.cancel_safe)
        start = time.monotonic()
        timer.start()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("UPDATE t SET val = %s WHERE id = %s", (0, 1), prepare=True)  # waits for the row lock
        timer.join()
        assert time.monotonic() - start < 5
        assert router.context.stats.routed == routed + 1
        locker.rollback()
        assert conn.execute("UPDATE t SET val = %s WHERE id = %s", (0, 1), prepare=True).rowcount == 1
        assert router.context.stats.routed == routed + 2


def test_a_worker_connection_ended_while_idle_is_opened_again(cluster: LocalCluster, router: RouterServer,  # noqa: F811
                                                               data: str) -> None:  # noqa: F811
    """Its statements were parsed on the old connection: the new one parses them again."""
    import time

    from pgfleet.execute.connect import connect as connect_node

    stats = router.context.stats
    with connect(cluster, router.config.port, data) as conn:
        statement = "SELECT note FROM t WHERE id = %s"
        keys = range(1, 11)  # on both workers
        assert [conn.execute(statement, (k,), prepare=True).fetchone() for k in keys] == [(f"n{k}",) for k in keys]
        routed = stats.routed
        for node in ("w1", "w2"):
            with connect_node(cluster.endpoint(node), autocommit=True) as admin:
                ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE application_name = 'pgfleet router'").fetchone()
                assert ended == (1,)
        time.sleep(0.5)  # the router reads the end of both connections before the next statement
        assert [conn.execute(statement, (k,), prepare=True).fetchone() for k in keys] == [(f"n{k}",) for k in keys]
        assert stats.routed == routed + len(keys)
