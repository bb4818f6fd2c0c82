"""High availability: standby add/remove, monitor, switchover, node rejoin, events, bench-failover."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click
from rich.table import Table

from ..cluster.local import LocalCluster
from ..errors import SpecError
from .common import cluster_dir, err, out, progress_bar


@click.group()
def standby() -> None:
    """Streaming standbys of the local cluster's nodes."""


@standby.command("add")
@click.argument("node_name")
@click.option("--async", "asynchronous", is_flag=True, help="Asynchronous (default: synchronous).")
@click.pass_context
def standby_add(ctx: click.Context, node_name: str, asynchronous: bool) -> None:
    """Add a streaming standby to NODE_NAME (coord, w1, …)."""
    from ..ha.standby import add_standby

    local = LocalCluster.load(cluster_dir(ctx))
    member = add_standby(local, node_name, sync=not asynchronous, say=lambda m: err.print(f"  {m}"))
    out.print(f"standby {member.name} of {node_name} is streaming on port {member.port} "
              f"({'synchronous' if member.sync else 'asynchronous'})")


@standby.command("remove")
@click.argument("member")
@click.pass_context
def standby_remove(ctx: click.Context, member: str) -> None:
    """Remove MEMBER (a standby or a fenced old primary): stopped, slot dropped, data deleted."""
    from ..ha.standby import remove_standby

    local = LocalCluster.load(cluster_dir(ctx))
    remove_standby(local, member)
    out.print(f"{member} removed")


@click.command()
@click.option("--interval", default=1.0, show_default=True, type=float, help="Seconds between checks.")
@click.option("--timeout", default=3.0, show_default=True, type=float,
              help="Seconds a primary may not answer before the monitor fails over.")
@click.option("--background", is_flag=True, help="Run detached; 'pgfleet down' or --stop ends it.")
@click.option("--stop", is_flag=True, help="Stop the background monitor.")
@click.pass_context
def monitor(ctx: click.Context, interval: float, timeout: float, background: bool, stop: bool) -> None:
    """Watch every primary and fail over on its own."""
    from ..ha.monitor_proc import run_foreground, start_background, stop_background

    local = LocalCluster.load(cluster_dir(ctx))
    if stop:
        out.print("monitor stopped" if stop_background(local) else "no monitor was running")
        return
    if background:
        pid = start_background(local, interval=interval, timeout=timeout)
        out.print(f"monitor running in the background (pid {pid})" if pid else "a monitor is already running")
        return
    run_foreground(local, interval=interval, timeout=timeout, say=err.print)


@click.command()
@click.argument("node_name")
@click.option("--to", "to", help="The standby to promote (default: the most caught-up one).")
@click.pass_context
def switchover(ctx: click.Context, node_name: str, to: str | None) -> None:
    """Planned role swap of NODE_NAME's primary and a standby; no commit is lost."""
    from ..ha.failover import switchover as do_switchover

    local = LocalCluster.load(cluster_dir(ctx))
    new = do_switchover(local, node_name, to)
    out.print(f"{node_name}: {new.name} is primary on port {new.port}")


@click.command("rejoin")
@click.argument("member")
@click.pass_context
def node_rejoin(ctx: click.Context, member: str) -> None:
    """Bring an old primary back as a standby (pg_rewind, or a fresh base backup when that cannot work)."""
    from ..ha.rejoin import rejoin

    local = LocalCluster.load(cluster_dir(ctx))
    with progress_bar(f"rejoin {member}") as update:
        how = rejoin(local, member, say=lambda m: err.print(f"  {m}", highlight=False),
                     progress=lambda done, total: update("base backup (kB)", done, total))
    out.print(f"{member} follows {local.spec.primary_of(local.node(member).group_name).name} (by {how})")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def events(ctx: click.Context, as_json: bool) -> None:
    """What the monitor and pgfleet saw and did, with times."""
    from ..ha.events import read_events

    local = LocalCluster.load(cluster_dir(ctx))
    items = read_events(local)
    if as_json:
        click.echo(json.dumps([asdict(e) for e in items], indent=2))
        return
    for e in items:
        out.print(f"{e.time}  {e.node:<8} {e.kind:<20} {e.detail}", highlight=False, soft_wrap=True)


@click.command("bench-failover")
@click.option("--trials", default=5, show_default=True, type=int, help="Kills per target (worker, coordinator).")
@click.option("--out", "out_dir", default="bench/results", show_default=True, type=click.Path(file_okay=False))
def bench_failover(trials: int, out_dir: str) -> None:
    """Time from a primary's death to the first write through the router (pgfleet dsn), and commits lost."""
    from ..bench_failover import run_failover_bench

    if trials < 1:
        raise SpecError("--trials must be at least 1")
    report = run_failover_bench(trials, Path(out_dir), lambda m: err.print(m, highlight=False))
    table = Table(title="time from a primary's death to the first acknowledged write through the router")
    for col in ("primary killed", "trials", "median s", "max s", "no writes for (median / max s)", "acknowledged",
                "lost", "writable/group", "target"):
        table.add_column(col)
    targets = {"worker": "< 5 s median, 0 lost, 1 writable", "coordinator": "< 10 s median, 0 lost, 1 writable"}
    for name, row in report["summary"].items():
        table.add_row(name, str(row["trials"]), f"{row['median_s']:.2f}", f"{row['max_s']:.2f}",
                      f"{row['unavailable_median_s']:.2f} / {row['unavailable_max_s']:.2f}",
                      str(row["acknowledged"]), str(row["lost"]), "/".join(str(n) for n in row["writable_per_group"]),
                      targets[name])
    out.print(table)
    out.print(f"writes routed by the router straight to a worker: {report['router_routed_statements']}")
    out.print(f"raw results: {Path(out_dir) / 'failover.json'} ({report['elapsed_seconds']} s)")


COMMANDS = (standby, monitor, switchover, events, bench_failover)
