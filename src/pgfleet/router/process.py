"""The router of a local cluster as a detached background process: its port claimed machine-wide and
kept across restarts (router.settings.json), its pid, log and status files in the cluster directory,
and a passfile for clients of its port. ``pgfleet up`` starts it: it is the cluster's endpoint."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import quote

from ..cluster.local import LocalCluster
from ..errors import NodeError, RouterError
from ..execute import Endpoint
from ..node.ports import claim_port, claim_ports, release_ports
from .backend import WorkerLogin
from .files import (LOG_FILE, PASSFILE, PID_FILE, RouterProcess, RouterSettings, died, locked,
                    read_settings, terminate, write_settings)
from .files import running as running_in
from .files import status_file as status_file_in
from .keys import MAX_PROCESS_INDEX
from .routing import Routing
from .context import Address
from .snapshot import RoutingTopology

FIRST_PORT = 6432
START_TIMEOUT = 15.0

__all__ = ["PID_FILE", "RouterProcess", "RouterStatus", "dsn", "ensure_running", "read_status", "running",
           "start_background", "start_endpoint", "stop_background"]


@dataclass(frozen=True)
class RouterStatus:
    pid: int
    port: int
    processes: int
    coordinator: str
    uptime_seconds: float
    routing: bool
    # every counter of RouterStats (and worker_connections), summed over the processes
    counters: dict[str, int] = field(default_factory=dict)
    # per worker node: the pools' size, in_use, idle and waiting, summed over the processes
    pools: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def to_coordinator(self) -> int:
        """Statements (Query and Execute messages) the coordinator ran rather than a worker."""
        return max(0, self.counters.get("queries", 0) + self.counters.get("executes", 0) - self.counters.get("routed", 0))

    def as_dict(self) -> dict[str, object]:
        """Flat, for --json: the settings, every counter, and statements_to_coordinator."""
        return {"running": True, "pid": self.pid, "port": self.port, "processes": self.processes,
                "coordinator": self.coordinator, "uptime_seconds": self.uptime_seconds, "routing": self.routing,
                **self.counters, "statements_to_coordinator": self.to_coordinator, "pools": self.pools}


def coordinator_address(local: LocalCluster) -> Callable[[], Address]:
    """The coordinator's current address, re-read from cluster.json when the file changed (a failover)."""
    path = local.directory / "cluster.json"
    seen = [0.0]

    def address() -> Address:
        with contextlib.suppress(OSError):
            mtime = path.stat().st_mtime
            if mtime != seen[0]:
                local.reload_spec()
                seen[0] = mtime
        return ("127.0.0.1", local.spec.coordinator.port)

    return address


def running(local: LocalCluster) -> RouterProcess | None:
    """The router when its first process is alive."""
    return running_in(local.directory)


def status_file(local: LocalCluster, index: int) -> Path:
    return status_file_in(local.directory, index)


def _accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _write_passfile(local: LocalCluster, port: int) -> Path:
    """Clients of the router authenticate against the coordinator, so its password serves the router's port."""
    coord = local.spec.coordinator
    escaped = coord.password.replace("\\", "\\\\").replace(":", "\\:")
    path = local.directory / PASSFILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"127.0.0.1:{port}:*:{local.spec.superuser}:{escaped}\n")
    return path


def dsn(local: LocalCluster, port: int, *, with_password: bool = False) -> str:
    """The router's connection string: the password in its 0600 passfile, or in the string."""
    if with_password:
        user = f"{local.spec.superuser}:{quote(local.spec.coordinator.password, safe='')}"
        return f"postgresql://{user}@127.0.0.1:{port}/{local.spec.dbname}"
    return f"postgresql://{local.spec.superuser}@127.0.0.1:{port}/{local.spec.dbname}?passfile={local.directory / PASSFILE}"


def default_processes() -> int:
    return max(1, os.cpu_count() or 1)


def _claim_endpoint_port(local: LocalCluster, port: int | None) -> tuple[int, str | None]:
    """The port to accept on: the one asked for, else the one the cluster kept, else the first free one
    from 6432. A kept port that something else took meanwhile is replaced (and the reason returned)."""
    if port is not None:
        claim_port(port, local.directory)
        return port, None
    settings = read_settings(local.directory)
    if settings is not None:
        try:
            _claim_kept(local, settings.port)
            return settings.port, None
        except NodeError:
            note = f"port {settings.port} is taken by another program"
            return claim_ports(1, local.directory, start=FIRST_PORT)[0], note
    return claim_ports(1, local.directory, start=FIRST_PORT)[0], None


def _claim_kept(local: LocalCluster, port: int, wait: float = 3.0) -> None:
    """Claim the router's kept port; a router that just died may hold it for a moment longer."""
    deadline = time.monotonic() + wait
    while True:
        try:
            claim_port(port, local.directory)
            return
        except NodeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def start_background(local: LocalCluster, port: int | None = None, *, route: bool = False, processes: int = 1,
                     pool_size: int | None = None, note: Callable[[str], None] | None = None) -> tuple[RouterProcess, bool]:
    """Start the router unless it runs; return it and whether it was started now. With ``processes``
    above 1, that many processes accept on the same port (SO_REUSEPORT), each also on its own port. The
    port and settings are kept in the cluster directory for the next start."""
    if not 1 <= processes <= MAX_PROCESS_INDEX + 1:
        raise RouterError(f"--processes {processes} is out of range", hint=f"use 1..{MAX_PROCESS_INDEX + 1}")
    if pool_size is not None and pool_size < 1:
        raise RouterError(f"--pool-size {pool_size} is out of range",
                          hint="use 1 or more worker connections per node and router process")
    with locked(local.directory):
        current = running(local)
        if current is not None:
            return current, False
        terminate(local.directory)  # a router that died: its other processes and files
        return _start(local, port, route=route, processes=processes, pool_size=pool_size, note=note), True


def _start(local: LocalCluster, port: int | None, *, route: bool, processes: int, pool_size: int | None = None,
           note: Callable[[str], None] | None = None) -> RouterProcess:
    port, moved = _claim_endpoint_port(local, port)
    if moved and note:
        note(f"{moved}: the router moves to port {port}")
    peer_ports = claim_ports(processes, local.directory, start=port + 1, avoid=[port]) if processes > 1 else []
    log_path = local.directory / LOG_FILE
    procs: list[subprocess.Popen[bytes]] = []
    with open(log_path, "a") as log:
        for index in range(processes):
            extra = ["--process-index", str(index), "--peer-ports", ",".join(map(str, peer_ports))] if peer_ports else []
            extra += ["--pool-size", str(pool_size)] if pool_size is not None else []
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pgfleet.cli.main", "--dir", str(local.directory.resolve()), "router", "run",
                 "--port", str(port), *(["--route"] if route else []), *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True))
    rows = [f"{proc.pid} {port}" + (f" {peer_ports[i]}" if peer_ports else "") for i, proc in enumerate(procs)]
    (local.directory / PID_FILE).write_text("\n".join(rows) + "\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not all(_accepts(p) for p in (peer_ports or [port])):
        if any(proc.poll() is not None for proc in procs) or time.monotonic() > deadline:
            for proc in procs:
                with contextlib.suppress(OSError):
                    proc.kill()
            (local.directory / PID_FILE).unlink(missing_ok=True)
            release_ports(peer_ports, local.directory)
            tail = log_path.read_text().strip().splitlines()[-3:]
            raise RouterError(f"the router did not start on port {port}" + (f": {' / '.join(tail)}" if tail else ""),
                              hint=f"see {log_path}")
        time.sleep(0.05)
    _write_passfile(local, port)
    write_settings(local.directory, RouterSettings(port=port, processes=processes, route=route, pool_size=pool_size))
    return RouterProcess(procs[0].pid, port, tuple(p.pid for p in procs), tuple(peer_ports))


def start_endpoint(local: LocalCluster, note: Callable[[str], None] | None = None,
                   pool_size: int | None = None) -> tuple[RouterProcess, bool]:
    """The router as ``pgfleet up`` runs it: with the settings it kept (port, processes, routing, pool
    size), else routing on, one process per core, the first free port from 6432; ``pool_size`` replaces
    the kept one."""
    settings = read_settings(local.directory)
    if settings is None:
        return start_background(local, route=True, processes=default_processes(), pool_size=pool_size, note=note)
    return start_background(local, route=settings.route, processes=settings.processes,
                            pool_size=pool_size if pool_size is not None else settings.pool_size, note=note)


def stop_background(local: LocalCluster, wait: float = 10.0) -> bool:
    """Stop the router; its port stays the cluster's for the next start. False when it was not running."""
    with locked(local.directory):
        return terminate(local.directory, wait) is not None


def ensure_running(local: LocalCluster, note: Callable[[str], None] | None = None) -> RouterProcess | None:
    """Start the router again, with its kept settings, if it died (its pid file is there, its process is
    not): what the monitor does every round. None when nothing was to be done. One attempt: when it
    fails, the pid file is gone, so the next rounds leave it to 'pgfleet up'."""
    if not died(local.directory):
        return None
    settings = read_settings(local.directory)
    with locked(local.directory):
        if not died(local.directory):  # stopped or restarted meanwhile
            return None
        terminate(local.directory)
        if settings is not None:
            _claim_kept(local, settings.port)
        return _start(local, settings.port if settings else None, route=settings.route if settings else True,
                      processes=settings.processes if settings else 1,
                      pool_size=settings.pool_size if settings else None, note=note)


COUNTER_SKIP = ("pid", "port", "host", "process_index", "started", "updated", "routing", "coordinator", "pools")


def _sum_pools(files: list[dict[str, object]]) -> dict[str, dict[str, int]]:
    """Each node's pool figures (size, in_use, idle, waiting) summed over the processes' status files."""
    pools: dict[str, dict[str, int]] = {}
    for data in files:
        found = data.get("pools")
        for node, figures in (found.items() if isinstance(found, dict) else ()):
            into = pools.setdefault(str(node), {"size": 0, "in_use": 0, "idle": 0, "waiting": 0})
            for name in into:
                value = figures.get(name) if isinstance(figures, dict) else None
                into[name] += value if isinstance(value, int) else 0
    return dict(sorted(pools.items()))


def read_status(local: LocalCluster) -> RouterStatus | None:
    """The router's state, its counters summed over its processes (every integer of the status files,
    so counters added to RouterStats appear without a change here)."""
    current = running(local)
    if current is None:
        return None
    files: list[dict[str, object]] = []
    for index in range(len(current.pids) or 1):
        try:
            files.append(json.loads(status_file(local, index).read_text()))
        except (OSError, ValueError):
            files.append({})
    first = files[0]
    totals: dict[str, int] = {}
    for data in files:
        for name, value in data.items():
            if name not in COUNTER_SKIP and isinstance(value, int) and not isinstance(value, bool):
                totals[name] = totals.get(name, 0) + value
    return RouterStatus(pid=current.pid, port=current.port, processes=len(current.pids) or 1,
                        coordinator=str(first.get("coordinator", "?")),
                        uptime_seconds=round(time.time() - float(str(first.get("started", time.time()))), 1),
                        routing=bool(first.get("routing", False)), counters=totals, pools=_sum_pools(files))


def local_routing(local: LocalCluster, dbname: str | None = None) -> Routing:
    """Routing for a local cluster's database ``dbname`` (default: its main one): the catalog read from
    the coordinator, workers (their database of that name) reached as the cluster superuser with the
    passwords of cluster.json (re-read after a failover)."""
    from ..execute.connect import connect
    from .topology import load_routing_topology

    address = coordinator_address(local)
    database = dbname or local.spec.dbname

    def endpoint(node: str) -> Endpoint:
        address()  # re-reads cluster.json when it changed
        return replace(local.endpoint(node), dbname=database)

    def load() -> RoutingTopology:
        with connect(endpoint("coord"), timeout=5) as conn:
            return load_routing_topology(conn)

    def login(node: str) -> WorkerLogin:
        ep = endpoint(node)
        return WorkerLogin(ep.host, ep.port, ep.user, ep.password or "", ep.dbname)

    def sync_roles() -> None:
        from ..cluster.fleet import Fleet
        from ..cluster.privileges import sync_roles as copy_roles

        with Fleet(endpoint("coord"), local) as fleet:
            copy_roles(fleet)

    return Routing(load_topology=load, login=login, dbname=database, sync_roles=sync_roles,
                   coordinator_login=lambda: login(local.spec.coordinator.group_name))


def local_catalog_databases(local: LocalCluster) -> Callable[[], list[str]]:
    """The coordinator's databases holding a pgfleet catalog, listed now (router recovery visits each)."""
    from ..cluster.databases import catalog_databases

    return lambda: catalog_databases(local.endpoint(local.spec.coordinator.group_name))
