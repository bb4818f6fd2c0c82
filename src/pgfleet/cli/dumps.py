"""What leaves the fleet as files: dump (the logical database for pg_restore) and export/import (the
topology), of one coordinator database (--database) or of every one holding distributed tables
(--all-databases: a directory with one file per database)."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import SpecError
from .common import database_name, database_option, err, human_size, open_fleet, open_fleets, out, progress_bar

ALL_HELP = ("Every coordinator database holding distributed tables: the argument is then a new or empty directory "
            "that gets one file per database, named after it")
DATABASE_HELP = ("Database of the coordinator to write (default: the cluster's, postgres); it must hold distributed "
                 "tables.")


def _not_a_directory(target: Path) -> None:
    if target.is_dir():
        raise SpecError(f"{target} is a directory", hint="give a file name, or --all-databases to write one file per "
                        "database into a directory")


@click.command("export")
@click.argument("target", metavar="FILE|DIR", type=click.Path())
@click.option("--all-databases", is_flag=True, help=ALL_HELP + " (DIR/<database>.json).")
@database_option(DATABASE_HELP)
@click.pass_context
def export_cmd(ctx: click.Context, target: str, all_databases: bool) -> None:
    """Write the topology (nodes, tables, shards; no passwords) of the database to FILE as JSON, or of every
    database to DIR with --all-databases."""
    from ..cluster.per_database import export_all, write_json
    from ..cluster.topofile import export_topology

    path = Path(target)
    with open_fleets(ctx, all_databases) as fleets:
        if all_databases:
            for db, written, data in export_all(fleets, path):
                out.print(f"database {db}: topology written to {written}: {len(data['nodes'])} nodes, "
                          f"{len(data['tables'])} tables", highlight=False, soft_wrap=True)
            out.print(f"re-attach them with: pgfleet import --all-databases {target}", highlight=False, soft_wrap=True)
            return
        _not_a_directory(path)
        data = export_topology(fleets[0])
    write_json(path, data)
    out.print(f"topology written to {target}: {len(data['nodes'])} nodes, {len(data['tables'])} tables")


@click.command("import")
@click.argument("source", metavar="FILE|DIR", type=click.Path())
@click.option("--all-databases", is_flag=True,
              help="The argument is a directory written by 'pgfleet export --all-databases': each database's file into "
                   "the coordinator database of that name (it must exist); every file is checked first.")
@click.pass_context
def import_cmd(ctx: click.Context, source: str, all_databases: bool) -> None:
    """Re-apply a topology written by 'pgfleet export' to this coordinator (its database, or --database)."""
    from ..cluster.per_database import import_all, read_topologies
    from ..cluster.topofile import import_topology, load_topology_file

    path = Path(source)
    if all_databases:
        if database_name(ctx) is not None:
            raise SpecError("--database and --all-databases exclude each other", hint="give one of them")
        topologies = read_topologies(path)
        with open_fleet(ctx, prepare=False) as main:
            for db, summary in import_all(main, topologies):
                out.print(f"database {db}: {summary}", highlight=False, soft_wrap=True)
        return
    if path.is_dir():
        raise SpecError(f"{source} is a directory", hint="give a file written by 'pgfleet export', or "
                        "--all-databases for a directory written by 'pgfleet export --all-databases'")
    data = load_topology_file(path)
    with open_fleet(ctx) as fleet:
        origin = data.get("database")
        if origin and origin != fleet.coordinator.dbname:
            err.print(f"  note: {source} was exported from database {origin}; importing it into database "
                      f"{fleet.coordinator.dbname} (--database {origin} for the database it came from)",
                      highlight=False, soft_wrap=True)
        summary = import_topology(fleet, data)
    out.print(summary)


@click.command("dump")
@click.argument("target", metavar="FILE|DIR", type=click.Path())
@click.option("--all-databases", is_flag=True, help=ALL_HELP + " (DIR/<database>.dump).")
@database_option(DATABASE_HELP)
@click.pass_context
def dump_cmd(ctx: click.Context, target: str, all_databases: bool) -> None:
    """Write the whole logical database to FILE (pg_dump custom format) for pg_restore into one plain server;
    with --all-databases every database, each into DIR/<database>.dump."""
    from ..cluster.logical_dump import dump
    from ..cluster.per_database import dump_all

    path = Path(target)
    with open_fleets(ctx, all_databases) as fleets, progress_bar("dump") as bar:
        if all_databases:
            results = dump_all(fleets, path, lambda db: lambda phase, done, total: bar(f"{db}: {phase}", done, total))
        else:
            _not_a_directory(path)
            results = [(fleets[0].coordinator.dbname, dump(fleets[0], path, bar))]
    for db, result in results:
        where = f"database {db}: " if all_databases else ""
        out.print(f"{where}dump written to {result.path}: {result.tables} distributed tables as plain tables "
                  f"({result.rows} rows), {human_size(result.bytes)}; load it with pg_restore -d DBNAME {result.path}",
                  highlight=False, soft_wrap=True)


COMMANDS = (export_cmd, import_cmd, dump_cmd)
