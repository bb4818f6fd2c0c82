"""The router's files in a cluster directory: its pid file (one line per process), its settings (the
port it keeps across restarts), a lock that orders start, stop and restart, and stopping its processes.

Nothing here knows the cluster itself, so the local cluster can stop its router when it is destroyed."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from ..node.ports import release_ports
from ..node.server import process_alive

PID_FILE = "router.pid"
LOG_FILE = "router.log"
STATUS_FILE = "router.json"
PASSFILE = "router.pgpass"
SETTINGS_FILE = "router.settings.json"
LOCK_FILE = "router.lock"


@dataclass(frozen=True)
class RouterProcess:
    pid: int  # process 0's
    port: int  # the port every process accepts on
    pids: tuple[int, ...] = ()  # every process, by index
    peer_ports: tuple[int, ...] = ()  # each process's own port (cancel requests forwarded between them)


@dataclass(frozen=True)
class RouterSettings:
    """How the router of a cluster runs; kept so that ``pgfleet up`` and the monitor start it again the
    same way, on the same port."""

    port: int
    processes: int = 1
    route: bool = True
    pool_size: int | None = None  # worker connections per node and process (None: two per core)


def status_file(directory: Path, index: int) -> Path:
    return directory / (STATUS_FILE if index == 0 else f"router.{index}.json")


def read_pids(directory: Path) -> RouterProcess | None:
    """What the pid file names (pid, shared port, and each process's own port when there are several),
    alive or not; None without a pid file."""
    try:
        rows = [line.split() for line in (directory / PID_FILE).read_text().splitlines() if line.strip()]
        pids = tuple(int(row[0]) for row in rows)
        port = int(rows[0][1])
        peer_ports = tuple(int(row[2]) for row in rows if len(row) > 2)
    except (OSError, ValueError, IndexError):
        return None
    return RouterProcess(pids[0], port, pids, peer_ports)


def alive(pid: int) -> bool:
    """A live process (not a zombie nobody reaped) with this pid."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child that died
    return process_alive(pid)


def is_router(pid: int, directory: Path) -> bool:
    """``pid`` is alive and is a router process of this cluster (not another program that got the pid of
    a router that died: pids are reused, and a stale pid file must never make pgfleet signal a stranger)."""
    if not alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc here: the pid file is all there is to go by
    except OSError:
        return False
    return b"router" in args and str(directory.resolve()).encode() in args  # see process.py's Popen


def running(directory: Path) -> RouterProcess | None:
    """The router when its first process is alive."""
    current = read_pids(directory)
    return current if current is not None and is_router(current.pid, directory) else None


def died(directory: Path) -> bool:
    """The router was started and not stopped (its pid file is there) but its first process is gone."""
    current = read_pids(directory)
    return current is not None and not is_router(current.pid, directory)


def read_settings(directory: Path) -> RouterSettings | None:
    try:
        data = json.loads((directory / SETTINGS_FILE).read_text())
        return RouterSettings(port=int(data["port"]), processes=int(data.get("processes", 1)),
                              route=bool(data.get("route", True)),
                              pool_size=int(data["pool_size"]) if data.get("pool_size") is not None else None)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_settings(directory: Path, settings: RouterSettings) -> None:
    tmp = directory / (SETTINGS_FILE + ".tmp")
    tmp.write_text(json.dumps(asdict(settings)) + "\n")
    os.replace(tmp, directory / SETTINGS_FILE)


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Start, stop and the monitor's restart one at a time (a stop never races a restart)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _wait_gone(pid: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def terminate(directory: Path, wait: float = 10.0) -> RouterProcess | None:
    """Stop every router process (SIGTERM, SIGKILL after ``wait`` s) and forget them: the pid file goes
    first, so nothing restarts them; the processes' own ports are released, the shared port stays claimed
    (it is the cluster's endpoint). Returns what was stopped, None when nothing ran."""
    current = read_pids(directory)
    (directory / PID_FILE).unlink(missing_ok=True)
    if current is None:
        return None
    was_running = is_router(current.pid, directory)
    pids = [pid for pid in current.pids or (current.pid,) if is_router(pid, directory)]
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    for pid in pids:
        if not _wait_gone(pid, deadline):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    for index in range(len(current.pids) or 1):
        status_file(directory, index).unlink(missing_ok=True)
    release_ports(current.peer_ports, directory)
    return current if was_running else None


def forget(directory: Path) -> None:
    """Stop the router and release its port too (the cluster is being destroyed)."""
    if not directory.is_dir():
        return
    with locked(directory):
        terminate(directory)
        settings = read_settings(directory)
        if settings is not None:
            release_ports([settings.port], directory)
