"""``pgfleet restore DIR --dir NEW``: a new local cluster at a backup's consistent point, on newly claimed
ports, whose coordinator reaches only its own restored workers.

1. Verify: pg_verifybackup of every node's copy, the SHA-256 of every WAL file in the manifest.
2. Copy each node into NEW/nodes/<node>, with its WAL; every node gets a new superuser password.
3. The coordinator's passfiles for the workers (in its data directory) are rewritten with the new
   passwords before it starts: from then on it could not log in to the source's workers even if it tried.
4. Workers first, then the coordinator, recover to the restore point privately (node/recovery.py: no TCP,
   a socket in a private directory) and promote. On the coordinator, the foreign servers' host and port
   and the catalog's node rows are rewritten to the restored workers before anything else.
5. Prepared pgfleet transactions left on the workers are settled by the restored coordinator's decisions
   (in_doubt.py).
6. Every server restarts with its normal configuration; cluster.json and pgpass are written last.
On failure the servers are stopped, the ports released and NEW removed (if this run created it).
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from ..errors import ClusterError, PgfleetError, SpecError
from ..execute.connect import Conn
from ..execute.password import passfile_escape
from ..node import binaries as binmod
from ..node.backup_tools import sha256_of, verify_backup, wal_for_restore
from ..node.osuser import check_traversable, give_to, server_account
from ..node.ports import claim_ports, release_ports
from ..node.recovery import install_copy, open_up, private_conn, recover_privately, set_password
from ..node.server import LocalServer
from .archive import RestorePoint, choose_point
from .backup_manifest import BackupManifest
from .in_doubt import Settled, settle_prepared
from .local import ClusterFile, LocalCluster, LocalNode
from .worker_credentials import passfile_name


@dataclass(frozen=True)
class RestoreResult:
    cluster: LocalCluster
    manifest: BackupManifest
    point: RestorePoint
    settled: tuple[Settled, ...]
    seconds: float


def verify(manifest: BackupManifest, backup_dir: Path, bins: binmod.Binaries,
           say: Callable[[str], None] | None = None) -> None:
    """Check every node's copy against its backup_manifest and every WAL file against its checksum."""
    for node in manifest.nodes:
        if say:
            say(f"verify {node.name}")
        verify_backup(bins, backup_dir / "nodes" / node.name, node.name)
        for wal in node.wal:
            if manifest.archive and wal.name.endswith(".partial"):
                continue  # the archiver went on writing it (PostgreSQL checks each record's CRC on replay)
            path = backup_dir / "wal" / node.name / wal.name
            if not path.is_file() or sha256_of(path) != wal.sha256:
                raise SpecError(f"WAL file {path} is missing or damaged (checksum differs from the manifest)",
                                node=node.name, hint="the backup cannot be restored; use another one")


def restore(backup_dir: Path, new_dir: Path, *, say: Callable[[str], None] | None = None,
            pg_bin: str | None = None, target_name: str | None = None, target_time: str | None = None) -> RestoreResult:
    """Restore to the backup's own point, or (archived backups) to a later restore point: ``target_name``,
    or the last one at or before ``target_time``."""
    tell = say or (lambda _msg: None)
    started = time.monotonic()
    backup_dir = backup_dir.absolute()
    manifest = BackupManifest.read(backup_dir)
    base = RestorePoint(manifest.restore_point, manifest.created_at, tuple((n.name, n.restore_lsn)
                                                                           for n in manifest.nodes), manifest.held_ms)
    target = choose_point(backup_dir, base, name=target_name, at=target_time)
    for node in manifest.nodes:
        if (node.user, node.dbname) != (manifest.superuser, manifest.dbname):
            raise SpecError(f"node {node.name} was reached as {node.user} on database {node.dbname}, the coordinator "
                            f"as {manifest.superuser} on {manifest.dbname}",
                            hint="a restored local cluster uses one superuser and database on every node")
    bins = binmod.find(pg_bin)
    verify(manifest, backup_dir, bins, tell)
    new_dir = new_dir.absolute()
    if new_dir.exists() and (not new_dir.is_dir() or any(new_dir.iterdir())):
        raise ClusterError(f"{new_dir} is not empty", hint="restore into a new or empty directory")
    run_as = server_account()
    created = not new_dir.exists()
    new_dir.mkdir(parents=True, exist_ok=True)
    give_to(str(new_dir), None, 0o755 if run_as else 0o700)
    ports: list[int] = []
    servers: list[LocalServer] = []
    socket_dir = Path(tempfile.mkdtemp(prefix="pgfleet-restore-"))
    try:
        check_traversable(str(new_dir), run_as)
        bins = binmod.reachable_by(bins, run_as, Path("/opt/pgfleet"))
        give_to(str(socket_dir), run_as, 0o700)
        ordered = [manifest.coordinator, *manifest.workers]
        ports = claim_ports(len(ordered), new_dir)
        nodes = tuple(LocalNode(name=n.name, role=n.role, port=p, password=secrets.token_urlsafe(24))
                      for n, p in zip(ordered, ports, strict=True))
        spec = ClusterFile(pg_bin=str(bins.bindir), os_user=run_as.user if run_as else None,
                           superuser=manifest.superuser, dbname=manifest.dbname, fast=manifest.fast, nodes=nodes)
        cluster = LocalCluster(new_dir, spec, run_as, bins)
        for node in ordered:
            tell(f"copy {node.name} ({node.data_bytes + node.wal_bytes} bytes)")
            server = cluster.server(node.name)
            install_copy(server, backup_dir / "nodes" / node.name, wal_for_restore(backup_dir / "wal" / node.name))
        _write_worker_passfiles(cluster.server(manifest.coordinator.name), nodes)
        settled = _recover(cluster, manifest, target.name, socket_dir, servers, tell)
        for server in servers:
            tell(f"start {server.name} (port {server.port})")
            open_up(server, fast=manifest.fast)
        cluster.save()
    except BaseException:
        for server in reversed(servers):
            with contextlib.suppress(PgfleetError):
                server.stop(mode="immediate")
        release_ports(ports, new_dir)
        if created:
            shutil.rmtree(new_dir, ignore_errors=True)
        else:
            for child in new_dir.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink()
        raise
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
    return RestoreResult(cluster, manifest, target, tuple(settled), time.monotonic() - started)


def _write_worker_passfiles(coordinator: LocalServer, nodes: tuple[LocalNode, ...]) -> None:
    """The coordinator's passfiles for its workers, with the restored workers' new passwords."""
    for stale in coordinator.datadir.glob("pgfleet_*.pgpass"):
        stale.unlink()
    for node in nodes:
        if node.role == "worker":
            coordinator.write_file(coordinator.datadir / passfile_name(f"pgfleet_{node.name}"),
                                   f"*:*:*:*:{passfile_escape(node.password)}\n")  # 0600, the server's


def _recover(cluster: LocalCluster, manifest: BackupManifest, point: str, socket_dir: Path,
             servers: list[LocalServer], tell: Callable[[str], None]) -> list[Settled]:
    """Recover every node privately (workers first), repoint the coordinator, settle prepared transactions.
    ``servers`` receives each server as it starts (for the caller's clean-up)."""
    conns: dict[str, Conn] = {}
    try:
        for node in [*manifest.workers, manifest.coordinator]:
            server = cluster.server(node.name)
            tell(f"recover {node.name} to {point}")
            servers.append(server)
            recover_privately(server, socket_dir, point, fast=manifest.fast)
            conn = private_conn(server, socket_dir, manifest.superuser, manifest.dbname)
            conns[node.name] = conn
            set_password(conn, manifest.superuser, cluster.node(node.name).password)
            if node.role == "coordinator":
                _repoint(conn, cluster, manifest)
        tell("settle prepared transactions")
        coordinator = conns[manifest.coordinator.name]
        return settle_prepared(coordinator, {n.name: conns[n.name] for n in manifest.workers})
    finally:
        for conn in conns.values():
            conn.close()


def _repoint(conn: Conn, cluster: LocalCluster, manifest: BackupManifest) -> None:
    """The coordinator's foreign servers and node rows: the restored workers, nothing of the source."""
    with conn.transaction():
        for node in manifest.nodes:
            new = cluster.node(node.name)
            if node.role == "worker":
                conn.execute(sql.SQL("ALTER SERVER {} OPTIONS (SET host {}, SET port {})").format(
                    sql.Identifier(f"pgfleet_{node.name}"), sql.Literal("127.0.0.1"), sql.Literal(str(new.port))))
            conn.execute("UPDATE pgfleet.nodes SET host = '127.0.0.1', port = %s, kind = 'local' WHERE name = %s",
                         (new.port, node.name))
        known = {n.name for n in manifest.nodes}
        row = conn.execute("SELECT string_agg(name, ', ') FROM pgfleet.nodes WHERE NOT (name = ANY (%s))",
                           (sorted(known),)).fetchone()
        if row is not None and row[0]:
            raise ClusterError(f"the restored catalog names nodes the backup does not hold: {row[0]}",
                               hint="the backup is incomplete; use another one")
