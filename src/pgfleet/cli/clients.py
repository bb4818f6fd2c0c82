"""The PostgreSQL client programs that come with the binaries (psql, pgbench, pg_dump), pointed at the cluster."""

from __future__ import annotations

import os

import click

from ..cluster.local import LocalCluster
from .common import cluster_dir, database_name

# program -> what it is for, in its --help
PROGRAMS = {
    "psql": "Run psql",
    "pgbench": "Run pgbench",
    "pg_dump": "Run pg_dump",
}


def client_command(program: str) -> click.Command:
    """``pgfleet PROGRAM [--node NAME] [args…]``: the program of the cluster's PostgreSQL, connected to the
    coordinator (or NAME) through libpq's environment and the cluster's passfile; args pass through."""

    @click.command(program, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"{PROGRAMS[program]} against the coordinator (extra arguments go to {program}).")
    @click.option("--node", help="Connect to this node instead of the coordinator.")
    @click.pass_context
    def run_client(ctx: click.Context, node: str | None) -> None:
        local = LocalCluster.load(cluster_dir(ctx))
        ep = local.endpoint(node or local.spec.coordinator.name)
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE")}
        env.update(PGHOST=ep.host, PGPORT=str(ep.port), PGUSER=ep.user, PGDATABASE=database_name(ctx) or ep.dbname,
                   PGPASSFILE=str(local.passfile))
        exe = local.binaries.path(program)
        os.execve(exe, [exe, *ctx.args], env)  # replaces pgfleet: the terminal, signals and exit code are its

    return run_client


COMMANDS = tuple(client_command(p) for p in PROGRAMS)
