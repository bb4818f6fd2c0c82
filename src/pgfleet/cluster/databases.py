"""Every database of the coordinator can hold distributed tables.

Each coordinator database has its own pgfleet catalog (schema ``pgfleet``, foreign servers, user
mappings), and its shards live in the database of the same name on every worker, so two databases never
share shard tables or shard ids. :func:`attach_database` prepares a database on first use: the database
on each worker (created when missing), the catalog, and the workers of the cluster's main database
registered through ``Fleet.add_node`` (the passfiles in the coordinator's data directory are per server,
shared by its databases). :func:`catalog_databases` lists the databases holding a catalog, for what
must change in all of them (a failover repoints the foreign servers of each)."""

from __future__ import annotations

import logging
from dataclasses import replace

import psycopg
from psycopg import sql

from ..errors import ExecuteError, SpecError
from ..execute import Endpoint, connect, describe_error
from ..execute.connect import Conn
from ..topology.read import catalog_installed
from .fleet import Fleet

log = logging.getLogger(__name__)


def database_exists(conn: Conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def catalog_databases(coordinator: Endpoint) -> list[str]:
    """The coordinator's databases that hold a pgfleet catalog (the endpoint's own first)."""
    found = []
    with connect(coordinator, timeout=5) as conn:
        names = [str(r[0]) for r in conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "ORDER BY datname = current_database() DESC, datname").fetchall()]
    for name in names:  # an error here is the caller's: a database skipped would keep a stale address
        with connect(replace(coordinator, dbname=name), timeout=5) as conn:
            if catalog_installed(conn):
                found.append(name)
    return found


def attach_database(main: Fleet, name: str) -> Fleet:
    """A Fleet on database ``name`` of ``main``'s coordinator, with its catalog and workers set up on
    first use. ``main`` is the fleet of the cluster's main database, whose workers it takes."""
    target = Fleet(replace(main.coordinator, dbname=name), main.local)
    if name == main.coordinator.dbname:
        return target
    if not database_exists(main.conn(), name):
        raise SpecError(f"database {name} does not exist on the coordinator",
                        hint=f"create it first: pgfleet psql -c 'CREATE DATABASE {name}'")
    if catalog_installed(target.conn()):
        return target
    workers = main.topology().workers
    for node in workers:  # the database of the same name on every worker, for its shards
        ep = main.endpoint(node)
        try:
            with connect(ep) as wconn:
                if not database_exists(wconn, name):
                    wconn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        except psycopg.Error as exc:
            raise ExecuteError(f"creating database {name} on worker {node.name} failed: {describe_error(exc)}",
                               node=node.name, hint=f"create it there by hand, or give {ep.user} CREATEDB") from None
    target.install_catalog()
    for node in workers:
        target.add_node(node.name, replace(main.endpoint(node), dbname=name), kind=node.kind)
    log.info("database %s is ready for distributed tables on %d worker(s)", name, len(workers))
    return target
