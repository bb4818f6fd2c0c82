"""Continuous WAL archiving after a backup (``pgfleet backup DIR --archive``) and the consistent points
made later (``pgfleet restore-point NAME``), to which ``pgfleet restore --target-name/--target-time`` goes.

One detached pg_receivewal per node streams from the backup's replication slot into ``DIR/wal/<node>``
(``--synchronous``: it confirms only what it has flushed, so the slot keeps the rest). The cluster directory
holds ``archivers.json`` (pids and slot); the backup directory holds ``restore-points.json``. A point in time
is only consistent across nodes at such a restore point (commits held while it is made), so a restore to a
time goes to the last restore point at or before it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from ..errors import ExecuteError, PgfleetError, SpecError
from ..execute import Endpoint
from ..execute.connect import connect
from ..execute.slots import drop_slot
from ..node import binaries as binmod
from ..node.backup_tools import start_receiver
from .fleet import Fleet
from .local import LocalCluster
from .restore_point import ConsistentPoint, create_consistent_point

ARCHIVERS = "archivers.json"
POINTS = "restore-points.json"
POINT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,60}$")


@dataclass(frozen=True)
class Archiver:
    node: str
    pid: int
    slot: str
    backup_dir: str


@dataclass(frozen=True)
class RestorePoint:
    name: str
    created_at: str  # ISO time, UTC
    lsns: tuple[tuple[str, str], ...]
    held_ms: float


def read_archivers(local: LocalCluster) -> list[Archiver]:
    path = local.directory / ARCHIVERS
    if not path.is_file():
        return []
    return [Archiver(**a) for a in json.loads(path.read_text())]


def start_archivers(local: LocalCluster, backup_dir: Path, endpoints: Mapping[str, Endpoint], slot: str,
                    bins: binmod.Binaries) -> list[Archiver]:
    """A pg_receivewal per node from ``slot`` into ``backup_dir/wal/<node>``; recorded in archivers.json."""
    archivers = []
    for name, ep in endpoints.items():
        pid = start_receiver(bins, ep, backup_dir / "wal" / name, slot=slot, passfile=local.passfile,
                             log_path=backup_dir / f"archive-{name}.log")
        archivers.append(Archiver(name, pid, slot, str(backup_dir)))
    path = local.directory / ARCHIVERS
    path.write_text(json.dumps([asdict(a) for a in archivers], indent=2) + "\n")
    os.chmod(path, 0o600)
    return archivers


def _is_receiver(pid: int) -> bool:
    try:
        return b"pg_receivewal" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def stop_archivers(local: LocalCluster, wait: float = 10.0) -> list[Archiver]:
    """Stop the archivers (they flush what they received) and drop their slots; returns them."""
    archivers = read_archivers(local)
    for a in archivers:
        if _is_receiver(a.pid):
            os.kill(a.pid, signal.SIGINT)
    deadline = time.monotonic() + wait
    while any(_is_receiver(a.pid) for a in archivers) and time.monotonic() < deadline:
        for a in archivers:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(a.pid, os.WNOHANG)
        time.sleep(0.1)
    for a in archivers:
        with contextlib.suppress(psycopg.Error, PgfleetError), connect(local.endpoint(a.node)) as conn:
            drop_slot(conn, a.slot)
    (local.directory / ARCHIVERS).unlink(missing_ok=True)
    return archivers


def read_points(backup_dir: Path) -> list[RestorePoint]:
    path = backup_dir / POINTS
    if not path.is_file():
        return []
    return [RestorePoint(name=p["name"], created_at=p["created_at"], lsns=tuple((n, lsn) for n, lsn in p["lsns"]),
                         held_ms=p["held_ms"]) for p in json.loads(path.read_text())]


def record_point(backup_dir: Path, point: ConsistentPoint) -> RestorePoint:
    entry = RestorePoint(point.name, dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), point.lsns,
                         round(point.held_ms, 2))
    points = [*read_points(backup_dir), entry]
    tmp = backup_dir / (POINTS + ".tmp")
    tmp.write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n")
    tmp.replace(backup_dir / POINTS)
    return entry


def add_restore_point(fleet: Fleet, name: str, *, lock_wait: float = 30.0, archive_wait: float = 30.0) -> RestorePoint:
    """A consistent point ``name`` on every node, recorded in the running archive; returns once every
    archiver has received it."""
    if not POINT_NAME.match(name):
        raise SpecError(f"malformed restore point name {name!r}", hint="use letters, digits, _ . - (at most 60)")
    if fleet.local is None or not (archivers := read_archivers(fleet.local)):
        raise SpecError("no WAL archive is running for this cluster", hint="start one with 'pgfleet backup DIR --archive'")
    backup_dir = Path(archivers[0].backup_dir)
    if any(p.name == name for p in read_points(backup_dir)):
        raise SpecError(f"the archive in {backup_dir} has a restore point {name} already", hint="choose another name")
    local = fleet.local
    conns = {a.node: connect(local.endpoint(a.node)) for a in archivers}
    try:
        coordinator = local.spec.coordinator.group_name
        point = create_consistent_point(conns[coordinator], {n: c for n, c in conns.items() if n != coordinator},
                                        name, coordinator_name=coordinator, lock_wait=lock_wait)
        lsns = dict(point.lsns)
        deadline = time.monotonic() + archive_wait
        for a in archivers:
            while True:
                row = conns[a.node].execute(
                    "SELECT restart_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s",
                    (lsns[a.node], a.slot)).fetchone()
                if row is not None and row[0]:
                    break
                if time.monotonic() > deadline:
                    raise ExecuteError(f"the archiver of {a.node} has not received restore point {name} within "
                                       f"{archive_wait:.0f} s", node=a.node,
                                       hint=f"see {backup_dir}/archive-{a.node}.log")
                time.sleep(0.1)
    finally:
        for conn in conns.values():
            conn.close()
    return record_point(backup_dir, point)


def choose_point(backup_dir: Path, base: RestorePoint, *, name: str | None, at: str | None) -> RestorePoint:
    """The restore point a restore goes to: by name, or the last one at or before time ``at``."""
    recorded = read_points(backup_dir)  # the base point with the time it was made, when recorded
    points = recorded if any(p.name == base.name for p in recorded) else [base, *recorded]
    if name is not None:
        for p in points:
            if p.name == name:
                return p
        raise SpecError(f"the backup in {backup_dir} has no restore point {name!r}",
                        hint="its points: " + ", ".join(p.name for p in points))
    if at is None:
        return base
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        raise SpecError(f"--target-time {at!r} is not an ISO time", hint="e.g. 2026-11-21T14:05:00+00:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    earlier = [p for p in points if dt.datetime.fromisoformat(p.created_at) <= when]
    if not earlier:
        raise SpecError(f"the backup in {backup_dir} has no restore point at or before {at}",
                        hint=f"its first is {points[0].name} at {points[0].created_at}")
    return max(earlier, key=lambda p: p.created_at)
