"""A local PostgreSQL server process: initdb, configuration, start, stop, status.

The server runs as ``run_as`` when pgfleet is root. Authentication is SCRAM on TCP and on the local
socket; the superuser password is given by the caller and never printed or logged.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import NodeError
from ..proc import RunAs, run
from .binaries import Binaries
from .osuser import give_to
from .ports import port_is_free
import contextlib

log = logging.getLogger(__name__)

CONF_NAME = "pgfleet.conf"
SYNC_CONF = "pgfleet.sync.conf"  # synchronous_standby_names of a primary (never copied to a standby)
STANDBY_CONF = "pgfleet.standby.conf"  # primary_conninfo / primary_slot_name of a standby

# Settings every node gets. max_prepared_transactions enables two-phase DDL; wal_level/max_wal_senders
# leave room for streaming standbys.
BASE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("listen_addresses", "'127.0.0.1'"),
    ("unix_socket_directories", "''"),
    ("password_encryption", "'scram-sha-256'"),
    ("max_connections", "200"),
    ("max_prepared_transactions", "64"),
    ("wal_level", "'replica'"),
    ("max_wal_senders", "10"),
    ("max_replication_slots", "10"),
    ("hot_standby", "on"),
    ("wal_log_hints", "on"),  # pg_rewind needs it to bring an old primary back as a standby
    # WAL kept beyond the last checkpoint: pg_rewind reads the old primary's WAL back to the last checkpoint
    # before the divergence, and the rejoined standby streams from there (replication slots, made at
    # promotion, keep the rest). Without it, a checkpoint after the divergence could recycle that WAL.
    ("wal_keep_size", "'512MB'"),
    ("wal_sender_timeout", "'5s'"),
    ("wal_receiver_timeout", "'5s'"),
    ("logging_collector", "off"),
    ("log_min_messages", "warning"),
    ("log_line_prefix", "'%m [%p] %q%u@%d '"),
)

# Throw-away clusters (tests): no fsync (a process crash loses nothing, an OS crash may), small memory.
# synchronous_commit stays on: fault tests kill servers and count acknowledged commits; full_page_writes
# stays on: pg_rewind needs it to bring an old primary back.
FAST_SETTINGS: tuple[tuple[str, str], ...] = (
    ("fsync", "off"),
    ("shared_buffers", "'64MB'"),
    ("max_wal_size", "'1GB'"),
    ("checkpoint_timeout", "'30min'"),
)

HBA = """# written by pgfleet: SCRAM everywhere, loopback only (edit listen_addresses and this file to open up)
local   all             all                                     scram-sha-256
host    all             all             127.0.0.1/32            scram-sha-256
host    all             all             ::1/128                 scram-sha-256
host    replication     all             127.0.0.1/32            scram-sha-256
host    replication     all             ::1/128                 scram-sha-256
"""


@dataclass(frozen=True)
class LocalServer:
    name: str
    home: Path  # the node's directory: data/ and server.log inside
    port: int
    binaries: Binaries
    run_as: RunAs | None = None
    settings: tuple[tuple[str, str], ...] = field(default=BASE_SETTINGS)

    @property
    def datadir(self) -> Path:
        return self.home / "data"

    @property
    def logfile(self) -> Path:
        return self.home / "server.log"

    # --- life cycle -------------------------------------------------------------------------------
    def exists(self) -> bool:
        return (self.datadir / "PG_VERSION").is_file()

    def initdb(self, superuser: str, password: str, *, fast: bool = False) -> None:
        """Create the data directory with SCRAM authentication and pgfleet's configuration."""
        if self.exists():
            raise NodeError(f"data directory {self.datadir} already exists", node=self.name,
                            hint="use 'pgfleet up' to start it, or remove the directory")
        self.home.mkdir(parents=True, exist_ok=True)
        give_to(str(self.home), self.run_as, 0o700)
        fd, pwfile = tempfile.mkstemp(dir=self.home, prefix=".pw")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(password + "\n")
            give_to(pwfile, self.run_as, 0o600)
            argv = [self.binaries.path("initdb"), "-D", str(self.datadir), "-U", superuser,
                    f"--pwfile={pwfile}", "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                    "-E", "UTF8", "--locale=C"]
            if fast:
                argv.append("--no-sync")
            run(argv, run_as=self.run_as, timeout=300, what="initdb", node=self.name)
        finally:
            os.unlink(pwfile)
        self.write_config(fast=fast)

    def write_config(self, *, fast: bool = False, extra: Iterable[tuple[str, str]] = ()) -> None:
        settings = [*list(self.settings), ("port", str(self.port))]
        if fast:
            settings += list(FAST_SETTINGS)
        settings += list(extra)
        lines = ["# written by pgfleet; settings after this file's include win over it"]
        lines += [f"{name} = {value}" for name, value in settings]
        self._write(self.datadir / CONF_NAME, "\n".join(lines) + "\n")
        self._write(self.datadir / "pg_hba.conf", HBA)
        main = self.datadir / "postgresql.conf"
        text = main.read_text()
        for name in (CONF_NAME, SYNC_CONF, STANDBY_CONF):
            include = f"include_if_exists = '{name}'"
            if include not in text:
                text += f"\n{include}\n"
        self._write(main, text)

    def write_file(self, path: Path, text: str) -> None:
        """Write a 0600 file the server account owns."""
        self._write(path, text)

    def _write(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self.run_as is not None:
            os.chown(path, self.run_as.uid, self.run_as.gid)
        os.chmod(path, 0o600)

    def is_running(self) -> bool:
        """Whether the postmaster named in postmaster.pid is alive. A killed postmaster whose parent never
        reaps it stays a zombie that ``pg_ctl status`` (and the server's own lock-file check) takes for
        a running server; it is not one."""
        pid = self.pid()
        return pid is not None and process_alive(pid)

    def _clear_stale_pidfile(self) -> None:
        """Remove postmaster.pid when its process is dead or a zombie (the server would refuse to start)."""
        pid = self.pid()
        if pid is not None and not process_alive(pid):
            log.info("%s: removing stale postmaster.pid of dead process %d", self.name, pid)
            (self.datadir / "postmaster.pid").unlink(missing_ok=True)

    def start(self, timeout: float = 60.0) -> None:
        if not self.exists():
            raise NodeError(f"no data directory at {self.datadir}", node=self.name,
                            hint="the cluster directory is incomplete; run 'pgfleet down' and recreate it")
        if self.is_running():
            return
        if not port_is_free(self.port):
            raise NodeError(f"port {self.port} on 127.0.0.1 is in use", node=self.name,
                            hint="stop the program that holds it, or create the cluster with another --port")
        self._clear_stale_pidfile()
        done = run([self.binaries.path("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                    "-w", "-t", str(int(timeout)), "start"],
                   run_as=self.run_as, check=False, timeout=timeout + 30, what="pg_ctl start", node=self.name)
        if done.returncode != 0:
            tail = self.log_tail()
            if "shared memory block is still in use" in tail:
                raise NodeError("processes of its previous server still run", node=self.name,
                                hint="they exit by themselves within seconds of their postmaster's death; "
                                     "run 'pgfleet up' again")
            if "Address already in use" in tail:
                raise NodeError(f"port {self.port} on 127.0.0.1 is in use", node=self.name,
                                hint="stop the program that holds it, or create the cluster with another --port")
            raise NodeError(f"server did not start: {tail or done.stderr.strip()}", node=self.name,
                            hint=f"see {self.logfile}")
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = run([self.binaries.path("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
                       check=False, timeout=10)
            if done.returncode == 0:
                return
            time.sleep(0.1)
        raise NodeError(f"server on port {self.port} did not accept connections within {timeout:.0f} s",
                        node=self.name, hint=f"see {self.logfile}")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        if not self.is_running():
            return
        run([self.binaries.path("pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", str(int(timeout)),
             "stop"], run_as=self.run_as, timeout=timeout + 30, what="pg_ctl stop", node=self.name)

    # --- replication ---------------------------------------------------------------------------------
    def pid(self) -> int | None:
        try:
            return int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend (a crash; fault tests, fencing of last resort).

        Killing only the postmaster would leave its backends serving their sessions for a while."""
        import signal

        pid = self.pid()
        if pid is None:
            return
        children = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:  # the parent pid field
                children.append(int(entry.name))
        for target in [pid, *children]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(target, signal.SIGKILL)

    def base_backup(self, source_port: int, superuser: str, password: str, slot: str, timeout: float = 600,
                    progress: Callable[[int, int], None] | None = None) -> None:
        """Create this (new) member's data directory as a copy of the server on ``source_port``, whose
        replication ``slot`` for the member (made before) keeps the WAL of the copy and of its streaming after;
        ``progress(done_kb, total_kb)`` follows pg_basebackup --progress.

        ``-X fetch``: the WAL comes at the end of the copy, kept by the slot. ``-X stream`` forks a WAL
        receiver that outlives a killed pgfleet, streaming on the member's slot for good (see
        node/backup_tools.py)."""
        if self.exists():
            raise NodeError(f"data directory {self.datadir} already exists", node=self.name)
        self.home.mkdir(parents=True, exist_ok=True)
        give_to(str(self.home), self.run_as, 0o700)
        passfile = self.write_passfile(source_port, superuser, password)
        run([self.binaries.path("pg_basebackup"), "-h", "127.0.0.1", "-p", str(source_port), "-U", superuser,
             "-D", str(self.datadir), "-X", "fetch", "--checkpoint=fast", "--no-sync",
             *(["--progress"] if progress else [])],
            run_as=self.run_as, env={"PGPASSFILE": str(passfile)}, timeout=timeout, what="pg_basebackup", node=self.name,
            on_progress=_kb_progress(progress) if progress else None)
        (self.datadir / SYNC_CONF).unlink(missing_ok=True)
        (self.datadir / "postmaster.pid").unlink(missing_ok=True)

    def write_passfile(self, port: int, superuser: str, password: str) -> Path:
        """A 0600 pgpass in the member's directory, for replication and pg_rewind (no password in argv)."""
        path = self.home / "pgpass"
        escaped = password.replace("\\", "\\\\").replace(":", "\\:")
        self._write(path, f"127.0.0.1:{port}:*:{superuser}:{escaped}\n")
        return path

    def configure_standby(self, primary_port: int, superuser: str, password: str, slot: str) -> None:
        passfile = self.write_passfile(primary_port, superuser, password)
        conninfo = (f"host=127.0.0.1 port={primary_port} user={superuser} passfile={passfile} "
                    f"application_name={self.name} connect_timeout=2")
        self._write(self.datadir / STANDBY_CONF,
                    f"primary_conninfo = '{conninfo}'\nprimary_slot_name = '{slot}'\n"
                    "recovery_target_timeline = 'latest'\nhot_standby_feedback = on\n")
        self._write(self.datadir / "standby.signal", "")

    def standby_source_port(self) -> int | None:
        """The port of the primary this member is configured to stream from; None if it is no standby."""
        if not self.is_standby():
            return None
        try:
            text = (self.datadir / STANDBY_CONF).read_text()
        except OSError:
            return None
        match = re.search(r"\bport=(\d+)", text)
        return int(match.group(1)) if match else None

    def set_sync_standbys(self, names: list[str]) -> None:
        """Make commits wait for one of ``names`` (none: asynchronous); takes effect on reload."""
        if names:
            quoted = ", ".join('"' + n + '"' for n in names)
            text = f"synchronous_standby_names = 'ANY 1 ({quoted})'\n"
        else:
            text = "synchronous_standby_names = ''\n"
        self._write(self.datadir / SYNC_CONF, text)
        if self.is_running():
            self.reload()

    def reload(self) -> None:
        run([self.binaries.path("pg_ctl"), "-D", str(self.datadir), "reload"], run_as=self.run_as, timeout=30,
            what="pg_ctl reload", node=self.name)

    def promote(self, timeout: float = 60) -> None:
        run([self.binaries.path("pg_ctl"), "-D", str(self.datadir), "-w", "-t", str(int(timeout)), "promote"],
            run_as=self.run_as, timeout=timeout + 30, what="pg_ctl promote", node=self.name)
        (self.datadir / STANDBY_CONF).unlink(missing_ok=True)

    def is_standby(self) -> bool:
        return (self.datadir / "standby.signal").exists()

    def rewind(self, source_port: int, superuser: str, password: str) -> None:
        """Bring this stopped old primary in line with the new primary on ``source_port`` (pg_rewind)."""
        passfile = self.write_passfile(source_port, superuser, password)
        run([self.binaries.path("pg_rewind"), "--target-pgdata", str(self.datadir),
             "--source-server", f"host=127.0.0.1 port={source_port} user={superuser} dbname=postgres",
             "--no-sync"],
            run_as=self.run_as, env={"PGPASSFILE": str(passfile)}, timeout=600, what="pg_rewind", node=self.name)

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.logfile.read_text(errors="replace")
        except OSError:
            return ""
        wanted = [ln for ln in text.splitlines() if ln.strip()][-lines:]
        return " / ".join(wanted)


def process_alive(pid: int) -> bool:
    """A live (not zombie) process with this pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _kb_progress(progress: Callable[[int, int], None]) -> Callable[[str], None]:
    """pg_basebackup --progress updates ("1234/5678 kB (21%), 0/1 tablespace") → progress(done, total)."""
    def parse(update: str) -> None:
        match = re.search(r"(\d+)/(\d+) kB", update)
        if match:
            progress(int(match.group(1)), int(match.group(2)))
    return parse
