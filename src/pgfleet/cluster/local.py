"""The local cluster: a directory with cluster.json (0600), a pgpass file and one sub-directory per node.

cluster.json holds how to reach and run the local servers (ports, passwords, binaries, account); the
topology itself (which nodes, tables and shards) lives in the coordinator's pgfleet schema.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ClusterError, PgfleetError
from ..execute import Endpoint
from ..node import binaries as binmod
from ..node.osuser import check_traversable, server_account
from ..node.fencemark import FenceMark, mark_fenced, read_mark
from ..node.ports import claim_port, claim_ports, release_ports
from ..node.server import LocalServer
from ..proc import RunAs
from ..router.files import forget as forget_router
import contextlib

log = logging.getLogger(__name__)

FILE_NAME = "cluster.json"
PASSFILE = "pgpass"
FORMAT = 1
SUPERUSER = "postgres"
DBNAME = "postgres"
COORDINATOR = "coord"
ENV_DIR = "PGFLEET_DIR"


def default_dir() -> Path:
    """$PGFLEET_DIR, else ~/.pgfleet/default; as root /var/lib/pgfleet/<user>/default, <user> being $SUDO_USER
    (whoever ran sudo) or root. Per user, so nobody else's (stale) cluster sits at anyone's default; under
    /var/lib, not /root, because the server account must traverse it."""
    if os.environ.get(ENV_DIR):
        return Path(os.environ[ENV_DIR])
    if os.geteuid() == 0:
        user = os.environ.get("SUDO_USER") or "root"
        if "/" in user or user.startswith("."):
            user = "root"
        return Path("/var/lib/pgfleet") / user / "default"
    return Path.home() / ".pgfleet" / "default"


@dataclass(frozen=True)
class LocalNode:
    """One local server (a member). Its ``group`` is the logical node it serves (coord, w1, …): the
    group's first member has the group's name; standbys are named ``<group>_s<N>``."""

    name: str
    role: str  # the group's role: coordinator | worker
    port: int
    password: str = field(repr=False)
    group: str = ""
    sync: bool = True  # a standby that commits wait for

    @property
    def group_name(self) -> str:
        return self.group or self.name


@dataclass(frozen=True)
class ClusterFile:
    pg_bin: str
    os_user: str | None
    superuser: str
    dbname: str
    fast: bool
    nodes: tuple[LocalNode, ...]
    format: int = FORMAT
    primaries: tuple[tuple[str, str], ...] = ()  # (group, member) where a failover moved the primary

    def primary_of(self, group: str) -> LocalNode:
        member = dict(self.primaries).get(group, group)
        for node in self.nodes:
            if node.name == member:
                return node
        raise ClusterError(f"cluster.json has no member {member!r} for node {group}",
                           hint="the file is damaged; recreate the cluster")

    def members(self, group: str) -> list[LocalNode]:
        return [n for n in self.nodes if n.group_name == group]

    def standbys(self, group: str) -> list[LocalNode]:
        primary = self.primary_of(group).name
        return [n for n in self.members(group) if n.name != primary]

    @property
    def groups(self) -> list[str]:
        seen: list[str] = []
        for node in self.nodes:
            if node.group_name not in seen:
                seen.append(node.group_name)
        return seen

    @property
    def coordinator(self) -> LocalNode:
        for node in self.nodes:
            if node.role == "coordinator" and not node.group:
                return self.primary_of(node.name)
        raise ClusterError("cluster.json names no coordinator", hint="the file is damaged; recreate the cluster")

    def to_json(self) -> str:
        data = asdict(self)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, path: Path) -> ClusterFile:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ClusterError(f"{path} has format {data.get('format')!r}, expected {FORMAT}",
                                   hint="it was written by another pgfleet version")
            nodes = tuple(LocalNode(name=str(n["name"]), role=str(n["role"]), port=int(n["port"]),
                                    password=str(n["password"]), group=str(n.get("group", "")),
                                    sync=bool(n.get("sync", True))) for n in data["nodes"])
            primaries = tuple((str(g), str(m)) for g, m in data.get("primaries", []))
            return cls(pg_bin=str(data["pg_bin"]), os_user=data.get("os_user"), superuser=str(data["superuser"]),
                       dbname=str(data["dbname"]), fast=bool(data.get("fast", False)), nodes=nodes,
                       primaries=primaries)
        except ClusterError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"{path} is not a valid pgfleet cluster file ({exc.__class__.__name__}: {exc})",
                               hint="restore it from a backup, or remove the directory and run 'pgfleet up'") from None


class LocalCluster:
    """A cluster whose servers pgfleet runs on this machine."""

    def __init__(self, directory: Path, spec: ClusterFile, run_as: RunAs | None, bins: binmod.Binaries) -> None:
        self.directory = directory
        self.spec = spec
        self.run_as = run_as
        self.binaries = bins

    # --- loading and creating ----------------------------------------------------------------------
    @staticmethod
    def exists(directory: Path) -> bool:
        return (directory / FILE_NAME).is_file()

    @classmethod
    def load(cls, directory: Path) -> LocalCluster:
        path = directory / FILE_NAME
        if not path.is_file():
            raise ClusterError(f"no pgfleet cluster in {directory}",
                               hint="create one with 'pgfleet up', or point --dir / PGFLEET_DIR at it")
        try:
            text = path.read_text()
        except OSError as exc:
            raise ClusterError(f"cannot read {path}: {exc.strerror}") from None
        spec = ClusterFile.from_json(text, path)
        run_as = server_account(spec.os_user) if spec.os_user or os.geteuid() == 0 else None
        bins = binmod.find(spec.pg_bin)
        return cls(directory, spec, run_as, bins)

    @classmethod
    def create(cls, directory: Path, *, workers: int, port: int | None = None, pg_bin: str | None = None,
               fast: bool = False, on_event: Callable[[str], None] | None = None) -> LocalCluster:
        """initdb and start a coordinator and ``workers`` workers; on failure remove what was made."""
        say = on_event or (lambda _msg: None)
        if workers < 0 or workers > 64:
            raise ClusterError(f"--workers {workers} is out of range", hint="use 0..64")
        run_as = server_account()
        bins = binmod.find(pg_bin)
        directory = directory.absolute()
        created_dir = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755 if run_as else 0o700)
        try:
            check_traversable(str(directory), run_as)
            bins = binmod.reachable_by(bins, run_as, Path("/opt/pgfleet"))
            if port is not None:
                claim_port(port, directory)
            first = [port] if port is not None else claim_ports(1, directory)
            ports = first + claim_ports(workers, directory, start=first[0] + 1, avoid=first)
            names = [COORDINATOR] + [f"w{i}" for i in range(1, workers + 1)]
            nodes = tuple(LocalNode(name=n, role="coordinator" if i == 0 else "worker", port=p,
                                    password=secrets.token_urlsafe(24))
                          for i, (n, p) in enumerate(zip(names, ports, strict=True)))
            spec = ClusterFile(pg_bin=str(bins.bindir), os_user=run_as.user if run_as else None,
                               superuser=SUPERUSER, dbname=DBNAME, fast=fast, nodes=nodes)
            cluster = cls(directory, spec, run_as, bins)
            cluster._write_files()
            for node in nodes:
                say(f"initdb {node.name} (port {node.port})")
                cluster.server(node.name).initdb(SUPERUSER, node.password, fast=fast)
            cluster.start(on_event=say)
            return cluster
        except BaseException:
            cls._remove_partial(directory, created_dir, run_as, bins)
            raise

    @staticmethod
    def _remove_partial(directory: Path, created_dir: bool, run_as: RunAs | None, bins: binmod.Binaries) -> None:
        nodes_dir = directory / "nodes"
        if nodes_dir.is_dir():
            for home in nodes_dir.iterdir():
                server = LocalServer(name=home.name, home=home, port=0, binaries=bins, run_as=run_as)
                with contextlib.suppress(PgfleetError):
                    server.stop(mode="immediate")
        with contextlib.suppress(OSError, ClusterError):
            spec = ClusterFile.from_json((directory / FILE_NAME).read_text(), directory / FILE_NAME)
            release_ports([n.port for n in spec.nodes], directory)
        if created_dir:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            for name in (FILE_NAME, PASSFILE):
                (directory / name).unlink(missing_ok=True)
            shutil.rmtree(nodes_dir, ignore_errors=True)

    def _write_files(self) -> None:
        path = self.directory / FILE_NAME
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.spec.to_json())
        os.replace(tmp, path)
        lines = [f"127.0.0.1:{n.port}:*:{self.spec.superuser}:{_pgpass_escape(n.password)}" for n in self.spec.nodes]
        passfile = self.directory / PASSFILE
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        os.chmod(passfile, 0o600)

    def save(self) -> None:
        """Write cluster.json and the pgpass file (a cluster assembled by a restore)."""
        self._write_files()

    def add_member(self, node: LocalNode) -> None:
        self.spec = replace(self.spec, nodes=(*self.spec.nodes, node))
        self._write_files()

    def remove_member(self, name: str) -> None:
        self.spec = replace(self.spec, nodes=tuple(n for n in self.spec.nodes if n.name != name))
        self._write_files()

    def set_primary(self, group: str, member: str) -> None:
        primaries = dict(self.spec.primaries)
        if member == group:
            primaries.pop(group, None)
        else:
            primaries[group] = member
        self.spec = replace(self.spec, primaries=tuple(sorted(primaries.items())))
        self._write_files()

    def reload_spec(self) -> None:
        """Re-read cluster.json (another process, e.g. the monitor, may have moved a primary)."""
        self.spec = ClusterFile.from_json((self.directory / FILE_NAME).read_text(), self.directory / FILE_NAME)

    # --- servers -----------------------------------------------------------------------------------
    def server(self, name: str) -> LocalServer:
        node = self.node(name)
        return LocalServer(name=node.name, home=self.directory / "nodes" / node.name, port=node.port,
                           binaries=self.binaries, run_as=self.run_as)

    def node(self, name: str) -> LocalNode:
        for node in self.spec.nodes:
            if node.name == name:
                return node
        raise ClusterError(f"no local node {name!r} in {self.directory}")

    def start(self, on_event: Callable[[str], None] | None = None) -> list[str]:
        """Start every stopped server that may run; return the names started.

        A member that is not its group's primary starts only as a standby of the current primary. A
        fenced member (node/fencemark.py) stays stopped; so does one that would come up writable (an old
        primary that was down when the group failed over): it is fenced now. ``fenced()`` lists them."""
        started = []
        for node in self.spec.nodes:
            server = self.server(node.name)
            if server.is_running():
                continue
            if not self._may_start(node, server):
                continue
            if on_event:
                on_event(f"start {node.name} (port {node.port})")
            server.start()
            started.append(node.name)
        return started

    def _may_start(self, node: LocalNode, server: LocalServer) -> bool:
        primary = self.spec.primary_of(node.group_name)
        if node.name == primary.name:
            return True
        if read_mark(server) is not None:
            return False
        if not server.exists():
            return True  # start() says the data directory is missing
        if server.standby_source_port() is None:
            mark_fenced(server, f"not a standby, and {primary.name} is the primary of {node.group_name}")
            log.warning("%s: fenced (it would have started writable next to %s)", node.name, primary.name)
            return False
        if server.standby_source_port() != primary.port:
            server.configure_standby(primary.port, self.spec.superuser, primary.password, slot=node.name)
        return True

    def fenced(self) -> list[FenceMark]:
        """The members that are fenced, with when and why."""
        marks = [read_mark(self.server(n.name)) for n in self.spec.nodes]
        return [m for m in marks if m is not None]

    def stop(self, on_event: Callable[[str], None] | None = None) -> list[str]:
        stopped = []
        for node in reversed(self.spec.nodes):
            server = self.server(node.name)
            if server.is_running():
                if on_event:
                    on_event(f"stop {node.name}")
                server.stop()
                stopped.append(node.name)
        return stopped

    def destroy(self) -> None:
        forget_router(self.directory)  # its processes, and the port it kept
        for node in self.spec.nodes:
            with contextlib.suppress(PgfleetError):
                self.server(node.name).stop(mode="immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
        release_ports([n.port for n in self.spec.nodes], self.directory)

    def endpoint(self, name: str) -> Endpoint:
        """How to reach a group's current primary (or a member, by its own name)."""
        node = self.spec.primary_of(name) if name in self.spec.groups else self.node(name)
        return Endpoint(name=node.group_name, host="127.0.0.1", port=node.port, dbname=self.spec.dbname,
                        user=self.spec.superuser, password=node.password)

    def member_endpoint(self, member: str) -> Endpoint:
        node = self.node(member)
        return Endpoint(name=node.name, host="127.0.0.1", port=node.port, dbname=self.spec.dbname,
                        user=self.spec.superuser, password=node.password)

    @property
    def passfile(self) -> Path:
        return self.directory / PASSFILE

    def dsn(self, *, with_password: bool = False, read_only: bool = False) -> str:
        """The coordinator's connection string. With standbys it names every coordinator member, so a
        client reconnects to whichever is primary (target_session_attrs=read-write); ``read_only``
        balances sessions over the coordinator's standbys (load_balance_hosts)."""
        from urllib.parse import quote

        coord = self.spec.coordinator
        members = [coord] + [m for m in self.spec.members(coord.group_name) if m.name != coord.name]
        if read_only:
            standbys = [m for m in members if m.name != coord.name] or [coord]
            hosts = ",".join(f"127.0.0.1:{m.port}" for m in standbys)
            params = ["target_session_attrs=prefer-standby", "load_balance_hosts=random"]
        else:
            hosts = ",".join(f"127.0.0.1:{m.port}" for m in members)
            params = ["target_session_attrs=read-write"] if len(members) > 1 else []
        user = self.spec.superuser
        if with_password:
            user += ":" + quote(coord.password, safe="")
        else:
            params.append(f"passfile={self.passfile}")
        query = ("?" + "&".join(params)) if params else ""
        return f"postgresql://{user}@{hosts}/{self.spec.dbname}{query}"


def _pgpass_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")
