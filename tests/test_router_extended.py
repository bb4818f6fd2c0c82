"""Extended-protocol statements (psycopg parameters, prepared statements, pipelines) through the routing
router: single-shard ones run on the owning worker and return what the coordinator returns."""

from __future__ import annotations

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
