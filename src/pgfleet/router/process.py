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
from .routing import Routing
from .session import Address
from .snapshot import RoutingTopology

PID_FILE = "router.pid"
LOG_FILE = "router.log"
STATUS_FILE = "router.json"
PASSFILE = "router.pgpass"
FIRST_PORT = 6432
START_TIMEOUT = 15.0


@dataclass(frozen=True)
class RouterProcess:
    pid: int
    port: int


@dataclass(frozen=True)
class RouterStatus:
    pid: int
    port: int
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
    try:
        pid_text, port_text = (local.directory / PID_FILE).read_text().split()
        pid, port = int(pid_text), int(port_text)
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return RouterProcess(pid, port)


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


def start_background(local: LocalCluster, port: int | None = None, *, route: bool = False) -> tuple[RouterProcess, bool]:
    """Start the router unless it runs; return it and whether it was started now."""
    current = running(local)
    if current is not None:
        return current, False
    if port is not None:
        claim_port(port, local.directory)
    else:
        port = claim_ports(1, local.directory, start=FIRST_PORT)[0]
    log_path = local.directory / LOG_FILE
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pgfleet.cli.main", "--dir", str(local.directory), "router", "run",
             "--port", str(port), *(["--route"] if route else [])],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    (local.directory / PID_FILE).write_text(f"{proc.pid} {port}\n")
    deadline = time.monotonic() + START_TIMEOUT
    while not _accepts(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(OSError):
                proc.kill()
            (local.directory / PID_FILE).unlink(missing_ok=True)
            release_ports([port], local.directory)
            tail = log_path.read_text().strip().splitlines()[-3:]
            raise RouterError(f"the router did not start on port {port}" + (f": {' / '.join(tail)}" if tail else ""),
                              hint=f"see {log_path}")
        time.sleep(0.05)
    _write_passfile(local, port)
    return RouterProcess(proc.pid, port), True


def stop_background(local: LocalCluster, wait: float = 10.0) -> bool:
    current = running(local)
    if current is None:
        return False
    os.kill(current.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(current.pid, os.WNOHANG)
        try:
            os.kill(current.pid, 0)
        except OSError:
            break
        time.sleep(0.05)
    else:
        os.kill(current.pid, signal.SIGKILL)
    (local.directory / PID_FILE).unlink(missing_ok=True)
    (local.directory / STATUS_FILE).unlink(missing_ok=True)
    release_ports([current.port], local.directory)
    return True


def read_status(local: LocalCluster) -> RouterStatus | None:
    current = running(local)
    if current is None:
        return None
    try:
        data = json.loads((local.directory / STATUS_FILE).read_text())
    except (OSError, ValueError):
        data = {}
    return RouterStatus(pid=current.pid, port=current.port, coordinator=str(data.get("coordinator", "?")),
                        uptime_seconds=round(time.time() - float(data.get("started", time.time())), 1),
                        routing=bool(data.get("routing", False)), routed=int(data.get("routed", 0)),
                        routing_fallbacks=int(data.get("routing_fallbacks", 0)),
                        pinned_sessions=int(data.get("pinned_sessions", 0)),
                        clients_active=int(data.get("clients_active", 0)), clients_total=int(data.get("clients_total", 0)),
                        queries=int(data.get("queries", 0)), executes=int(data.get("executes", 0)),
                        cancels=int(data.get("cancels", 0)), protocol_errors=int(data.get("protocol_errors", 0)))


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

    return Routing(load_topology=load, login=login, dbname=local.spec.dbname)
