"""A plain PostgreSQL server (no pgfleet) started by a test: where a dump is restored."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgfleet.cluster.local import LocalCluster
from pgfleet.execute import Endpoint
from pgfleet.node.ports import claim_ports, release_ports
from pgfleet.node.server import LocalServer
from pgfleet.proc import Completed, run


@contextmanager
def plain_server(cluster: LocalCluster, home: Path) -> Iterator[Endpoint]:
    """A fresh server with the cluster's binaries, account and superuser name, on a claimed port."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    port = claim_ports(1, home)[0]
    server = LocalServer(name="plain", home=home / "node", port=port, binaries=cluster.binaries, run_as=cluster.run_as)
    password = secrets.token_urlsafe(16)
    try:
        server.initdb(cluster.spec.superuser, password, fast=True)
        server.start()
        yield Endpoint(name="plain", host="127.0.0.1", port=port, dbname="postgres", user=cluster.spec.superuser,
                       password=password)
    finally:
        if server.is_running():
            server.stop("immediate")
        release_ports([port], home)
        shutil.rmtree(home, ignore_errors=True)


def client(cluster: LocalCluster, program: str, ep: Endpoint, *args: str, check: bool = True) -> Completed:
    """Run pg_dump/pg_restore/psql of the cluster's binaries against ``ep`` (password through the environment)."""
    argv = [cluster.binaries.path(program), "-h", ep.host, "-p", str(ep.port), "-U", ep.user, *args]
    return run(argv, env={"PGPASSWORD": ep.password or "", "PGDATABASE": ep.dbname}, timeout=300, check=check,
               what=program)
