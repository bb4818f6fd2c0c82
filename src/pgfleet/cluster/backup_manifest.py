"""The manifest of a fleet backup (``pgfleet-backup.json``): what was backed up, where it came from, the
consistent point, sizes and the checksums of the WAL files (the data directories carry PostgreSQL's own
``backup_manifest``). It holds no password."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SpecError
from ..topology import Node

MANIFEST_NAME = "pgfleet-backup.json"
FORMAT = 1


@dataclass(frozen=True)
class WalFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class NodeBackup:
    name: str
    role: str  # coordinator | worker
    host: str  # where the node was at backup time
    port: int
    dbname: str
    user: str
    server_version: int
    restore_lsn: str  # just after the restore point record
    data_bytes: int
    wal: tuple[WalFile, ...]

    @property
    def wal_bytes(self) -> int:
        return sum(w.size for w in self.wal)


@dataclass(frozen=True)
class BackupManifest:
    pgfleet_version: str
    created_at: str  # ISO time, UTC
    restore_point: str
    superuser: str
    dbname: str
    fast: bool  # the source was a throw-away cluster (fsync off): the restore gets the same settings
    held_ms: float  # how long commits were held for the restore points
    waited_ms: float
    seconds: float  # how long the backup took
    nodes: tuple[NodeBackup, ...]
    catalog_nodes: tuple[Node, ...]  # pgfleet.nodes at backup time
    archive: bool = False  # WAL archiving into wal/<node> went on after the backup (restore_points.json)
    format: int = FORMAT

    def node(self, name: str) -> NodeBackup:
        for node in self.nodes:
            if node.name == name:
                return node
        raise SpecError(f"the backup has no node {name!r}")

    @property
    def coordinator(self) -> NodeBackup:
        return next(n for n in self.nodes if n.role == "coordinator")

    @property
    def workers(self) -> list[NodeBackup]:
        return [n for n in self.nodes if n.role == "worker"]

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, directory: Path) -> BackupManifest:
        path = directory / MANIFEST_NAME
        if not path.is_file():
            raise SpecError(f"{directory} holds no pgfleet backup (no {MANIFEST_NAME})",
                            hint="give the directory 'pgfleet backup' wrote")
        try:
            data = json.loads(path.read_text())
            if data.get("format") != FORMAT:
                raise SpecError(f"{path} has format {data.get('format')!r}, expected {FORMAT}",
                                hint="it was written by another pgfleet version")
            nodes = tuple(NodeBackup(**{**n, "wal": tuple(WalFile(**w) for w in n["wal"])}) for n in data["nodes"])
            catalog = tuple(Node(**n) for n in data["catalog_nodes"])
            fields = {k: v for k, v in data.items() if k not in ("nodes", "catalog_nodes")}
            manifest = cls(**fields, nodes=nodes, catalog_nodes=catalog)
        except SpecError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise SpecError(f"{path} is not a valid pgfleet backup manifest ({exc.__class__.__name__}: {exc})",
                            hint="the backup is damaged; use another one") from None
        if sum(1 for n in manifest.nodes if n.role == "coordinator") != 1:
            raise SpecError(f"{path} names no single coordinator", hint="the backup is damaged; use another one")
        return manifest
