"""Real PostgreSQL clusters started by the suite (cached per session, fast settings).

When a test that used a cluster fails, the tail of every node's server log is attached to the report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgfleet.cluster.fleet import Fleet
from pgfleet.cluster.local import LocalCluster
from pgfleet.node.ports import claim_ports, release_ports
from pgfleet.router.process import local_catalog_databases, local_routing
from pgfleet.router.server import RouterConfig, RouterServer, serve_in_thread
from pgfleet.spec import QualifiedName

_CLUSTERS: list[LocalCluster] = []


@pytest.fixture(scope="session")
def base_dir() -> Iterator[Path]:
    # Under /tmp and world-traversable: when the suite runs as root the servers run as 'pgfleet'.
    path = Path(tempfile.mkdtemp(prefix="pgfleet-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def make_cluster(directory: Path, workers: int) -> LocalCluster:
    local = LocalCluster.create(directory, workers=workers, fast=True)
    with Fleet(local.endpoint("coord"), local) as fleet:
        fleet.register_local_workers()
    _CLUSTERS.append(local)
    return local


@pytest.fixture(scope="session")
def cluster(base_dir: Path) -> Iterator[LocalCluster]:
    local = make_cluster(base_dir / "main", workers=2)
    yield local
    local.destroy()


@pytest.fixture
def fleet(cluster: LocalCluster) -> Iterator[Fleet]:
    cluster.start()  # a test that stopped a node must not break the next one
    f = Fleet(cluster.endpoint("coord"), cluster)
    yield f
    f.close()


@pytest.fixture
def schema(fleet: Fleet, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh schema per test; dropping it drops the shards too (event trigger)."""
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "").replace("-", "_")[:50]
    conn = fleet.conn()
    conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'.encode())
    conn.execute(f'CREATE SCHEMA "{name}"'.encode())
    conn.execute(f'SET search_path = "{name}", public'.encode())
    yield name
    fleet.cluster_cleanup = True  # type: ignore[attr-defined]
    try:
        fleet.conn().execute("RESET search_path")
        fleet.conn().execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'.encode())
    except psycopg.Error:
        pass


@contextmanager
def routing_router(cluster: LocalCluster, **options: Any) -> Iterator[RouterServer]:
    """A router in this process with --route, in front of ``cluster``'s coordinator (``options``: more
    RouterConfig fields, e.g. pool_size)."""
    [port] = claim_ports(1, cluster.directory, start=6700)
    upstream = ("127.0.0.1", cluster.spec.coordinator.port)
    try:
        options = {"routing_for": lambda db: local_routing(cluster, db),
                   "catalog_databases": local_catalog_databases(cluster), **options}
        with serve_in_thread(RouterConfig(port=port, upstream=lambda: upstream, routing=local_routing(cluster),
                                          **options)) as server:
            yield server
    finally:
        release_ports([port], cluster.directory)


def create_twins(conn: psycopg.Connection[Any], statements: Sequence[str]) -> None:
    """Each statement twice: with ``{p}`` empty (the tables to distribute) and ``plain_`` (the same tables
    left plain, to compare with)."""
    for statement in statements:
        conn.execute(statement.format(p=""))
        conn.execute(statement.format(p="plain_"))


def connect(cluster: LocalCluster, port: int, schema: str) -> psycopg.Connection[Any]:
    """An autocommit session as the cluster superuser on ``port`` (the router's or a server's), with ``schema``
    first on its search_path."""
    return psycopg.connect(host="127.0.0.1", port=port, dbname=cluster.spec.dbname, user=cluster.spec.superuser,
                           password=cluster.spec.coordinator.password, autocommit=True,
                           options=f"-c search_path={schema},public")


@contextmanager
def login_role(fleet: Fleet, name: str, password: str = "pw") -> Iterator[str]:
    """A LOGIN role made for one test; it and everything it owns are dropped after."""
    conn = fleet.conn()
    role = sql.Identifier(name)
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role))
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(password)))
    try:
        yield name
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
        conn.execute(sql.SQL("DROP ROLE {}").format(role))


def shard_rows(fleet: Fleet, table: QualifiedName, query: str,
               params: Mapping[str, object] | None = None) -> set[tuple[object, ...]]:
    """The distinct rows ``query`` returns on the worker of each shard (or copy) of ``table``, with
    ``%(shard)s`` the shard table's qualified name."""
    topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name == table)
    rows: set[tuple[object, ...]] = set()
    for shard in dist.shards:
        node = topo.node(shard.node)
        assert node is not None
        with fleet.worker_conn(node) as w:
            name = sql.Identifier(shard.shard_schema, shard.shard_table).as_string(w)
            rows.update(tuple(r) for r in w.execute(query.encode(), {**(params or {}), "shard": name}).fetchall())
    return rows


def pgfleet_cli(*args: str, directory: Path | None = None, env: dict[str, str] | None = None,
                input: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    if directory is not None:
        full_env["PGFLEET_DIR"] = str(directory)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pgfleet.cli.main", *args], check=False, capture_output=True,
                          text=True, env=full_env, input=input, timeout=300)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and _CLUSTERS:
        for local in _CLUSTERS:
            for node in local.spec.nodes:
                tail = local.server(node.name).log_tail(15).replace(" / ", "\n")
                report.sections.append((f"server log {local.directory.name}/{node.name}", tail))
