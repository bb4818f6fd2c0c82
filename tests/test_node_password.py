"""`pgfleet node add`: the password comes from PGPASSWORD, a passfile or a prompt, and is never shown."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import make_cluster, pgfleet_cli
from pgfleet.cluster.local import LocalCluster
from pgfleet.execute.password import passfile_password


@pytest.fixture(scope="module")
def pair(base_dir: Path) -> Iterator[tuple[LocalCluster, LocalCluster]]:
    """A coordinator without workers, and an existing server with one database per way of adding it."""
    target = make_cluster(base_dir / "pw_target", workers=0)
    existing = make_cluster(base_dir / "pw_existing", workers=0)
    from pgfleet.execute.connect import connect

    with connect(existing.endpoint("coord")) as conn:
        for db in ("by_dsn", "by_env", "by_passfile", "by_pgpassfile", "by_prompt"):
            conn.execute(f"CREATE DATABASE {db}".encode())
    yield target, existing
    target.destroy()
    existing.destroy()


def _dsn(existing: LocalCluster, db: str) -> str:
    ep = existing.endpoint("coord")
    return f"host={ep.host} port={ep.port} dbname={db} user={ep.user}"


def _clean_env(home: Path) -> dict[str, str]:
    return {"HOME": str(home), "PGPASSWORD": "", "PGPASSFILE": ""}


def _assert_hidden(target: LocalCluster, password: str, *outputs: str) -> None:
    for text in outputs:
        assert password not in text
    status = pgfleet_cli("status", "--json", directory=target.directory)
    assert password not in status.stdout + status.stderr
    export = target.directory / "exported.json"
    assert pgfleet_cli("export", str(export), directory=target.directory).returncode == 0
    assert password not in export.read_text()
    assert password not in pgfleet_cli("node", "list", directory=target.directory).stdout


def _healthy(target: LocalCluster, node: str) -> bool:
    report = json.loads(pgfleet_cli("status", "--json", directory=target.directory).stdout)
    return any(n["name"] == node and n["healthy"] for n in report["nodes"])


def test_password_sources(pair: tuple[LocalCluster, LocalCluster], tmp_path: Path) -> None:
    target, existing = pair
    password = existing.endpoint("coord").password
    assert password
    env = _clean_env(tmp_path)

    # in the DSN: accepted, with one warning that says how to avoid it
    proc = pgfleet_cli("node", "add", "by_dsn", "--dsn", _dsn(existing, "by_dsn") + f" password={password}",
                       directory=target.directory, env=env)
    assert proc.returncode == 0, proc.stderr
    warning = proc.stderr.strip().splitlines()
    assert len(warning) == 1 and "warning:" in warning[0] and "process list" in warning[0], proc.stderr
    assert "PGPASSWORD" in warning[0] and "passfile" in warning[0]
    _assert_hidden(target, password, proc.stdout, proc.stderr)
    assert _healthy(target, "by_dsn")

    # PGPASSWORD: no warning
    proc = pgfleet_cli("node", "add", "by_env", "--dsn", _dsn(existing, "by_env"), directory=target.directory,
                       env={**env, "PGPASSWORD": password})
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert _healthy(target, "by_env")

    # a passfile named in the DSN, and one named by PGPASSFILE (0600, libpq's format with wildcards)
    ep = existing.endpoint("coord")
    passfile = tmp_path / "pass"
    passfile.write_text(f"# comment\nother:1:*:*:wrong\n{ep.host}:{ep.port}:by_passfile:{ep.user}:{password}\n"
                        f"*:{ep.port}:*:{ep.user}:{password}\n")
    passfile.chmod(0o600)
    proc = pgfleet_cli("node", "add", "by_passfile", "--dsn", _dsn(existing, "by_passfile") + f" passfile={passfile}",
                       directory=target.directory, env=env)
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    proc = pgfleet_cli("node", "add", "by_pgpassfile", "--dsn", _dsn(existing, "by_pgpassfile"),
                       directory=target.directory, env={**env, "PGPASSFILE": str(passfile)})
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    assert _healthy(target, "by_passfile") and _healthy(target, "by_pgpassfile")
    _assert_hidden(target, password, proc.stdout, proc.stderr)

    # a passfile others can read is refused, in one line
    passfile.chmod(0o644)
    proc = pgfleet_cli("node", "add", "nope", "--dsn", _dsn(existing, "by_prompt"), directory=target.directory,
                       env={**env, "PGPASSFILE": str(passfile)})
    assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1
    assert "can be read by other users" in proc.stderr and password not in proc.stderr


def test_password_prompt_on_a_terminal(pair: tuple[LocalCluster, LocalCluster], tmp_path: Path) -> None:
    target, existing = pair
    password = existing.endpoint("coord").password
    assert password
    master, slave = pty.openpty()

    # the terminal becomes the child's /dev/tty (its own session), as in an interactive shell
    start = ("import fcntl, runpy, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); sys.argv[0] = 'pgfleet'; "
             "runpy.run_module('pgfleet.cli.main', run_name='__main__')")
    proc = subprocess.Popen(
        [sys.executable, "-c", start, "node", "add", "by_prompt", "--dsn", _dsn(existing, "by_prompt")],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, **_clean_env(tmp_path), "PGFLEET_DIR": str(target.directory)})
    os.close(slave)
    seen = b""
    while b"password for" not in seen:
        ready, _, _ = select.select([master], [], [], 30)
        assert ready, f"no prompt; seen {seen!r}"
        seen += os.read(master, 1024)
    os.write(master, password.encode() + b"\n")
    out, errs = proc.communicate(timeout=60)
    os.close(master)
    assert proc.returncode == 0, errs
    assert password.encode() not in seen + out + errs  # not echoed
    assert _healthy(target, "by_prompt")


def test_passfile_format(tmp_path: Path) -> None:
    f = tmp_path / "p"
    f.write_text("h\\:x:5432:db:u:first\nh:5432:db:u:pa\\:ss\\\\w:ord\n")
    f.chmod(0o600)
    assert passfile_password(f, "h:x", 5432, "db", "u") == "first"
    assert passfile_password(f, "h", 5432, "db", "u") == "pa:ss\\w:ord"
    assert passfile_password(f, "h", 5433, "db", "u") is None
