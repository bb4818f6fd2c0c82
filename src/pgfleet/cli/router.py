"""``pgfleet router``: run the PostgreSQL wire-protocol router of the local cluster in the background.

Not yet the default endpoint of ``pgfleet up`` / ``pgfleet dsn``: for now it relays every session to
the coordinator (routing to workers comes next)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click
from rich.console import Console
from rich.table import Table

from ..cluster.local import LocalCluster
from .common import cluster_dir


def _local(ctx: click.Context) -> LocalCluster:
    return LocalCluster.load(cluster_dir(ctx))


@click.group("router")
def router() -> None:
    """The pgfleet router: one PostgreSQL endpoint in front of the cluster (relays to the coordinator)."""


@router.command("start")
@click.option("--port", type=int, help="Port on 127.0.0.1 (default: the first free port from 6432).")
@click.option("--route", is_flag=True,
              help="Send single-shard statements (simple protocol, autocommit, superuser sessions) straight to the workers.")
@click.option("--processes", type=int, default=None,
              help="Router processes accepting on the port (default: the number of cores).")
@click.pass_context
def start(ctx: click.Context, port: int | None, route: bool, processes: int | None) -> None:
    """Start the router in the background (nothing happens when it already runs)."""
    from ..router.process import default_processes, dsn, start_background

    local = _local(ctx)
    proc, started = start_background(local, port, route=route, processes=default_processes() if processes is None else processes)
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
        click.echo(json.dumps(asdict(state) if state else {"running": False}))
        return
    if state is None:
        click.echo("router not running (start it with 'pgfleet router start')")
        return
    table = Table(title="pgfleet router")
    table.add_column("setting")
    table.add_column("value")
    for name, value in asdict(state).items():
        table.add_row(name.replace("_", " "), str(value))
    Console().print(table)


@router.command("run", hidden=True)
@click.option("--port", type=int, required=True)
@click.option("--process-index", default=0, show_default=True, type=int)
@click.option("--route", is_flag=True)
@click.option("--peer-ports", default="", help="Each process's own port, by index (several processes).")
@click.pass_context
def run(ctx: click.Context, port: int, process_index: int, route: bool, peer_ports: str) -> None:
    """Serve in the foreground until SIGTERM (what 'router start' runs in the background)."""
    import logging

    from ..router.process import coordinator_address, local_routing, status_file
    from ..router.server import RouterConfig, run_forever

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    local = _local(ctx)
    ports = [int(p) for p in peer_ports.split(",") if p]
    peers = {i: ("127.0.0.1", p) for i, p in enumerate(ports) if i != process_index}
    run_forever(RouterConfig(port=port, upstream=coordinator_address(local), process_index=process_index,
                             peers=peers, reuse_port=bool(ports), peer_port=ports[process_index] if ports else None,
                             status_file=status_file(local, process_index),
                             routing=local_routing(local) if route else None))


COMMANDS = (router,)
