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
    (new ones included), in one verified step; the tables co-located with it are resharded with it."""
    name = parse_name(table)
    with open_fleet(ctx) as fleet, progress_bar(str(name)) as bar:
        result = fleet.reshard(name, shards, bar)
    first, others = result.tables[0], result.tables[1:]
    with_others = f" with its co-located {'table' if len(others) == 1 else 'tables'} " \
                  f"{', '.join(map(str, others))}" if others else ""
    if result.cleaned:
        out.print(f"removed {result.cleaned} shards an unfinished reshard of {first} had left on the workers")
    if result.changed:
        out.print(f"{first}{with_others} now {'has' if not others else 'have'} {result.shard_count} shards over every "
                  f"worker; {result.rows} rows copied and verified")
    for left in result.leftovers:
        out.print(f"[yellow]old shard {left} could not be dropped[/]: run 'pgfleet reshard {first} --shards "
                  f"{result.shard_count}' again to drop it")


COMMANDS = (undistribute, reshard)
