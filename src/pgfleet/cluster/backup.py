"""``pgfleet backup DIR``: a physical backup of every node's primary and the WAL up to one cluster-wide
consistent point, while the cluster takes writes.

1. On every node a CHECKPOINT, then a physical replication slot (``pgfleet_backup_<token>``) that keeps the
   WAL from that checkpoint on.
2. pg_basebackup of each node in turn into ``DIR/nodes/<node>`` (its WAL fetched at the end, SHA-256 manifest).
3. The consistent point (restore_point.py): commits held, a restore point on every node, released.
4. pg_receivewal from each slot up to that node's restore point into ``DIR/wal/<node>``.
5. The slots are dropped; ``pgfleet-backup.json`` describes it all (no password; the coordinator's data
   directory holds its passfiles for the workers, as any copy of it does).
On failure the slots are dropped and what this run wrote is removed.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg

from .. import __version__
from ..errors import PgfleetError, SpecError
from ..execute import Endpoint
from ..execute.connect import Conn, connect
from ..execute.slots import drop_slot
from ..node import binaries as binmod
from ..node.backup_tools import base_backup, receive_wal, sha256_of, tree_size
from ..node.server import process_alive
from ..topology import Node
from ..topology.read import read_topology
from .archive import read_archivers, record_point, start_archivers
from .backup_manifest import MANIFEST_NAME, BackupManifest, NodeBackup, WalFile
from .fleet import Fleet
from .restore_point import ConsistentPoint, create_consistent_point

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (node, done bytes, total bytes)


@dataclass(frozen=True)
class BackupResult:
    manifest: BackupManifest
    directory: Path


def backup(fleet: Fleet, directory: Path, *, progress: Progress | None = None,
           say: Callable[[str], None] | None = None, lock_wait: float = 30.0, archive: bool = False) -> BackupResult:
    """Back up the whole fleet into ``directory`` (new or empty) at one consistent point; with ``archive``,
    keep archiving every node's WAL into it afterwards (archive.py)."""
    tell = say or (lambda _msg: None)
    directory = directory.absolute()
    if archive and fleet.local is None:
        raise SpecError("--archive needs a local cluster (its archivers log in with the cluster's passfile)",
                        hint="back up without --archive")
    if archive and fleet.local is not None and read_archivers(fleet.local):
        raise SpecError("a WAL archive is already running for this cluster",
                        hint="stop it first with 'pgfleet archive-stop'")
    created = _prepare_directory(directory)
    bins = fleet.local.binaries if fleet.local is not None else binmod.find()
    topo = read_topology(fleet.conn())
    endpoints = {fleet.coordinator.name: fleet.coordinator}
    endpoints.update({n.name: fleet.endpoint(n) for n in topo.nodes if n.role == "worker"})
    roles = {fleet.coordinator.name: "coordinator", **{n.name: "worker" for n in topo.nodes if n.role == "worker"}}
    started = time.monotonic()
    # a backup's slot names its process, so that a later backup drops what a killed one left (archive.py
    # manages the archivers' slots)
    slot = f"pgfleet_archive_{secrets.token_hex(4)}" if archive else f"pgfleet_backup_{os.getpid()}_{secrets.token_hex(4)}"
    point_name = "pgfleet_" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S_%fZ")
    conns: dict[str, Conn] = {}
    try:
        for name, ep in endpoints.items():
            conns[name] = connect(ep)
        for name, conn in conns.items():
            if fleet.local is not None:  # the pids are this machine's
                for left in drop_abandoned_slots(conn):
                    tell(f"dropped replication slot {left} on {name}, left by a backup that did not finish")
        for conn in conns.values():  # the slot keeps WAL from the last checkpoint's redo: make that now
            conn.execute("CHECKPOINT")
            conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
        for name, ep in endpoints.items():
            tell(f"base backup of {name} ({ep.host}:{ep.port})")
            base_backup(bins, ep, directory / "nodes" / name, progress=_for_node(progress, name))
        tell(f"restore point {point_name} on every node")
        point = create_consistent_point(conns[fleet.coordinator.name],
                                        {n: c for n, c in conns.items() if n != fleet.coordinator.name},
                                        point_name, coordinator_name=fleet.coordinator.name, lock_wait=lock_wait)
        lsns = dict(point.lsns)
        for name, ep in endpoints.items():
            tell(f"WAL of {name} up to {lsns[name]}")
            receive_wal(bins, ep, directory / "wal" / name, slot=slot, end_lsn=lsns[name])
        manifest = _manifest(fleet, directory, endpoints, roles, conns, point, topo.nodes,
                             seconds=time.monotonic() - started, archive=archive)
        manifest.write(directory)
        record_point(directory, point)
        if archive and fleet.local is not None:
            tell("WAL archiving goes on: 'pgfleet restore-point NAME' makes later points, 'pgfleet archive-stop' ends it")
            start_archivers(fleet.local, directory, endpoints, slot, bins)
    except BaseException:
        _remove_partial(directory, created)
        archive = False  # the slots go with the failed backup
        raise
    finally:
        for conn in conns.values():
            if not archive:
                with contextlib.suppress(psycopg.Error):
                    drop_slot(conn, slot)
            conn.close()
    return BackupResult(manifest, directory)


def drop_abandoned_slots(conn: Conn) -> list[str]:
    """Drop the inactive slots of backups whose process is gone (killed before it could drop them: a slot
    keeps every later WAL segment on the node until the disk is full)."""
    dropped = []
    for (name,) in conn.execute("SELECT slot_name FROM pg_replication_slots WHERE NOT active "
                                "AND slot_name ~ '^pgfleet_backup_[0-9]+_[0-9a-f]+$'").fetchall():
        pid = int(str(name).split("_")[2])
        if pid != os.getpid() and not process_alive(pid):
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND NOT active", (name,))
            dropped.append(str(name))
    return dropped


def _for_node(progress: Progress | None, node: str) -> Callable[[int, int], None] | None:
    if progress is None:
        return None
    report = progress
    return lambda done, total: report(node, done, total)


def _manifest(fleet: Fleet, directory: Path, endpoints: dict[str, Endpoint], roles: dict[str, str],
              conns: dict[str, Conn], point: ConsistentPoint, catalog: tuple[Node, ...],
              seconds: float, archive: bool) -> BackupManifest:
    lsns = dict(point.lsns)
    nodes = []
    for name, ep in endpoints.items():
        row = conns[name].execute("SELECT current_setting('server_version_num')::int").fetchone()
        wal_dir = directory / "wal" / name
        wal = tuple(WalFile(p.name, p.stat().st_size, sha256_of(p)) for p in sorted(wal_dir.iterdir()) if p.is_file())
        nodes.append(NodeBackup(name=name, role=roles[name], host=ep.host, port=ep.port, dbname=ep.dbname,
                                user=ep.user, server_version=int(row[0]) if row else 0, restore_lsn=lsns[name],
                                data_bytes=tree_size(directory / "nodes" / name), wal=wal))
    return BackupManifest(
        pgfleet_version=__version__, created_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        restore_point=point.name, superuser=fleet.coordinator.user, dbname=fleet.coordinator.dbname,
        fast=bool(fleet.local and fleet.local.spec.fast), held_ms=round(point.held_ms, 2),
        waited_ms=round(point.waited_ms, 2), seconds=round(seconds, 2), nodes=tuple(nodes),
        catalog_nodes=catalog, archive=archive)


def _prepare_directory(directory: Path) -> bool:
    """Create ``directory`` (0700) or accept an empty one; True if it was created."""
    if directory.exists():
        if not directory.is_dir():
            raise SpecError(f"{directory} is not a directory", hint="give a new or empty directory")
        if any(directory.iterdir()):
            what = "a pgfleet backup" if (directory / MANIFEST_NAME).exists() else "files"
            raise SpecError(f"{directory} already holds {what}", hint="give a new or empty directory")
        os.chmod(directory, 0o700)
        return False
    directory.mkdir(parents=True, mode=0o700)
    return True


def _remove_partial(directory: Path, created: bool) -> None:
    if created:
        shutil.rmtree(directory, ignore_errors=True)
        return
    for child in directory.iterdir():
        with contextlib.suppress(OSError, PgfleetError):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
