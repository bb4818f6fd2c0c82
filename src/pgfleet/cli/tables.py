"""Tables and nodes: distribute, reference, load, vacuum/analyze, node add/list."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

import click
import psycopg
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import ClusterError, SpecError
from ..execute import Endpoint
from ..spec import DistributeSpec, HashSpec, ReferenceSpec, parse_list_arg, parse_name, parse_range_bounds
from ..spec.distribution import parse_column
from ..topology.read import resolve_table
from .common import err, open_fleet, out, progress_bar


@click.command()
@click.argument("table")
@click.argument("key_column", required=False, metavar="[KEY]")
@click.option("--key", help="Distribution column (or give it after TABLE).")
@click.option("--shards", type=int, help="Hash distribution into this many shards (default 8).")
@click.option("--bounds", help="Range distribution: comma-separated bounds, min/max for open ends.")
@click.option("--list", "lists", multiple=True, help="List distribution: VALUE[,VALUE…]=NODE, once per site.")
@click.option("--colocate-with", help="Place shards with this distributed table's shards.")
@click.option("--nodes", help="Comma-separated workers to place shards on (default: all).")
@click.pass_context
def distribute(ctx: click.Context, table: str, key_column: str | None, key: str | None, shards: int | None,
               bounds: str | None, lists: tuple[str, ...], colocate_with: str | None, nodes: str | None) -> None:
    """Spread TABLE over the workers by hash, range or list on KEY; its rows move into the shards."""
    if key_column is not None and key is not None and key_column != key:
        raise SpecError(f"two distribution keys given: {key_column} and --key {key}", hint="give the key once")
    key = key or key_column
    if key is None:
        raise SpecError(f"no distribution key for {table}", hint=f"pgfleet distribute {table} KEY (or --key KEY)")
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
        # the table the name resolves to now (search_path), not the first of that name in any schema
        dist = fleet.topology().table(resolve_table(fleet.conn(), spec.table))
    if dist is None:
        raise ClusterError(f"{spec.table} was distributed but is no longer in the catalog",
                           hint="another session changed it; see 'pgfleet status'")
    out.print(f"distributed {dist.name} by {dist.method} on {dist.key}: {len(dist.shards)} shards on "
              f"{', '.join(sorted({s.node for s in dist.shards}))}; {moved} rows moved and verified")


@click.command()
@click.argument("table")
@click.pass_context
def reference(ctx: click.Context, table: str) -> None:
    """Copy TABLE to every worker; writes through the coordinator reach every copy."""
    spec = ReferenceSpec(parse_name(table))
    with open_fleet(ctx) as fleet, progress_bar(str(spec.table)) as bar:
        rows = fleet.reference(spec, bar)
        workers = [w.name for w in fleet.topology().workers]
    out.print(f"{spec.table} is a reference table: {rows} rows copied to {', '.join(workers)} and verified")


@click.command("load")
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


@click.group()
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


def _maintain(ctx: click.Context, vacuum: bool, tables: tuple[str, ...], options: Sequence[tuple[str, str | None]]) -> None:
    from ..cluster.vacuum import maintain
    from ..plan.vacuum import Maintenance

    command = Maintenance(vacuum=vacuum, options=tuple(options))
    with open_fleet(ctx) as fleet:
        result = maintain(fleet, command, [parse_name(t) for t in tables])
    verb = "vacuumed" if vacuum else "analyzed"
    out.print(f"{verb} {', '.join(result.tables) or 'no table'} ({result.statements} statements on shards and coordinator)")


@click.command("vacuum")
@click.argument("tables", nargs=-1)
@click.option("--full", is_flag=True, help="VACUUM FULL: rewrite each shard (locks it meanwhile).")
@click.option("--freeze", is_flag=True, help="VACUUM FREEZE.")
@click.option("--analyze", is_flag=True, help="Also gather statistics (shards first, then the coordinator).")
@click.pass_context
def vacuum_cmd(ctx: click.Context, tables: tuple[str, ...], full: bool, freeze: bool, analyze: bool) -> None:
    """VACUUM distributed and reference TABLES (default: all of them) on every shard and copy."""
    options = [(name, None) for name, on in (("full", full), ("freeze", freeze), ("analyze", analyze)) if on]
    _maintain(ctx, True, tables, options)


@click.command("analyze")
@click.argument("tables", nargs=-1)
@click.pass_context
def analyze_cmd(ctx: click.Context, tables: tuple[str, ...]) -> None:
    """ANALYZE distributed and reference TABLES (default: all of them): every shard, then the coordinator."""
    _maintain(ctx, False, tables, [])


COMMANDS = (distribute, reference, load_cmd, vacuum_cmd, analyze_cmd, node)
