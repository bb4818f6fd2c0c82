"""Pure parts of router transactions: transaction-control statements and their options, the recovery
decisions from prepared transactions and decision rows, and cutting the coordinator's setup answer."""

from __future__ import annotations

import os

import pytest

from pgfleet.router import protocol as p
from pgfleet.router.recovery import Outcome, Prepared, plan
from pgfleet.router.twophase import GID_PREFIX, GidMaker
from pgfleet.router.txnreply import ReplySkipper, without_setup
from pgfleet.router.txnstmt import BeginOptions, Kind, control, reads_only


@pytest.mark.parametrize(("sql", "kind", "tag", "begin"), [
    ("begin", Kind.BEGIN, "BEGIN", "BEGIN"),
    ("BEGIN TRANSACTION;", Kind.BEGIN, "BEGIN", "BEGIN"),
    ("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", Kind.BEGIN, "START TRANSACTION",
     "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
    ("/* app */ begin isolation level serializable read write deferrable", Kind.BEGIN, "BEGIN",
     "BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE DEFERRABLE"),
    ("-- x\nBEGIN NOT DEFERRABLE", Kind.BEGIN, "BEGIN", "BEGIN NOT DEFERRABLE"),
    ("SET TRANSACTION ISOLATION LEVEL READ COMMITTED", Kind.SET_TRANSACTION, "SET",
     "BEGIN ISOLATION LEVEL READ COMMITTED"),
    ("commit", Kind.COMMIT, "COMMIT", "BEGIN"),
    ("END", Kind.COMMIT, "COMMIT", "BEGIN"),
    ("abort", Kind.ROLLBACK, "ROLLBACK", "BEGIN"),
    ("ROLLBACK TO SAVEPOINT a", Kind.ROLLBACK_TO, "ROLLBACK", "BEGIN"),
    ("release a", Kind.RELEASE, "RELEASE", "BEGIN"),
    ("PREPARE TRANSACTION 'x'", Kind.TWO_PHASE, "PREPARE TRANSACTION", "BEGIN"),
])
def test_control_statements(sql: str, kind: Kind, tag: str, begin: str) -> None:
    ctl = control(sql)
    assert ctl is not None and (ctl.kind, ctl.tag, ctl.options.begin()) == (kind, tag, begin)


@pytest.mark.parametrize("sql", ["SELECT 1", "BEGIN; SELECT 1", "SET search_path = x",
                                 "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", "begin isolation", "beginx",
                                 "UPDATE t SET a = 1 -- begin"])
def test_not_control_statements(sql: str) -> None:
    assert control(sql) is None


def test_savepoint_names_and_chain() -> None:
    ctl = control('SAVEPOINT "Mixed Case"')
    assert ctl is not None and ctl.savepoint == "Mixed Case"
    ctl = control("COMMIT AND CHAIN")
    assert ctl is not None and ctl.chain


def test_set_transaction_merges() -> None:
    first = BeginOptions(isolation="repeatable read", read_only=True)
    later = BeginOptions(read_only=False)
    assert first.merged(later) == BeginOptions(isolation="repeatable read", read_only=False)
    assert first.merged(later).begin() == "BEGIN ISOLATION LEVEL REPEATABLE READ READ WRITE"


def test_gids_name_the_process_and_count() -> None:
    maker = GidMaker(3)
    a, b = maker.next(), maker.next()
    assert a.startswith(f"{GID_PREFIX}3_") and a != b and a.rsplit("_", 1)[1] == "1" and b.rsplit("_", 1)[1] == "2"
    assert not a.startswith("pgfleet_xact_")  # the coordinator's own two-phase commits are not ours
    # another router of this process, made in the same second (tests run several): other gids, the same
    # owner (this pid) for recovery
    other = GidMaker(3)
    c = other.next()
    assert c not in (a, b) and c.split("_")[3] == a.split("_")[3] and maker.owner_alive(c)


G1, G2, G3 = (f"{GID_PREFIX}0_1_a_{n}" for n in (1, 2, 3))


def test_recovery_plan() -> None:
    prepared = {"w1": [Prepared(G1, 10), Prepared(G2, 10), Prepared(G3, 0.5), Prepared("pgfleet_xact_9_w1", 99)],
                "w2": [Prepared(G1, 10), Prepared(G2, 10)]}
    decisions = {G1: Outcome("commit", 9), G2: Outcome("abort", 1), f"{GID_PREFIX}old": Outcome("commit", 50),
                 f"{GID_PREFIX}gone": Outcome("abort", 5), f"{GID_PREFIX}stale": Outcome("abort", 9999)}
    todo = plan(prepared, decisions, complete=True, min_age=4, keep_abort=600)
    assert todo.undecided == ()  # G3 is young: its owner is still committing
    assert todo.commit == {"w1": (G1,), "w2": (G1,)}
    assert todo.rollback == {"w1": (G2,), "w2": (G2,)}
    # rows prepared nowhere: commit rows go at once, abort rows after keep_abort (a late owner must find them)
    assert todo.delete == (f"{GID_PREFIX}old", f"{GID_PREFIX}stale")


def test_recovery_plan_without_a_decision_and_with_a_node_missing() -> None:
    prepared = {"w1": [Prepared(G1, 10)]}
    todo = plan(prepared, {f"{GID_PREFIX}old": Outcome("commit", 50)}, complete=False, min_age=4)
    assert todo.undecided == (G1,) and not todo.commit and not todo.rollback
    assert todo.delete == ()  # w2 could not be listed: the row may still be needed there
    todo = plan(prepared, {G1: Outcome("abort", 0)}, complete=True, min_age=4)  # after the 'abort' row
    assert todo.undecided == () and todo.rollback == {"w1": (G1,)} and todo.delete == ()


def test_recovery_leaves_a_live_owners_slow_commit_to_it() -> None:
    """An undecided transaction whose router process is alive is not aborted before the owner's grace: on
    a loaded machine a commit can take longer than min_age (seen in CI: the client got 40000)."""
    prepared = {"w1": [Prepared(G1, 10), Prepared(G2, 10), Prepared(G3, 70)]}
    alive = {G1, G3}.__contains__
    todo = plan(prepared, {}, complete=True, min_age=4, owner_alive=alive, owner_grace=60)
    assert todo.undecided == (G2, G3)  # G2's owner is gone; G3 is past the grace
    maker = GidMaker(0)
    with maker.issued() as mine:  # a session of this process is committing it
        assert maker.owner_alive(mine) and not maker.owner_alive(mine[:-1] + "9")
    assert not maker.owner_alive(mine)  # the session gave up on it (rolled back, or left to recovery)
    other = f"{GID_PREFIX}1_{os.getpid()}_0_1"  # this pid, but no router of this process is committing it
    assert not maker.owner_alive(other)
    second = GidMaker(0)  # another router in this process (tests run several): its sessions' gids are alive
    with second.issued() as theirs:
        assert maker.owner_alive(theirs)
    assert not maker.owner_alive(theirs)
    assert not maker.owner_alive(f"{GID_PREFIX}1_999999999_0_1")  # no such process
    assert maker.owner_alive(f"{GID_PREFIX}1_{os.getppid()}_0_1")  # a live process on this machine


def test_reply_skipper_and_setup_stripping() -> None:
    setup = p.CommandComplete("BEGIN").encode() + p.CommandComplete("SAVEPOINT").encode() + p.ReadyForQuery("T").encode()
    rest = p.CommandComplete("UPDATE 1").encode() + p.ReadyForQuery("T").encode()
    skipper = ReplySkipper()
    data = setup + rest
    out = b"".join(skipper.feed(data[i:i + 3]) for i in range(0, len(data), 3))
    assert skipper.done and out == rest
    reply = p.CommandComplete("BEGIN").encode() + p.CommandComplete("SET").encode() + rest
    assert without_setup(reply, 2) == rest
    failed = p.CommandComplete("BEGIN").encode() + p.error_response("42704", "role x", severity="ERROR").encode() \
        + p.ReadyForQuery("E").encode()
    assert without_setup(failed, 2).startswith(b"E")  # the setup's error stays: the statement did not run


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT * FROM t WHERE id = 1", True),
    ("select a from t where id = 1 order by a limit 1", True),
    ("SELECT * FROM t WHERE id = 1 FOR UPDATE", False),
    ("SELECT * FROM t WHERE id = 1 FOR KEY SHARE", False),
    ("UPDATE t SET a = 1 WHERE id = 1", False),
    ("WITH x AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM x", False),
    ("SELECT 1 UNION SELECT 2", False),
])
def test_reads_only(sql: str, expected: bool) -> None:
    assert reads_only(sql) is expected
