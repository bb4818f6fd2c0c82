"""Bringing a restored data directory to a named restore point, privately.

While it recovers and until pgfleet has fixed it up, the server listens on no TCP address: only on a Unix
socket in a 0700 directory of the server account, with ``trust`` for local connections (only that account
and root reach the socket). Recovery reads the WAL from ``pg_wal`` (restore_command finds nothing), stops
at the restore point and promotes. ``open_up`` then gives the server its normal configuration.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psycopg
from psycopg import sql

from ..errors import NodeError
from ..execute.connect import Conn
from ..proc import RunAs, run
from .osuser import give_to
from .server import STANDBY_CONF, SYNC_CONF, LocalServer

PRIVATE_HBA = "# written by pgfleet during a restore: local socket only, in a private directory\n" \
              "local   all             all                                     trust\n"
# Files of the source that must not follow the copy: replication of the source's standbys, its manifest.
DROPPED = (SYNC_CONF, STANDBY_CONF, "standby.signal", "recovery.signal", "postmaster.pid", "postmaster.opts",
           "backup_manifest")


def conf_string(text: str) -> str:
    """A postgresql.conf string value."""
    return "'" + text.replace("'", "''") + "'"


def own_tree(path: Path, run_as: RunAs | None) -> None:
    """Give a copied tree to the server account (directories 0700, files 0600)."""
    if run_as is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, run_as.uid, run_as.gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), run_as.uid, run_as.gid, follow_symlinks=False)


def install_copy(server: LocalServer, data: Path, wal: dict[str, Path]) -> None:
    """Copy a base backup (``data``) and the WAL files after it (by their name in pg_wal) into the server's
    (new) data directory."""
    if server.datadir.exists():
        raise NodeError(f"data directory {server.datadir} already exists", node=server.name)
    server.home.mkdir(parents=True, exist_ok=True)
    give_to(str(server.home), server.run_as, 0o700)
    shutil.copytree(data, server.datadir, symlinks=True)
    for name in DROPPED:
        (server.datadir / name).unlink(missing_ok=True)
    wal_dir = server.datadir / "pg_wal"
    for name, path in wal.items():
        shutil.copyfile(path, wal_dir / name)  # the received WAL goes further than the backup's own
    own_tree(server.datadir, server.run_as)
    os.chmod(server.datadir, 0o700)


def recover_privately(server: LocalServer, socket_dir: Path, target_name: str, *, fast: bool,
                      timeout: float = 3600) -> None:
    """Start the server on ``socket_dir`` only, recover to restore point ``target_name``, promote."""
    server.write_config(fast=fast, extra=[
        ("listen_addresses", "''"), ("unix_socket_directories", conf_string(str(socket_dir))),
        ("hot_standby", "off"),  # no connection before the end of recovery (pg_ctl -w then means promoted)
        ("restore_command", "'false'"), ("recovery_target_name", conf_string(target_name)),
        ("recovery_target_action", "'promote'"), ("synchronous_standby_names", "''")])
    server.write_file(server.datadir / "pg_hba.conf", PRIVATE_HBA)
    server.write_file(server.datadir / "recovery.signal", "")
    done = run([server.binaries.path("pg_ctl"), "-D", str(server.datadir), "-l", str(server.logfile), "-w",
                "-t", str(int(timeout)), "start"], run_as=server.run_as, check=False, timeout=timeout + 30,
               what="pg_ctl start (recovery)", node=server.name)
    if done.returncode != 0:
        raise NodeError(f"recovery to restore point {target_name} failed: {server.log_tail(3)}", node=server.name,
                        hint=f"see {server.logfile}; the backup may be incomplete")


def private_conn(server: LocalServer, socket_dir: Path, user: str, dbname: str, timeout: float = 60) -> Conn:
    """A superuser connection over the private socket, once the server has left recovery."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = psycopg.connect(host=str(socket_dir), port=server.port, user=user, dbname=dbname,
                                   autocommit=True, application_name="pgfleet restore")
            row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
            if row is not None and not row[0]:
                return conn
            conn.close()
        except psycopg.OperationalError:
            pass
        if time.monotonic() > deadline:
            raise NodeError("the restored server did not leave recovery", node=server.name,
                            hint=f"see {server.logfile}")
        time.sleep(0.2)


def set_password(conn: Conn, user: str, password: str) -> None:
    """Give ``user`` a new password; only its SCRAM verifier, made here, reaches the server."""
    verifier = conn.pgconn.encrypt_password(password.encode(), user.encode(), b"scram-sha-256").decode()
    conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(user), sql.Literal(verifier)))


def open_up(server: LocalServer, *, fast: bool) -> None:
    """Stop the privately running server and start it with its normal configuration (TCP, SCRAM)."""
    run([server.binaries.path("pg_ctl"), "-D", str(server.datadir), "-m", "fast", "-w", "-t", "120", "stop"],
        run_as=server.run_as, timeout=150, what="pg_ctl stop", node=server.name)
    server.write_config(fast=fast)
    server.start()
