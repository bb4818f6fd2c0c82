"""The unprivileged account that runs the servers when pgfleet is started as root."""

from __future__ import annotations

import os
import pwd
import shutil

from ..errors import NodeError
from ..proc import RunAs, run

DEFAULT_USER = "pgfleet"
ENV_VAR = "PGFLEET_OS_USER"


def server_account(name: str | None = None) -> RunAs | None:
    """None when not root (servers run as the current user); else the service account, created if missing."""
    if os.geteuid() != 0:
        return None
    user = name or os.environ.get(ENV_VAR) or DEFAULT_USER
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise NodeError(f"system account {user!r} does not exist and useradd is not available",
                            hint=f"create an unprivileged account and set {ENV_VAR}") from None
        added = run([useradd, "--system", "--no-create-home", "--home-dir", "/nonexistent",
                     "--shell", "/usr/sbin/nologin", user], what=f"useradd {user}", check=False)
        try:  # another pgfleet started at the same moment may have created it first
            entry = pwd.getpwnam(user)
        except KeyError:
            raise NodeError(f"could not create the system account {user!r}: {added.stderr.strip()}",
                            hint=f"create an unprivileged account and set {ENV_VAR}") from None
    if entry.pw_uid == 0:
        raise NodeError(f"account {user!r} is root; PostgreSQL refuses to run as root",
                        hint=f"set {ENV_VAR} to an unprivileged account")
    return RunAs(user=user, uid=entry.pw_uid, gid=entry.pw_gid, home="/tmp")


def give_to(path: str, run_as: RunAs | None, mode: int = 0o700) -> None:
    """Make ``path`` (a directory we created) belong to the server account."""
    if run_as is not None:
        os.chown(path, run_as.uid, run_as.gid)
    os.chmod(path, mode)


def check_traversable(path: str, run_as: RunAs | None) -> None:
    """Fail clearly when the server account cannot reach ``path`` (e.g. a directory under /root)."""
    if run_as is None:
        return
    probe = run(["/bin/sh", "-c", 'cd "$1"', "sh", path], run_as=run_as, check=False, timeout=10)
    if probe.returncode != 0:
        raise NodeError(f"the server account {run_as.user!r} cannot reach {path}",
                        hint="choose --dir under a directory every account can traverse, such as /var/lib or /srv")
