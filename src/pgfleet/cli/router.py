"""``pgfleet router``: the PostgreSQL wire-protocol router of the local cluster, the endpoint ``pgfleet up``
starts and ``pgfleet dsn`` names; start, stop and status by hand."""

from __future__ import annotations

import json

import click
from rich.console import Console
from rich.table import Table

from ..cluster.local import LocalCluster
from .common import cluster_dir


def _local(ctx: click.Context) -> LocalCluster:
    return LocalCluster.load(cluster_dir(ctx))


@click.group("router")
def router() -> None:
    """The pgfleet router: the cluster's PostgreSQL endpoint (single-shard statements to the workers)."""


@router.command("start")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: the first free port from 6432).")
@click.option("--route", is_flag=True,
              help="Send single-shard statements (simple protocol, autocommit, superuser sessions) straight to the workers.")
@click.option("--processes", type=int, default=None,
              help="Router processes accepting on the port (default: the number of cores).")
@click.option("--pool-size", type=click.IntRange(min=1), default=None,
              help="Connections to each worker per router process, shared by its clients (default: 2 per core).")
@click.pass_context
def start(ctx: click.Context, port: int | None, route: bool, processes: int | None, pool_size: int | None) -> None:
    """Start the router in the background (nothing happens when it already runs)."""
    from ..router.process import default_processes, dsn, start_background

    local = _local(ctx)
    proc, started = start_background(local, port, route=route, processes=default_processes() if processes is None else processes,
                                     pool_size=pool_size)
    if not started and port is not None and port != proc.port:
        click.echo(f"router already running on port {proc.port} (pid {proc.pid}); stop it first to change the port", err=True)
    else:
        count = len(proc.pids) or 1
        several = f", {count} processes: pids {', '.join(map(str, proc.pids))}" if count > 1 else ""
        click.echo(f"router {'started' if started else 'already running'} on port {proc.port} (pid {proc.pid}{several})",
                   err=True)
    click.echo(dsn(local, proc.port))


@router.command("stop")
@click.pass_context
def stop(ctx: click.Context) -> None:
    """Stop the background router; its clients are disconnected."""
    from ..router.process import stop_background

    click.echo("router stopped" if stop_background(_local(ctx)) else "router was not running", err=True)


@router.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Whether the router runs, on which port, its clients and statement counters."""
    from ..router.process import read_status

    state = read_status(_local(ctx))
    if as_json:
        click.echo(json.dumps(state.as_dict() if state else {"running": False}))
        return
    if state is None:
        click.echo("router not running (start it with 'pgfleet up' or 'pgfleet router start')")
        return
    table = Table(title="pgfleet router")
    table.add_column("setting")
    table.add_column("value")
    shown = state.as_dict()
    shown.pop("running")
    shown.pop("pools")
    first = [name for name in FIRST_ROWS if name in shown]
    for name in first + sorted(set(shown) - set(first)):
        table.add_row(LABELS.get(name, name.replace("_", " ")), str(shown[name]))
    console = Console()
    console.print(table)
    if state.pools:
        pools = Table(title="worker connection pools (all processes)")
        for column in ("node", "pool size", "in use", "idle", "waiting"):
            pools.add_column(column)
        for node, figures in state.pools.items():
            pools.add_row(node, *(str(figures.get(name, 0)) for name in ("size", "in_use", "idle", "waiting")))
        console.print(pools)


# the rows users look for first, then every other counter the router keeps (transactions, …) by name
FIRST_ROWS = ("port", "pid", "processes", "coordinator", "uptime_seconds", "routing", "clients_active",
              "clients_total", "worker_connections", "routed", "statements_to_coordinator", "routing_fallbacks",
              "pinned_sessions")
LABELS = {"routed": "statements routed to a worker", "statements_to_coordinator": "statements to the coordinator",
          "routing_fallbacks": "routing fallbacks (routable, run on the coordinator)",
          "pinned_sessions": "sessions kept on the coordinator", "worker_connections": "worker connections (pooled)"}


@router.command("run", hidden=True)
@click.option("--port", type=int, required=True)
@click.option("--process-index", default=0, show_default=True, type=int)
@click.option("--route", is_flag=True)
@click.option("--peer-ports", default="", help="Each process's own port, by index (several processes).")
@click.option("--pool-size", type=click.IntRange(min=1), default=None)
@click.pass_context
def run(ctx: click.Context, port: int, process_index: int, route: bool, peer_ports: str, pool_size: int | None) -> None:
    """Serve in the foreground until SIGTERM (what 'router start' runs in the background)."""
    import logging

    from ..router.process import coordinator_address, local_catalog_databases, local_routing, status_file
    from ..router.server import RouterConfig, run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    local = _local(ctx)
    ports = [int(p) for p in peer_ports.split(",") if p]
    peers = {i: ("127.0.0.1", p) for i, p in enumerate(ports) if i != process_index}
    run_forever(RouterConfig(port=port, upstream=coordinator_address(local), process_index=process_index,
                             peers=peers, reuse_port=bool(ports), peer_port=ports[process_index] if ports else None,
                             status_file=status_file(local, process_index),
                             routing=local_routing(local) if route else None, pool_size=pool_size,
                             routing_for=(lambda db: local_routing(local, db)) if route else None,
                             catalog_databases=local_catalog_databases(local) if route else None))


COMMANDS = (router,)
