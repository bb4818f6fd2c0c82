"""The router of a local cluster as a detached background process: its port claimed machine-wide, its
pid, log and status files in the cluster directory, and a passfile for clients of its port."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..cluster.local import LocalCluster
from ..errors import RouterError
from ..node.ports import claim_port, claim_ports, release_ports
from .backend import WorkerLogin
from .keys import MAX_PROCESS_INDEX
from .routing import Routing
from .context import Address
from .snapshot import RoutingTopology

PID_FILE = "router.pid"
LOG_FILE = "router.log"
STATUS_FILE = "router.json"
PASSFILE = "router.pgpass"
FIRST_PORT = 6432
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class RouterProcess:
    pid: int  # process 0's
    port: int  # the port every process accepts on
    pids: tuple[int, ...] = ()  # every process, by index
    peer_ports: tuple[int, ...] = ()  # each process's own port (cancel requests forwarded between them)


@dataclass(frozen=True)
class RouterStatus:
    pid: int
    port: int
    processes: int
    coordinator: str
    uptime_seconds: float
    routing: bool
    clients_active: int
    clients_total: int
    queries: int
    executes: int
    routed: int
    routing_fallbacks: int
    pinned_sessions: int
    cancels: int
    protocol_errors: int
    worker_transactions: int
    coordinator_transactions: int
    two_phase_commits: int
    recovered_commits: int
    recovered_aborts: int
    in_doubt: int


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
    """The router when its first process is alive. The pid file has one line per process: pid, shared
    port, and the process's own port when there are several."""
    try:
        rows = [line.split() for line in (local.directory / PID_FILE).read_text().splitlines() if line.strip()]
        pids = tuple(int(row[0]) for row in rows)
        port = int(rows[0][1])
        peer_ports = tuple(int(row[2]) for row in rows if len(row) > 2)
        os.kill(pids[0], 0)
    except (OSError, ValueError, IndexError):
        return None
    return RouterProcess(pids[0], port, pids, peer_ports)


def status_file(local: LocalCluster, index: int) -> Path:
    return local.directory / (STATUS_FILE if index == 0 else f"router.{index}.json")


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


def dsn(local: LocalCluster, port: int) -> str:
    return f"postgresql://{local.spec.superuser}@127.0.0.1:{port}/{local.spec.dbname}?passfile={local.directory / PASSFILE}"


def default_processes() -> int:
    return max(1, os.cpu_count() or 1)


def start_background(local: LocalCluster, port: int | None = None, *, route: bool = False,
                     processes: int = 1) -> tuple[RouterProcess, bool]:
    """Start the router unless it runs; return it and whether it was started now. With ``processes``
    above 1, that many processes accept on the same port (SO_REUSEPORT), each also on its own port."""
    if not 1 <= processes <= MAX_PROCESS_INDEX + 1:
        raise RouterError(f"--processes {processes} is out of range", hint=f"use 1..{MAX_PROCESS_INDEX + 1}")
    current = running(local)
    if current is not None:
        return current, False
    if port is not None:
        claim_port(port, local.directory)
    else:
        port = claim_ports(1, local.directory, start=FIRST_PORT)[0]
    peer_ports = claim_ports(processes, local.directory, start=port + 1) if processes > 1 else []
    claimed = [port, *peer_ports]
    log_path = local.directory / LOG_FILE
    procs: list[subprocess.Popen[bytes]] = []
    with open(log_path, "a") as log:
        for index in range(processes):
            extra = ["--process-index", str(index), "--peer-ports", ",".join(map(str, peer_ports))] if peer_ports else []
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "pgfleet.cli.main", "--dir", str(local.directory), "router", "run",
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
            release_ports(claimed, local.directory)
            tail = log_path.read_text().strip().splitlines()[-3:]
            raise RouterError(f"the router did not start on port {port}" + (f": {' / '.join(tail)}" if tail else ""),
                              hint=f"see {log_path}")
        time.sleep(0.05)
    _write_passfile(local, port)
    return RouterProcess(procs[0].pid, port, tuple(p.pid for p in procs), tuple(peer_ports)), True


def _wait_gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.kill(pid, 0)
        except OSError:
            return True
        time.sleep(0.05)
    return False


def stop_background(local: LocalCluster, wait: float = 10.0) -> bool:
    current = running(local)
    if current is None:
        return False
    pids = current.pids or (current.pid,)
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    for index, pid in enumerate(pids):
        if not _wait_gone(pid, deadline):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        status_file(local, index).unlink(missing_ok=True)
    (local.directory / PID_FILE).unlink(missing_ok=True)
    release_ports([current.port, *current.peer_ports], local.directory)
    return True


COUNTERS = ("clients_active", "clients_total", "queries", "executes", "routed", "routing_fallbacks",
            "pinned_sessions", "cancels", "protocol_errors", "worker_transactions", "coordinator_transactions",
            "two_phase_commits", "recovered_commits", "recovered_aborts", "in_doubt")


def read_status(local: LocalCluster) -> RouterStatus | None:
    """The router's state, its counters summed over its processes."""
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
    totals = {name: sum(int(str(f.get(name, 0))) for f in files) for name in COUNTERS}
    return RouterStatus(pid=current.pid, port=current.port, processes=len(current.pids) or 1,
                        coordinator=str(first.get("coordinator", "?")),
                        uptime_seconds=round(time.time() - float(str(first.get("started", time.time()))), 1),
                        routing=bool(first.get("routing", False)), **totals)


def local_routing(local: LocalCluster) -> Routing:
    """Routing for a local cluster: the catalog read from the coordinator, workers reached as the
    cluster superuser with the passwords of cluster.json (re-read after a failover)."""
    from ..execute.connect import connect
    from .topology import load_routing_topology

    address = coordinator_address(local)

    def load() -> RoutingTopology:
        address()  # re-reads cluster.json when it changed
        with connect(local.endpoint("coord"), timeout=5) as conn:
            return load_routing_topology(conn)

    def login(node: str) -> WorkerLogin:
        address()
        ep = local.endpoint(node)
        return WorkerLogin(ep.host, ep.port, ep.user, ep.password or "", ep.dbname)

    def sync_roles() -> None:
        from ..cluster.fleet import Fleet
        from ..cluster.privileges import sync_roles as copy_roles

        with Fleet(local.endpoint("coord"), local) as fleet:
            copy_roles(fleet)

    return Routing(load_topology=load, login=login, dbname=local.spec.dbname, sync_roles=sync_roles,
                   coordinator_login=lambda: login(local.spec.coordinator.group_name))
