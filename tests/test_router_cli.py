"""``pgfleet router start|status|stop`` runs the router as a background process of the local cluster."""

from __future__ import annotations

import json
import threading
import time

import psycopg
import pytest
from conftest import pgfleet_cli

from pgfleet.cluster.local import LocalCluster

pytestmark = pytest.mark.cluster


def test_router_start_status_stop(cluster: LocalCluster) -> None:
    directory = cluster.directory
    assert json.loads(pgfleet_cli("router", "status", "--json", directory=directory).stdout) == {"running": False}
    started = pgfleet_cli("router", "start", "--route", directory=directory)
    try:
        assert started.returncode == 0, started.stderr
        dsn = started.stdout.strip()
        assert "router started on port" in started.stderr
        again = pgfleet_cli("router", "start", directory=directory)
        assert "router already running" in again.stderr and again.stdout.strip() == dsn
        with psycopg.connect(dsn, autocommit=True) as conn:  # the printed string works (passfile for its port)
            assert conn.execute("SELECT current_setting('port')::int").fetchone() == (cluster.spec.coordinator.port,)
            # the blocking libpq cancel, as psql's Ctrl-C sends it, to a router in its own process
            timer = threading.Timer(0.5, conn.cancel)
            start = time.monotonic()
            timer.start()
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("SELECT pg_sleep(10)")
            timer.join()
            assert time.monotonic() - start < 5
            time.sleep(1.2)  # the status file is refreshed every second
            state = json.loads(pgfleet_cli("router", "status", "--json", directory=directory).stdout)
            assert state["clients_active"] == 1 and state["queries"] + state["executes"] >= 2 and state["cancels"] == 1
            assert state["coordinator"] == f"127.0.0.1:{cluster.spec.coordinator.port}" and state["routing"] is True
        table = pgfleet_cli("router", "status", directory=directory).stdout
        assert "clients total" in table
    finally:
        stopped = pgfleet_cli("router", "stop", directory=directory)
    assert "router stopped" in stopped.stderr
    assert "not running" in pgfleet_cli("router", "status", directory=directory).stdout


def test_router_port_in_use(cluster: LocalCluster) -> None:
    result = pgfleet_cli("router", "start", "--port", str(cluster.spec.coordinator.port), directory=cluster.directory)
    assert result.returncode == 1
    assert f"port {cluster.spec.coordinator.port} on 127.0.0.1 is in use" in result.stderr
