"""Fault drills of the router's two-phase commit: the commit decision is held up (a lock on
pgfleet.commit_decisions, as a backup's restore point takes it) after every worker PREPAREd, then a
worker is killed, the router process is killed, or the coordinator restarts. After recovery, the transfer
is on both sides or on neither, the total is conserved, and no prepared transaction is left."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from conftest import pgfleet_cli
from test_router_txn import (
    ACCOUNTS,
    BALANCE,
    accounts,
    connect,
    keys_by_node,
    prepared_everywhere,
    router,
    routing_router,
    run,
)

from pgfleet.cluster.local import LocalCluster
from pgfleet.router.process import running, start_background, stop_background
from pgfleet.router.server import RouterServer

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
__all__ = ["accounts", "router"]  # fixtures


def wait_for(check: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def prepared_on_both(cluster: LocalCluster) -> bool:
    try:
        return all(prepared_count(cluster, node) == 1 for node in ("w1", "w2"))
    except psycopg.Error:
        return False


def prepared_count(cluster: LocalCluster, node: str) -> int:
    ep = cluster.endpoint(node)
    with psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname,
                         connect_timeout=3) as conn:
        row = conn.execute("SELECT count(*) FROM pg_prepared_xacts").fetchone()
        return int(row[0]) if row else 0


def no_prepared(cluster: LocalCluster) -> bool:
    try:
        return prepared_everywhere(cluster) == 0
    except psycopg.Error:
        return False


class Transfer:
    """BEGIN; move 30 from one worker's account to the other's; COMMIT — in a thread (its COMMIT blocks)."""

    def __init__(self, cluster: LocalCluster, port: int, schema: str, here: int, there: int) -> None:
        self.outcome: str | BaseException = "running"
        self.conn = connect(cluster, port, schema)
        run(self.conn, "BEGIN")
        run(self.conn, f"UPDATE acct SET balance = balance - 30 WHERE id = {here}")
        run(self.conn, f"UPDATE acct SET balance = balance + 30 WHERE id = {there}")
        self.thread = threading.Thread(target=self._commit, daemon=True)
        self.thread.start()

    def _commit(self) -> None:
        try:
            run(self.conn, "COMMIT")
            self.outcome = "committed"
        except BaseException as exc:
            self.outcome = exc

    def finish(self) -> str | BaseException:
        self.thread.join(30)
        self.conn.close()
        return self.outcome


def hold_decisions(cluster: LocalCluster) -> psycopg.Connection[Any]:
    ep = cluster.endpoint("coord")
    holder = psycopg.connect(host=ep.host, port=ep.port, user=ep.user, password=ep.password, dbname=ep.dbname)
    holder.execute("LOCK pgfleet.commit_decisions IN EXCLUSIVE MODE")
    return holder


def balances(cluster: LocalCluster, schema: str, here: int, there: int) -> tuple[int, int, int]:
    with connect(cluster, cluster.spec.coordinator.port, schema) as direct:
        rows = run(direct, f"SELECT (SELECT balance FROM acct WHERE id = {here}), "
                           f"(SELECT balance FROM acct WHERE id = {there}), (SELECT sum(balance) FROM acct)")
        assert rows is not None
        return tuple(int(v) for v in rows[0])  # type: ignore[return-value]


def assert_all_or_nothing(cluster: LocalCluster, schema: str, here: int, there: int) -> bool:
    a, b, total = balances(cluster, schema, here, there)
    assert total == ACCOUNTS * BALANCE
    assert (a, b) in ((BALANCE, BALANCE), (BALANCE - 30, BALANCE + 30)), (a, b)
    return a != BALANCE


def test_worker_killed_after_prepare(cluster: LocalCluster, accounts: str) -> None:
    # recovery leaves prepared transactions younger than 8 s alone: the owner's decision goes first
    with routing_router(cluster, recovery_min_age=8.0) as router:
        here, there = (keys[0] for keys in keys_by_node(router, accounts).values())
        holder = hold_decisions(cluster)
        transfer = Transfer(cluster, router.config.port, accounts, here, there)
        try:
            wait_for(lambda: prepared_on_both(cluster), 5, "PREPARE on both workers")
            cluster.server("w2").kill()
        finally:
            holder.rollback()  # the decision goes through: committed
            holder.close()
        assert transfer.finish() == "committed"  # decided: the client gets COMMIT, recovery applies it on w2
        wait_for(lambda: not cluster.server("w2").is_running(), 10, "w2 to be gone")  # else start() sees it alive
        cluster.server("w2").start()
        wait_for(lambda: no_prepared(cluster), 20, "recovery to commit on w2")
        assert assert_all_or_nothing(cluster, accounts, here, there)  # committed on both sides
        assert router.context.stats.recovered_commits == 1


def test_coordinator_restarted_before_the_decision(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    here, there = (keys[0] for keys in keys_by_node(router, accounts).values())
    holder = hold_decisions(cluster)
    transfer = Transfer(cluster, router.config.port, accounts, here, there)
    wait_for(lambda: prepared_on_both(cluster), 15, "PREPARE on both workers")
    cluster.server("coord").stop(mode="immediate")  # the holder and the decision in flight die with it
    holder.close()
    outcome = transfer.finish()  # 40003 (outcome unknown), or the session ends with its coordinator connection
    assert isinstance(outcome, psycopg.OperationalError) or (
        isinstance(outcome, psycopg.Error) and outcome.sqlstate == "40003"), outcome
    cluster.server("coord").start()
    wait_for(lambda: no_prepared(cluster), 20, "recovery to abort the prepared transactions")
    assert not assert_all_or_nothing(cluster, accounts, here, there)  # no decision row: rolled back on both
    assert router.context.stats.recovered_aborts >= 2


def test_router_killed_before_the_decision(cluster: LocalCluster, router: RouterServer, accounts: str) -> None:
    """The router process dies while its decision waits; a new router's recovery finishes the transaction
    one way or the other (the in-thread router of the fixture recovers too: concurrent recovery is safe)."""
    here, there = (keys[0] for keys in keys_by_node(router, accounts).values())
    proc, _ = start_background(cluster, route=True)
    try:
        time.sleep(2.5)  # its topology: read at start, the table was distributed before
        with connect(cluster, proc.port, accounts) as conn:  # one transaction on one worker, one on both
            for keys in ((here, here), (here, there)):
                run(conn, "BEGIN")
                for key in keys:
                    run(conn, f"UPDATE acct SET note = 'x' WHERE id = {key}")
                run(conn, "COMMIT")
        time.sleep(1.2)  # the status files are written every second
        status = pgfleet_cli("router", "status", "--json", directory=cluster.directory)
        counters = json.loads(status.stdout)
        assert (counters["worker_transactions"], counters["two_phase_commits"], counters["in_doubt"]) == (1, 1, 0)
        assert "two phase commits" in pgfleet_cli("router", "status", directory=cluster.directory).stdout
        holder = hold_decisions(cluster)
        transfer = Transfer(cluster, proc.port, accounts, here, there)
        try:
            wait_for(lambda: prepared_on_both(cluster), 15, "PREPARE on both workers")
            current = running(cluster)
            assert current is not None
            for pid in current.pids or (current.pid,):
                os.kill(pid, signal.SIGKILL)
        finally:
            holder.rollback()
            holder.close()
        assert isinstance(transfer.finish(), psycopg.OperationalError)  # the client lost its connection
        wait_for(lambda: no_prepared(cluster), 20, "recovery of the dead router's transaction")
        assert_all_or_nothing(cluster, accounts, here, there)
    finally:
        stop_background(cluster)
