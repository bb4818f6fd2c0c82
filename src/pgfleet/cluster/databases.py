"""Every database of the coordinator can hold distributed tables.

Each coordinator database has its own pgfleet catalog (schema ``pgfleet``, foreign servers, user
mappings), and its shards live in the database of the same name on every worker, so two databases never
share shard tables or shard ids. :func:`attach_database` prepares a database on first use: the database
on each worker (created when missing), the catalog, and the workers of the cluster's main database
registered through ``Fleet.add_node`` (the passfiles in the coordinator's data directory are per server,
shared by its databases). :func:`catalog_databases` lists the databases holding a catalog, for what
must change in all of them (a failover repoints the foreign servers of each) or be shown or written for
all of them (status, dump, export); :func:`open_existing` opens one for a command that only reads it."""

from __future__ import annotations

import logging
from dataclasses import replace

import psycopg
from psycopg import sql

from ..errors import ExecuteError, PgfleetError, SpecError
from ..execute import Endpoint, connect, describe_error
from ..execute.connect import Conn
from ..topology.read import catalog_installed
from .fleet import Fleet

log = logging.getLogger(__name__)


def database_exists(conn: Conn, name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def catalog_databases(coordinator: Endpoint) -> list[str]:
    """The coordinator's databases that hold a pgfleet catalog (the endpoint's own first). A database
    dropped while it is being looked at is left out; any other error is the caller's (a database skipped
    would keep a stale address)."""
    found = []
    with connect(coordinator, timeout=5) as listing:
        names = [str(r[0]) for r in listing.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
            "ORDER BY datname = current_database() DESC, datname").fetchall()]
        for name in names:
            try:
                with connect(replace(coordinator, dbname=name), timeout=5) as conn:
                    if catalog_installed(conn):
                        found.append(name)
            except (PgfleetError, psycopg.Error):
                if database_exists(listing, name):
                    raise
    return found


def open_existing(main: Fleet, name: str) -> Fleet:
    """A Fleet on database ``name`` of ``main``'s coordinator for a command that only reads it (status,
    dump, export): the database must exist and hold a catalog; nothing is created."""
    if name == main.coordinator.dbname:
        return Fleet(main.coordinator, main.local)
    target = Fleet(replace(main.coordinator, dbname=name), main.local)
    if database_exists(main.conn(), name) and catalog_installed(target.conn()):
        return target
    target.close()
    held = ", ".join(catalog_databases(main.coordinator)) or "none"
    if not database_exists(main.conn(), name):
        raise SpecError(f"database {name} does not exist on the coordinator",
                        hint=f"the databases with distributed tables are: {held} (give one of them to --database, "
                             "or leave --database out for all of them)")
    raise SpecError(f"database {name} holds no distributed tables (it has no pgfleet catalog)",
                    hint=f"the databases with distributed tables are: {held}; 'pgfleet distribute --database "
                         f"{name} …' makes it ready")


def catalog_fleets(main: Fleet) -> list[Fleet]:
    """``main`` and a Fleet on every other database of its coordinator that holds a catalog (``main`` comes
    first also when it has none: its topology then says so). The caller closes them."""
    names = catalog_databases(main.coordinator)
    return [main] + [
        Fleet(replace(main.coordinator, dbname=n), main.local) for n in names if n != main.coordinator.dbname]


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
