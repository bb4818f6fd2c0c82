"""PostgreSQL's backup programs for one server: pg_basebackup into a directory, pg_receivewal up to an LSN,
pg_verifybackup. Passwords go through a 0600 passfile in a private temporary directory, never argv."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..execute import Endpoint
from ..execute.password import passfile_escape
from ..proc import run, spawn
from .binaries import Binaries

# pg_basebackup --progress updates: "1234/5678 kB (21%), 0/1 tablespace"
_KB = re.compile(r"(\d+)/(\d+) kB")


@contextlib.contextmanager
def passfile_for(ep: Endpoint) -> Iterator[Path]:
    """A 0600 passfile with ``ep``'s password, in a private directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="pgfleet-pass-") as tmp:
        path = Path(tmp) / "pgpass"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"*:*:*:{passfile_escape(ep.user)}:{passfile_escape(ep.password or '')}\n")
        yield path


def _conn_args(ep: Endpoint) -> list[str]:
    return ["-h", ep.host, "-p", str(ep.port), "-U", ep.user]


def base_backup(bins: Binaries, ep: Endpoint, target: Path, *, timeout: float = 3600,
                progress: Callable[[int, int], None] | None = None) -> None:
    """pg_basebackup of ``ep``'s server into ``target`` (plain format, the WAL of the backup fetched at its
    end, a backup_manifest with SHA-256 checksums); ``progress(done_bytes, total_bytes)``.

    ``-X fetch``, not ``stream``: the backup's own slot, made before (cluster/backup.py), keeps that WAL on
    the server. Streaming forks a WAL receiver with a temporary slot that outlives a killed backup: it holds
    its end of pg_basebackup's pipe itself, so it never learns that its parent is gone, and streamed on
    (and kept its slot) for as long as the server ran."""
    def on_update(update: str) -> None:
        match = _KB.search(update)
        if match and progress is not None:
            progress(int(match.group(1)) * 1024, int(match.group(2)) * 1024)

    with passfile_for(ep) as passfile:
        run([bins.path("pg_basebackup"), *_conn_args(ep), "-D", str(target), "-X", "fetch",
             "--checkpoint=fast", "--manifest-checksums=SHA256", "--no-password", "--progress"],
            env={"PGPASSFILE": str(passfile)}, timeout=timeout, what="pg_basebackup", node=ep.name,
            on_progress=on_update)


def receive_wal(bins: Binaries, ep: Endpoint, target: Path, *, slot: str, end_lsn: str,
                timeout: float = 3600) -> None:
    """pg_receivewal from ``slot`` (which holds the WAL since before the base backup) up to ``end_lsn``. The
    last, unfinished segment keeps its ``.partial`` suffix (an archiver resumes it); a restore drops it."""
    target.mkdir(parents=True, exist_ok=True)
    with passfile_for(ep) as passfile:
        run([bins.path("pg_receivewal"), *_conn_args(ep), "-D", str(target), "-S", slot, f"--endpos={end_lsn}",
             "--no-loop", "--no-password"],
            env={"PGPASSFILE": str(passfile)}, timeout=timeout, what="pg_receivewal", node=ep.name)


def start_receiver(bins: Binaries, ep: Endpoint, target: Path, *, slot: str, passfile: Path, log_path: Path) -> int:
    """A detached pg_receivewal that archives ``ep``'s WAL from ``slot`` into ``target`` until stopped
    (it reconnects by itself when the server goes away); its pid. ``passfile`` must outlive it."""
    return spawn([bins.path("pg_receivewal"), *_conn_args(ep), "-D", str(target), "-S", slot, "--synchronous",
                  "--no-password"], log_path=str(log_path), env={"PGPASSFILE": str(passfile)},
                 what="pg_receivewal", node=ep.name)


def wal_for_restore(wal_dir: Path) -> dict[str, Path]:
    """The WAL files to put into a restored pg_wal, by the name they must have there: a ``.partial``
    segment under its plain name, unless the complete segment is there too."""
    files = {p.name: p for p in sorted(wal_dir.iterdir()) if p.is_file()} if wal_dir.is_dir() else {}
    chosen = {n: p for n, p in files.items() if not n.endswith(".partial")}
    for name, path in files.items():
        if name.endswith(".partial"):
            chosen.setdefault(name.removesuffix(".partial"), path)
    return chosen


def verify_backup(bins: Binaries, datadir: Path, node: str, timeout: float = 3600) -> None:
    """pg_verifybackup: every file of the backup against its manifest's checksums, and its WAL parses."""
    run([bins.path("pg_verifybackup"), "--quiet", str(datadir)], timeout=timeout, what="pg_verifybackup",
        node=node)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
