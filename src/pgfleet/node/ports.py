"""Loopback ports for local servers, claimed machine-wide so that concurrent clusters never collide.

A free port is not enough: between ``initdb`` and the server's start nothing is bound to it, so two
``pgfleet up`` at once would both choose 5432. Every port pgfleet chooses is therefore claimed by a file
in a shared directory (``/tmp/pgfleet-ports`` unless ``PGFLEET_PORTS_DIR`` says otherwise) that names
the cluster directory owning it; choosing happens under an exclusive lock. A claim whose cluster
directory no longer exists is stale and is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import NodeError

ENV_DIR = "PGFLEET_PORTS_DIR"
FIRST_PORT = 5432


def claims_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or "/tmp/pgfleet-ports")


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    directory = claims_dir()
    try:
        directory.mkdir(mode=0o1777, exist_ok=True)
        with contextlib.suppress(PermissionError):
            os.chmod(directory, 0o1777)  # every account's clusters claim here (sticky, like /tmp)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise NodeError(f"cannot use the port claims directory {directory}: {exc.strerror}",
                        hint=f"make it writable, or set {ENV_DIR} to another directory") from None
    try:
        with contextlib.suppress(PermissionError):
            os.fchmod(fd, 0o666)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield directory
    finally:
        os.close(fd)


def _claimed_by_other(directory: Path, port: int, owner: Path) -> bool:
    try:
        holder = Path((directory / str(port)).read_text().strip())
    except OSError:
        return False
    return holder != owner and holder.exists()


def claim_ports(count: int, owner: Path, *, start: int = FIRST_PORT, avoid: Iterable[int] = ()) -> list[int]:
    """``count`` loopback ports from ``start`` upward, free now and claimed by no other live cluster;
    claimed for ``owner`` (a cluster directory) before they are returned."""
    taken = set(avoid)
    owner = owner.absolute()
    with _locked() as directory:
        ports: list[int] = []
        port = start
        while len(ports) < count and port < 65535:
            if port not in taken and not _claimed_by_other(directory, port, owner) and port_is_free(port):
                path = directory / str(port)
                path.unlink(missing_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                with os.fdopen(fd, "w") as handle:
                    handle.write(f"{owner}\n")
                ports.append(port)
            port += 1
        if len(ports) < count:
            release_ports(ports, owner)
            raise NodeError(f"could not find {count} free loopback ports above {start}",
                            hint="stop clusters you no longer need (pgfleet down --destroy)")
        return ports


def claim_port(port: int, owner: Path) -> None:
    """Claim a port the user chose (``--port``); refuse it when it is in use or claimed by another cluster."""
    owner = owner.absolute()
    with _locked() as directory:
        if _claimed_by_other(directory, port, owner) or not port_is_free(port):
            raise NodeError(f"port {port} on 127.0.0.1 is in use", hint="choose another --port")
        (directory / str(port)).write_text(f"{owner}\n")


def release_ports(ports: Iterable[int], owner: Path) -> None:
    """Give back ports claimed by ``owner`` (when its cluster, or a member of it, is removed)."""
    owner = owner.absolute()
    with contextlib.suppress(NodeError), _locked() as directory:
        for port in ports:
            path = directory / str(port)
            with contextlib.suppress(OSError):
                if Path(path.read_text().strip()) == owner:
                    path.unlink()
