"""The PostgreSQL client programs that come with the binaries (psql, pgbench, pg_dump), pointed at the cluster."""

from __future__ import annotations

import os

import click

from ..cluster.local import LocalCluster
from .common import cluster_dir, database_name

# program -> (what it is for, whether it goes through the router by default), in its --help
PROGRAMS = {
    "psql": ("Run psql", True),
    "pgbench": ("Run pgbench", True),
    # a dump reads whole tables and the catalog: nothing to route, so it talks to the coordinator itself
    "pg_dump": ("Run pg_dump", False),
}


def client_command(program: str) -> click.Command:
    """``pgfleet PROGRAM [--node NAME] [args…]``: the program of the cluster's PostgreSQL, connected to the
    router when it runs (psql, pgbench) or the coordinator (pg_dump), or to node NAME, through libpq's
    environment and a 0600 passfile; args pass through."""
    purpose, via_router = PROGRAMS[program]
    target = "the router (the coordinator when it does not run)" if via_router else "the coordinator"

    @click.command(program, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   help=f"{purpose} against {target} (extra arguments go to {program}).")
    @click.option("--node", help="Connect to this node instead (coord: the coordinator itself).")
    @click.pass_context
    def run_client(ctx: click.Context, node: str | None) -> None:
        from ..router.files import PASSFILE
        from ..router.process import running

        local = LocalCluster.load(cluster_dir(ctx))
        ep = local.endpoint(node or local.spec.coordinator.name)
        host, port, passfile = ep.host, ep.port, local.passfile
        router = running(local) if via_router and node is None else None
        if router is not None:
            host, port, passfile = "127.0.0.1", router.port, local.directory / PASSFILE
        env = {k: v for k, v in os.environ.items() if k not in ("PGPASSWORD", "PGSERVICE", "PGSERVICEFILE")}
        env.update(PGHOST=host, PGPORT=str(port), PGUSER=ep.user, PGDATABASE=database_name(ctx) or ep.dbname,
                   PGPASSFILE=str(passfile))
        exe = local.binaries.path(program)
        os.execve(exe, [exe, *ctx.args], env)  # replaces pgfleet: the terminal, signals and exit code are its

    return run_client


COMMANDS = tuple(client_command(p) for p in PROGRAMS)
