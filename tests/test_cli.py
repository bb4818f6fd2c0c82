"""The command line on a real cluster: life cycle, output, and one clear line per error."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path

import psycopg
import pytest

from conftest import pgfleet_cli
from pgfleet.cluster.local import LocalCluster


def _one_line_error(proc: object, pattern: str) -> None:
    import re

    assert proc.returncode != 0  # type: ignore[attr-defined]
    err = proc.stderr.strip()  # type: ignore[attr-defined]
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err


def test_life_cycle(base_dir: Path) -> None:
    d = base_dir / "cli"
    up = pgfleet_cli("up", "--workers", "1", "--fast", directory=d)
    assert up.returncode == 0, up.stderr
    local = LocalCluster.load(d)
    passwords = [n.password for n in local.spec.nodes]
    for text in (up.stdout, up.stderr):
        assert not any(p in text for p in passwords)
    assert stat.S_IMODE(os.stat(d / "cluster.json").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d / "pgpass").st_mode) == 0o600
    hba = (d / "nodes" / "coord" / "data" / "pg_hba.conf").read_text()
    assert "trust" not in hba.replace("# written by pgfleet", "") and "scram-sha-256" in hba
    if os.geteuid() == 0:
        assert os.stat(d / "nodes" / "coord" / "data").st_uid != 0  # servers run unprivileged

    dsn = pgfleet_cli("dsn", directory=d)
    assert dsn.returncode == 0 and "passfile=" in dsn.stdout and not any(p in dsn.stdout for p in passwords)
    with psycopg.connect(dsn.stdout.strip()) as conn:
        conn.execute("CREATE TABLE kept (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO kept VALUES (1, 'a'), (2, 'b')")
        conn.commit()
    dist = pgfleet_cli("distribute", "kept", "--key", "id", "--shards", "2", directory=d)
    assert dist.returncode == 0, dist.stderr
    assert "2 shards on w1; 2 rows moved and verified" in " ".join(dist.stdout.split())

    csv_file = d / "more.csv"
    csv_file.write_text('id,v\n3,"c, with comma"\n4,d\n')
    loaded = pgfleet_cli("load", "kept", str(csv_file), "--csv", "--header", directory=d)
    assert loaded.returncode == 0, loaded.stderr
    assert "loaded 2 rows into kept straight into 2 shards" in loaded.stdout
    piped = pgfleet_cli("load", "kept", "-", "--columns", "v,id", directory=d, input="e\t5\n")
    assert piped.returncode == 0 and "loaded 1 rows" in piped.stdout, piped.stderr
    _one_line_error(pgfleet_cli("load", "kept", str(d / "absent.csv"), directory=d), r"cannot read .*absent.csv")
    _one_line_error(pgfleet_cli("load", "nope", str(csv_file), directory=d), r"table nope does not exist")
    _one_line_error(pgfleet_cli("load", "kept", str(csv_file), "--delimiter", "ab", directory=d),
                    r"the delimiter must be one single-byte character")
    _one_line_error(pgfleet_cli("load", "kept", "-", "--columns", "id,w", directory=d, input="1\tx\n"),
                    r"table kept has no column w")
    # every shard meets a duplicate early, while more data is still being sent: one error line all the same
    many = "1\tx\n2\ty\n3\tz\n4\tw\n" + "".join(f"{i}\t{'v' * 40}\n" for i in range(100, 40000))
    dup = pgfleet_cli("load", "kept", "-", directory=d, input=many)
    _one_line_error(dup, r"duplicate key value")
    with psycopg.connect(dsn.stdout.strip()) as conn:
        assert conn.execute("SELECT id, v FROM kept ORDER BY id").fetchall() == [
            (1, "a"), (2, "b"), (3, "c, with comma"), (4, "d"), (5, "e")]
        conn.execute("DELETE FROM kept WHERE id > 2")
        conn.commit()

    st = pgfleet_cli("status", "--json", directory=d)
    assert st.returncode == 0, st.stderr
    report = json.loads(st.stdout)
    assert [(n["name"], n["role"], n["healthy"]) for n in report["nodes"]] == [
        ("coord", "coordinator", True), ("w1", "worker", True)]
    assert report["tables"][0]["name"] == "public.kept" and report["tables"][0]["shards"] == 2

    ps = pgfleet_cli("psql", "-At", "-c", "SELECT count(*) FROM kept", directory=d)
    assert ps.returncode == 0 and ps.stdout.strip() == "2", ps.stderr

    down = pgfleet_cli("down", directory=d)
    assert down.returncode == 0 and "stopped" in down.stdout
    _one_line_error(pgfleet_cli("status", directory=d), r"node coord: cannot connect .* start the node")

    again = pgfleet_cli("up", directory=d)
    assert again.returncode == 0 and "started coord, w1" in again.stdout
    same = pgfleet_cli("up", directory=d)
    assert same.returncode == 0 and "already running" in same.stdout
    with psycopg.connect(dsn.stdout.strip()) as conn:
        assert conn.execute("SELECT * FROM kept ORDER BY id").fetchall() == [(1, "a"), (2, "b")]
    assert pgfleet_cli("down", "--destroy", directory=d).returncode == 0
    assert not d.exists()


def test_errors_are_one_clear_line(base_dir: Path, cluster: LocalCluster) -> None:
    _one_line_error(pgfleet_cli("status", directory=base_dir / "absent"), r"no pgfleet cluster in .* 'pgfleet up'")
    bad = base_dir / "badfile"
    bad.mkdir(exist_ok=True)
    (bad / "cluster.json").write_text("{not json")
    _one_line_error(pgfleet_cli("status", directory=bad), r"not a valid pgfleet cluster file")
    _one_line_error(pgfleet_cli("up", directory=base_dir / "nobin", env={"PGFLEET_PG_BIN": "/nonexistent/bin"}),
                    r"no PostgreSQL binaries in /nonexistent/bin .* PGFLEET_PG_BIN")
    assert not (base_dir / "nobin" / "cluster.json").exists()
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        _one_line_error(pgfleet_cli("up", "--port", str(port), "--workers", "0", directory=base_dir / "busy"),
                        rf"port {port} on 127.0.0.1 is in use")
    assert not (base_dir / "busy").exists()
    d = cluster.directory
    _one_line_error(pgfleet_cli("distribute", "no_such_table", "--key", "id", directory=d),
                    r"table no_such_table does not exist on the coordinator")
    _one_line_error(pgfleet_cli("distribute", "x;drop", "--key", "id", directory=d), r"malformed name")
    _one_line_error(pgfleet_cli("distribute", "t", "--key", "id", "--shards", "2", "--bounds", "1,2", directory=d),
                    r"--shards and --bounds exclude each other")
    _one_line_error(pgfleet_cli("distribute", "t", "--key", "id", "--list", "paris", directory=d),
                    r"bad list shard 'paris'")
    _one_line_error(pgfleet_cli("node", "add", "Bad-Name", "--dsn", "host=127.0.0.1", directory=d),
                    r"malformed node name")
    _one_line_error(pgfleet_cli("node", "add", "w9", "--dsn", "host=127.0.0.1 port=1", directory=d),
                    r"node w9: cannot connect to 127.0.0.1:1/postgres")
    _one_line_error(pgfleet_cli("import", str(bad / "cluster.json"), directory=d), r"is not JSON")


@pytest.mark.parametrize("args", [["--help"], ["distribute", "--help"], ["--version"]])
def test_help(args: list[str]) -> None:
    proc = pgfleet_cli(*args)
    assert proc.returncode == 0 and proc.stdout
