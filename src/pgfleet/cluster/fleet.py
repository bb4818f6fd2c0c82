"""The Fleet facade: the library API that the CLI is a thin layer over."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Self

import psycopg
from psycopg import sql

from ..errors import ExecuteError, NodeError, SpecError, TopologyError
from ..execute import Endpoint, connect, describe_error
from ..execute.connect import Conn
from ..spec import DistributeSpec, QualifiedName, ReferenceSpec
from ..topology.model import Node, Topology
from ..topology.read import catalog_installed, read_node, read_topology
from .local import LocalCluster
from .worker_credentials import (PASSFILE_OPTION, move_mapping_passwords, passfile_name, read_password,
                                 remove_password, store_password)

log = logging.getLogger(__name__)

NODE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")

# postgres_fdw options for every worker server, from FDW-NOTES measurements: big fetches, batched
# inserts, asynchronous scans of all shards at once, parallel commit of multi-server transactions.
SERVER_OPTIONS: tuple[tuple[str, str], ...] = (
    ("fetch_size", "10000"),
    ("batch_size", "1000"),
    ("async_capable", "true"),
    ("parallel_commit", "true"),
    ("parallel_abort", "true"),
    ("connect_timeout", "5"),  # an unreachable worker fails a query instead of hanging it
)

# Planner settings for the coordinator database: co-located joins run per shard pair on the worker.
COORDINATOR_SETTINGS: tuple[tuple[str, str], ...] = (
    ("enable_partitionwise_join", "on"),
)

# The catalog (tables, DDL triggers), the types tables use on the workers, indexes, roles and privileges on the
# workers, foreign keys on the shards, how writes reach the workers (reference triggers, flush_queue) and the
# SQL API for migrations (distribute_table, reference_table, undistribute_table).
CATALOG_FILES = ("catalog.sql", "types.sql", "indexes.sql", "grants.sql", "foreign_keys.sql", "unique_keys.sql",
                 "worker_writes.sql",
                 "parked_keys.sql", "value_shards.sql", "migrations.sql")

Progress = Callable[[str, int, int], None]  # (phase, done, total)


@dataclass(frozen=True)
class NodeStatus:
    name: str
    role: str
    address: str
    kind: str
    healthy: bool
    version: str
    latency_ms: float | None
    shards: int
    bytes: int | None
    error: str | None = None


@dataclass(frozen=True)
class ShardStatus:
    shard: str  # schema.table on the worker
    node: str
    bytes: int | None  # pg_total_relation_size; None when the node is down or the table is missing


@dataclass(frozen=True)
class TableStatus:
    database: str  # the coordinator database holding the table
    name: str
    method: str
    key: str | None
    shards: int
    nodes: tuple[str, ...]
    colocated_with: tuple[str, ...]
    bytes: int | None = None  # sum over the shards; None when a shard's size is unknown
    shard_sizes: tuple[ShardStatus, ...] = ()


@dataclass(frozen=True)
class Status:
    databases: tuple[str, ...]  # the coordinator databases shown, the cluster's main one first
    nodes: tuple[NodeStatus, ...]  # health once per node; shards and bytes over all the databases
    tables: tuple[TableStatus, ...]
    unfinished: tuple[str, ...]


@dataclass(frozen=True)
class ReshardResult:
    tables: tuple[QualifiedName, ...]  # the table asked for, then the tables co-located with it
    shard_count: int
    rows: int  # rows copied, all tables together
    leftovers: tuple[str, ...] = ()  # old shards that could not be dropped (node:schema.table)
    cleaned: int = 0  # shards an unfinished earlier reshard left, dropped before this one
    changed: bool = True  # False: the layout was already the one asked for (only ``cleaned`` was done)


class Fleet:
    """A pgfleet cluster reached through its coordinator."""

    def __init__(self, coordinator: Endpoint, local: LocalCluster | None = None) -> None:
        self.coordinator = coordinator
        self.local = local
        self._conn: Conn | None = None

    # --- opening ----------------------------------------------------------------------------------
    @classmethod
    def open(cls, directory: Path, database: str | None = None, *, prepare: bool = True) -> Fleet:
        """The local cluster in ``directory``; ``database``: another database of its coordinator, made
        ready for distributed tables on first use (cluster/databases.py), or with ``prepare`` False one
        that must already hold them (for commands that only read)."""
        local = LocalCluster.load(directory)
        fleet = cls(local.endpoint(local.spec.coordinator.name), local)
        if database is None or database == fleet.coordinator.dbname:
            return fleet
        from .databases import attach_database, open_existing

        with fleet:
            return attach_database(fleet, database) if prepare else open_existing(fleet, database)

    @classmethod
    def from_dsn(cls, dsn: str) -> Fleet:
        from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(dsn)
        except psycopg.ProgrammingError as exc:
            raise SpecError(f"malformed connection string: {exc}") from None
        return cls(Endpoint(name="coord", host=str(params.get("host", "127.0.0.1")),
                            port=int(str(params.get("port", 5432))), dbname=str(params.get("dbname", "postgres")),
                            user=str(params.get("user", "postgres")),
                            password=str(params["password"]) if "password" in params else None))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- connections ------------------------------------------------------------------------------
    def conn(self) -> Conn:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.coordinator)
        return self._conn

    def new_coordinator_conn(self, *, canonical: bool = False) -> Conn:
        return connect(self.coordinator, canonical=canonical)

    def topology(self) -> Topology:
        conn = self.conn()
        if not catalog_installed(conn):
            raise TopologyError(f"the server at {self.coordinator.address} has no pgfleet catalog",
                                hint="create a cluster with 'pgfleet up' or run 'pgfleet init' on the coordinator")
        return read_topology(conn)

    def endpoint(self, node: Node) -> Endpoint:
        """How to reach ``node``: address from the catalog, user from its user mapping, password from its
        passfile in the coordinator's data directory (from the mapping for clusters made before passfiles)."""
        if node.role == "coordinator":
            return self.coordinator
        password = read_password(self.conn(), node.server_name)
        row = self.conn().execute(
            "SELECT umoptions FROM pg_user_mappings WHERE srvname = %s AND usename IN (current_user, 'public') "
            "ORDER BY usename = 'public' LIMIT 1", (node.server_name,)).fetchone()
        options = dict(o.split("=", 1) for o in (row[0] if row and row[0] else []))
        return Endpoint(name=node.name, host=node.host, port=node.port, dbname=node.dbname,
                        user=options.get("user", node.username), password=password or options.get("password"))

    def current_endpoint(self, name: str) -> Endpoint | None:
        """The catalog's address of node ``name`` now (it changes when a standby is promoted)."""
        node = read_node(self.conn(), name)
        return self.endpoint(node) if node is not None else None

    def worker_conn(self, node: Node, *, autocommit: bool = True,
                    canonical: bool = False) -> Conn:
        return connect(self.endpoint(node), autocommit=autocommit, canonical=canonical)

    @contextmanager
    def worker_conns(self, names: list[str], *, autocommit: bool = True,
                     canonical: bool = False) -> Iterator[dict[str, Conn]]:
        """Connections to the named workers; NodeError (and nothing opened) if one is unreachable."""
        topo = self.topology()
        conns: dict[str, Conn] = {}
        try:
            for name in names:
                node = topo.node(name)
                if node is None:
                    raise SpecError(f"unknown node {name!r}")
                conns[name] = self.worker_conn(node, autocommit=autocommit, canonical=canonical)
            yield conns
        finally:
            for c in conns.values():
                c.close()

    # --- catalog and nodes ------------------------------------------------------------------------
    def install_catalog(self) -> None:
        """Create or upgrade the pgfleet schema on the coordinator and register the coordinator."""
        texts = [resources.files("pgfleet").joinpath(f"sql/{name}").read_text() for name in CATALOG_FILES]
        conn = self.conn()
        try:
            with conn.transaction():
                for text in texts:
                    conn.execute(text.encode())
                dbname = conn.execute("SELECT current_database()").fetchone()
                for name, value in COORDINATOR_SETTINGS:
                    conn.execute(sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                        sql.Identifier(str(dbname[0] if dbname else "postgres")), sql.Identifier(name),
                        sql.Literal(value)))
                conn.execute(
                    "INSERT INTO pgfleet.nodes (name, role, host, port, dbname, username, kind) "
                    "VALUES (%s, 'coordinator', %s, %s, %s, %s, %s) ON CONFLICT (name) DO NOTHING",
                    (self.coordinator.name, self.coordinator.host, self.coordinator.port, self.coordinator.dbname,
                     self.coordinator.user, "local" if self.local else "external"))
                move_mapping_passwords(conn)
        except psycopg.Error as exc:
            raise ExecuteError(f"installing the pgfleet catalog failed: {describe_error(exc)}",
                               node=self.coordinator.name,
                               hint="the coordinator needs PostgreSQL 16+ with postgres_fdw and dblink, and a superuser") from None

    def register_local_workers(self) -> list[str]:
        """Install the catalog and register every worker of the local cluster (by group, not member)."""
        assert self.local is not None
        self.install_catalog()
        names = []
        for group in self.local.spec.groups:
            if self.local.spec.primary_of(group).role == "worker":
                self.add_node(group, self.local.endpoint(group), kind="local")
                names.append(group)
        return names

    def add_node(self, name: str, endpoint: Endpoint, *, kind: str = "external") -> Node:
        """Register a worker, local or an existing server, through one code path."""
        if not NODE_NAME.match(name):
            raise SpecError(f"malformed node name {name!r}",
                            hint="use lower-case letters, digits and _, starting with a letter (at most 41)")
        topo = self.topology()
        if topo.node(name) is not None:
            raise SpecError(f"node {name} already exists", hint="choose another name or 'pgfleet node remove' it")
        for other in topo.nodes:
            if (other.host, other.port, other.dbname) == (endpoint.host, endpoint.port, endpoint.dbname):
                raise SpecError(f"{endpoint.address} is already node {other.name}")
        with connect(endpoint) as wconn:
            row = wconn.execute("SELECT current_setting('server_version_num')::int, "
                                "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user)").fetchone()
        assert row is not None
        version, superuser = int(str(row[0])), bool(row[1])
        if version < 160000:
            raise NodeError(f"{endpoint.address} runs PostgreSQL {version // 10000}", node=name,
                            hint="pgfleet workers need PostgreSQL 16 or newer")
        if not superuser:
            log.warning("node %s: %s is not a superuser; DDL on shards needs CREATE on the database",
                        name, endpoint.user)
        node = Node(name=name, role="worker", host=endpoint.host, port=endpoint.port, dbname=endpoint.dbname,
                    username=endpoint.user, kind=kind)
        options = [("host", endpoint.host), ("port", str(endpoint.port)), ("dbname", endpoint.dbname),
                   *SERVER_OPTIONS]
        user_options = [("user", endpoint.user)]
        if endpoint.password:  # the password goes to a passfile in the coordinator's data directory
            options.append((PASSFILE_OPTION, passfile_name(node.server_name)))
        conn = self.conn()
        try:
            if endpoint.password:
                self._store_password(node.server_name, endpoint.password)
            with conn.transaction():
                conn.execute(sql.SQL("CREATE SERVER {} FOREIGN DATA WRAPPER postgres_fdw OPTIONS ({})").format(
                    sql.Identifier(node.server_name),
                    sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in options)))
                conn.execute(sql.SQL("CREATE USER MAPPING FOR CURRENT_USER SERVER {} OPTIONS ({})").format(
                    sql.Identifier(node.server_name),
                    sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v))
                                       for k, v in user_options)))
                conn.execute("SELECT pgfleet.ensure_public_mappings()")  # every role, by its grants (catalog.sql)
                conn.execute(
                    "INSERT INTO pgfleet.nodes (name, role, host, port, dbname, username, kind) "
                    "VALUES (%s, 'worker', %s, %s, %s, %s, %s)",
                    (name, endpoint.host, endpoint.port, endpoint.dbname, endpoint.user, kind))
        except (psycopg.Error, ExecuteError) as exc:
            if endpoint.password:
                self._remove_password(node.server_name)
            if isinstance(exc, ExecuteError):
                raise
            raise ExecuteError(f"registering node {name} failed: {describe_error(exc)}") from None
        from .reference import add_reference_copies

        try:
            add_reference_copies(self, name)  # "a full copy on every worker" holds for new workers too
        except BaseException:
            self._unregister(node)
            raise
        return node

    def _unregister(self, node: Node) -> None:
        """Undo add_node for a node that holds no shards (its copies failed)."""
        conn = self.conn()
        with conn.transaction():
            conn.execute("DELETE FROM pgfleet.shards WHERE node = %s", (node.name,))
            conn.execute(sql.SQL("DROP SERVER IF EXISTS {} CASCADE").format(sql.Identifier(node.server_name)))
            conn.execute("DELETE FROM pgfleet.nodes WHERE name = %s", (node.name,))
        self._remove_password(node.server_name)

    def _coordinator_standbys(self) -> list[Endpoint]:
        """The local coordinator's other members: a standby promoted later needs the same passfiles."""
        if self.local is None:
            return []
        coord = self.local.spec.coordinator
        return [self.local.member_endpoint(m.name) for m in self.local.spec.members(coord.group_name)
                if m.name != coord.name]

    def _store_password(self, server_name: str, password: str) -> None:
        store_password(self.conn(), server_name, password)
        for ep in self._coordinator_standbys():
            try:
                with connect(ep) as sconn:
                    store_password(sconn, server_name, password)
            except (psycopg.Error, ExecuteError, NodeError) as exc:
                log.warning("coordinator member %s did not get the passfile of %s (%s): after a failover to it, "
                            "copy %s from the primary's data directory into its own", ep.name, server_name, exc,
                            passfile_name(server_name))

    def _remove_password(self, server_name: str) -> None:
        for ep in [self.coordinator, *self._coordinator_standbys()]:
            try:
                if ep is self.coordinator:
                    remove_password(self.conn(), server_name)
                else:
                    with connect(ep) as sconn:
                        remove_password(sconn, server_name)
            except (psycopg.Error, NodeError) as exc:
                log.warning("could not remove the passfile of %s on %s: %s", server_name, ep.name, exc)

    # --- distribution -----------------------------------------------------------------------------
    def distribute(self, spec: DistributeSpec, progress: Progress | None = None) -> int:
        from .distribute import distribute

        return distribute(self, spec, progress)

    def reference(self, spec: ReferenceSpec, progress: Progress | None = None) -> int:
        from .reference import make_reference

        return make_reference(self, spec, progress)

    def undistribute(self, table: QualifiedName, progress: Progress | None = None) -> int:
        from .undistribute import undistribute

        return undistribute(self, table, progress)

    def reshard(self, table: QualifiedName, shard_count: int, progress: Progress | None = None) -> ReshardResult:
        from .reshard import reshard

        return reshard(self, table, shard_count, progress)

    # --- status -----------------------------------------------------------------------------------
    def status(self) -> Status:
        from .status import collect

        return collect(self)
