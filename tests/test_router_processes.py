"""``pgfleet router start --processes N``: N router processes accept on one port (SO_REUSEPORT); a cancel
request reaching any of them is forwarded to the process holding the session; status sums them."""

from __future__ import annotations

import asyncio
import json
import time

import psycopg
import pytest
from conftest import pgfleet_cli

from pgfleet.cluster.local import LocalCluster
from pgfleet.node.server import process_alive
from pgfleet.router import protocol as p
from pgfleet.router import wire
from pgfleet.router.backend import WorkerConnection, WorkerLogin
from pgfleet.router.keys import process_of
from pgfleet.router.process import running
from pgfleet.router.context import send_cancel

pytestmark = pytest.mark.cluster


def test_processes_share_the_port_and_forward_cancels(cluster: LocalCluster) -> None:
    directory = cluster.directory
    started = pgfleet_cli("router", "start", "--route", "--processes", "2", directory=directory)
    assert started.returncode == 0, started.stderr
    try:
        proc = running(cluster)
        assert proc is not None and len(proc.pids) == 2 and len(proc.peer_ports) == 2
        assert f"2 processes: pids {proc.pids[0]}, {proc.pids[1]}" in started.stderr
        conns = [psycopg.connect(started.stdout.strip(), autocommit=True) for _ in range(16)]
        try:
            for conn in conns:
                assert conn.execute("SELECT 1").fetchone() == (1,)
            # the kernel spreads connections over the processes; the key names the one holding the session
            assert {process_of(conn.info.backend_pid) for conn in conns} == {0, 1}
        finally:
            for conn in conns:
                conn.close()

        async def cancel_through_the_other_process() -> list[p.Message]:
            login = WorkerLogin("127.0.0.1", proc.peer_ports[1], cluster.spec.superuser,
                                cluster.spec.coordinator.password, cluster.spec.dbname)
            client = await WorkerConnection.open(login)  # a plain protocol client of router process 1
            try:
                assert client.cancel_key is not None
                pid, secret = client.cancel_key
                assert process_of(pid) == 1
                sleeping = asyncio.ensure_future(client.request("SELECT pg_sleep(10)"))
                await asyncio.sleep(0.5)
                await send_cancel(("127.0.0.1", proc.peer_ports[0]), wire.CancelRequest(pid, secret))
                return [p.decode_backend(t, b) for t, b in await asyncio.wait_for(sleeping, 5)]
            finally:
                client.close()

        start = time.monotonic()
        messages = asyncio.run(cancel_through_the_other_process())
        assert time.monotonic() - start < 5
        assert [m.sqlstate for m in messages if isinstance(m, p.ErrorResponse)] == ["57014"]  # query_canceled
        time.sleep(1.3)  # status files are refreshed every second
        state = json.loads(pgfleet_cli("router", "status", "--json", directory=directory).stdout)
        assert state["processes"] == 2 and state["cancels"] == 1 and state["clients_total"] >= 17
    finally:
        stopped = pgfleet_cli("router", "stop", directory=directory)
    assert "router stopped" in stopped.stderr
    assert not any(process_alive(pid) for pid in proc.pids)  # gone, or a zombie its new parent has yet to reap


def test_processes_out_of_range(cluster: LocalCluster) -> None:
    result = pgfleet_cli("router", "start", "--processes", "0", directory=cluster.directory)
    assert result.returncode == 1 and "--processes 0 is out of range" in result.stderr
    assert running(cluster) is None
