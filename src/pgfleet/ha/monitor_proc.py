"""Running the monitor: in the foreground (until SIGTERM / Ctrl-C) or as a detached background process
whose pid is kept in the cluster directory."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time

from ..cluster.local import LocalCluster
from .events import Say
from .monitor import Monitor


PID_FILE = "monitor.pid"
LOG_FILE = "monitor.log"


def _running_pid(local: LocalCluster) -> int | None:
    try:
        pid = int((local.directory / PID_FILE).read_text().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def start_background(local: LocalCluster, *, interval: float = 1.0, timeout: float = 3.0) -> int | None:
    """Start a detached monitor unless one runs; return its pid (None if one was already running)."""
    if _running_pid(local) is not None:
        return None
    log = open(local.directory / LOG_FILE, "a")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(
        [sys.executable, "-m", "pgfleet.cli.main", "--dir", str(local.directory), "monitor",
         "--interval", str(interval), "--timeout", str(timeout)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    log.close()
    (local.directory / PID_FILE).write_text(f"{proc.pid}\n")
    return proc.pid


def stop_background(local: LocalCluster, wait: float = 10.0) -> bool:
    pid = _running_pid(local)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    (local.directory / PID_FILE).unlink(missing_ok=True)
    return True


def run_foreground(local: LocalCluster, *, interval: float, timeout: float, say: Say) -> None:
    stop = threading.Event()

    def handle(_sig: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
    Monitor(local, interval=interval, timeout=timeout, say=say).run(stop)
