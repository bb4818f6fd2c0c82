"""`pgfleet undistribute` and `pgfleet reshard`: undo a distribution, change a table's shard count."""

from __future__ import annotations

import click

from ..spec import parse_name
from .common import open_fleet, out, progress_bar


@click.command()
@click.argument("table")
@click.pass_context
def undistribute(ctx: click.Context, table: str) -> None:
    """Bring TABLE's rows back into a plain coordinator table (verified); its shards or copies are dropped."""
    name = parse_name(table)
    with open_fleet(ctx) as fleet, progress_bar(str(name)) as bar:
        rows = fleet.undistribute(name, bar)
    out.print(f"{name} is a plain table again: {rows} rows moved back and verified")


@click.command()
@click.argument("table")
@click.option("--shards", type=int, required=True, help="The new number of hash shards.")
@click.pass_context
def reshard(ctx: click.Context, table: str, shards: int) -> None:
    """Change the shard count of hash-distributed TABLE, or with its count lay it out again over every worker
    (new ones included): undistribute, then distribute; each verified."""
    name = parse_name(table)
    with open_fleet(ctx) as fleet, progress_bar(str(name)) as bar:
        rows = fleet.reshard(name, shards, bar)
    out.print(f"{name} now has {shards} shards over every worker; {rows} rows moved and verified")


COMMANDS = (undistribute, reshard)
