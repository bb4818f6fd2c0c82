"""Command-line usability on a real cluster: --dir anywhere, the per-user default directory, the wheel's
client programs, distribute's summary, status's exit code, JSON and sizes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conftest import make_cluster, pgfleet_cli
from pgfleet.cluster.local import LocalCluster

NO_DIR_ENV = {"PGFLEET_DIR": ""}


@pytest.fixture(scope="module")
def small(base_dir: Path) -> Iterator[LocalCluster]:
    local = make_cluster(base_dir / "cli-usability", workers=2)
    yield local
    local.destroy()


def _coord(local: LocalCluster) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(local.endpoint("coord").conninfo(), autocommit=True)


def test_dir_after_the_subcommand(small: LocalCluster, base_dir: Path) -> None:
    d = str(small.directory)
    before = pgfleet_cli("--dir", d, "node", "list", env=NO_DIR_ENV)
    assert before.returncode == 0, before.stderr
    after = pgfleet_cli("node", "list", "--dir", d, env=NO_DIR_ENV)
    assert after.returncode == 0, after.stderr
    assert after.stdout == before.stdout and "w2\tworker" in after.stdout
    st = pgfleet_cli("status", "--json", "--dir", d, env=NO_DIR_ENV)
    assert st.returncode == 0, st.stderr
    assert [n["name"] for n in json.loads(st.stdout)["nodes"]] == ["coord", "w1", "w2"]
    # after the subcommand it wins over the environment and over --dir before it
    absent = str(base_dir / "no-cluster-here")
    assert pgfleet_cli("dsn", "--dir", d, env={"PGFLEET_DIR": absent}).returncode == 0
    assert pgfleet_cli("--dir", absent, "dsn", "--dir", d).returncode == 0
    wrong = pgfleet_cli("dsn", "--dir", absent, env=NO_DIR_ENV)
    assert wrong.returncode != 0 and f"no pgfleet cluster in {absent}" in wrong.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the shared default only concerned root")
def test_default_directory_as_root_is_per_user() -> None:
    mine = pgfleet_cli("dsn", env=NO_DIR_ENV)
    assert mine.returncode != 0
    assert "no pgfleet cluster in /var/lib/pgfleet/root/default" in mine.stderr, mine.stderr
    alice = pgfleet_cli("dsn", env={**NO_DIR_ENV, "SUDO_USER": "alice"})
    assert "no pgfleet cluster in /var/lib/pgfleet/alice/default" in alice.stderr, alice.stderr
    helptext = pgfleet_cli("--help").stdout
    assert "/var/lib/pgfleet/USER/default" in " ".join(helptext.split())


def test_client_programs_of_the_wheel(small: LocalCluster) -> None:
    d = small.directory
    with _coord(small) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS dumped_here (id int PRIMARY KEY, note text)")
    dump = pgfleet_cli("pg_dump", "--schema-only", "-t", "dumped_here", directory=d)
    assert dump.returncode == 0, dump.stderr
    assert "CREATE TABLE public.dumped_here" in dump.stdout
    passwords = [n.password for n in small.spec.nodes]
    assert not any(p in dump.stdout + dump.stderr for p in passwords)

    init = pgfleet_cli("pgbench", "--node", "w1", "-i", "-s", "1", "-q", directory=d)
    assert init.returncode == 0, init.stderr
    run = pgfleet_cli("pgbench", "-n", "-S", "-t", "7", "--node", "w1", directory=d)
    assert run.returncode == 0, run.stderr
    assert "number of transactions actually processed: 7/7" in run.stdout
    count = pgfleet_cli("psql", "--node", "w1", "-At", "-c", "SELECT count(*) FROM pgbench_accounts", directory=d)
    assert count.stdout.strip() == "100000", count.stderr
    # without --node: the coordinator, which has no pgbench tables
    coord = pgfleet_cli("pgbench", "-n", "-S", "-t", "1", directory=d)
    assert coord.returncode != 0 and "pgbench_branches\" does not exist" in coord.stderr
    drop = pgfleet_cli("pgbench", "-i", "-I", "d", "--node", "w1", directory=d)
    assert drop.returncode == 0, drop.stderr


def test_distribute_summary_names_the_table_it_distributed(small: LocalCluster) -> None:
    d = small.directory
    with _coord(small) as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS demo_other")
        conn.execute("CREATE TABLE demo_other.products (id bigint PRIMARY KEY, name text)")
        conn.execute("CREATE TABLE public.products (id bigint PRIMARY KEY, name text)")
        conn.execute("INSERT INTO public.products SELECT g, 'p' || g FROM generate_series(1, 50) g")
    first = pgfleet_cli("distribute", "demo_other.products", "--key", "id", "--shards", "4", directory=d)
    assert first.returncode == 0, first.stderr
    assert "distributed demo_other.products by hash on id: 4 shards" in " ".join(first.stdout.split())
    second = pgfleet_cli("distribute", "products", "--key", "id", "--shards", "8", directory=d)
    assert second.returncode == 0, second.stderr
    text = " ".join(second.stdout.split())
    assert "distributed public.products by hash on id: 8 shards on w1, w2; 50 rows moved" in text, text


def test_status_sizes_per_table_and_shard(small: LocalCluster) -> None:
    d = small.directory
    with _coord(small) as conn:
        conn.execute("CREATE TABLE sized (id bigint PRIMARY KEY, pad text)")
        conn.execute("INSERT INTO sized SELECT g, repeat('x', 200) FROM generate_series(1, 4000) g")
    assert pgfleet_cli("distribute", "sized", "--key", "id", "--shards", "4", directory=d).returncode == 0
    st = pgfleet_cli("status", "--json", directory=d)
    assert st.returncode == 0, st.stderr
    table = next(t for t in json.loads(st.stdout)["tables"] if t["name"] == "public.sized")
    assert table["shards"] == 4 and len(table["shard_sizes"]) == 4
    with _coord(small) as conn:
        for shard in table["shard_sizes"]:
            w = small.endpoint(shard["node"])
            with psycopg.connect(w.conninfo()) as wconn:
                row = wconn.execute("SELECT pg_total_relation_size(%s::regclass)", (shard["shard"],)).fetchone()
            assert row is not None and shard["bytes"] == row[0] > 8192
        rows = conn.execute("SELECT count(*) FROM sized").fetchone()
    assert rows == (4000,)
    assert table["bytes"] == sum(s["bytes"] for s in table["shard_sizes"])
    text = pgfleet_cli("status", directory=d)
    assert text.returncode == 0, text.stderr
    shard_lines = [line for line in text.stdout.splitlines() if "public.sized" in line]
    assert len(shard_lines) == 1 + 4 and all(("kB" in line or "MB" in line) for line in shard_lines), text.stdout


def test_status_fails_when_a_node_is_down(small: LocalCluster) -> None:
    d = small.directory
    assert pgfleet_cli("status", "--json", directory=d).returncode == 0
    small.server("w2").stop()
    try:
        down = pgfleet_cli("status", directory=d)
        assert down.returncode != 0 and "down" in down.stdout
        down_json = pgfleet_cli("status", "--json", directory=d)
        assert down_json.returncode != 0
        nodes = {n["name"]: n for n in json.loads(down_json.stdout)["nodes"]}
        assert nodes["w2"]["healthy"] is False and nodes["w2"]["error"] and nodes["w1"]["healthy"] is True
        small.server("coord").stop()
        no_coord = pgfleet_cli("status", "--json", directory=d)
        assert no_coord.returncode != 0
        report = json.loads(no_coord.stdout)
        assert "node coord: cannot connect" in report["error"] and report["nodes"] == []
    finally:
        small.start()
    assert pgfleet_cli("status", directory=d).returncode == 0
