"""The monitor's pure decisions (no server)."""

from pgfleet.plan.failover import GroupSeen, StandbySeen, best_standby, decide


def seen(ok: bool, since: float | None, *standbys: StandbySeen) -> GroupSeen:
    return GroupSeen("w1", "w1", ok, since, tuple(standbys))


def test_healthy_primary_is_left_alone() -> None:
    assert decide(seen(True, None, StandbySeen("w1_s1", True, 10)), 100.0, 3.0).action == "ok"


def test_waits_for_the_timeout() -> None:
    d = decide(seen(False, 99.0, StandbySeen("w1_s1", True, 10)), 100.0, 3.0)
    assert d.action == "waiting" and "1.0 s" in d.reason


def test_promotes_the_standby_that_replayed_most() -> None:
    d = decide(seen(False, 90.0, StandbySeen("w1_s1", True, 10), StandbySeen("w1_s2", True, 30),
                    StandbySeen("w1_s3", False, 99)), 100.0, 3.0)
    assert (d.action, d.candidate) == ("failover", "w1_s2")


def test_sync_standby_wins_a_tie() -> None:
    best = best_standby((StandbySeen("a", True, 5, sync=False), StandbySeen("b", True, 5, sync=True)))
    assert best is not None and best.member == "b"


def test_no_candidate() -> None:
    assert decide(seen(False, 0.0), 100.0, 3.0).action == "no_candidate"
    assert decide(seen(False, 0.0, StandbySeen("w1_s1", False, None)), 100.0, 3.0).reason.endswith("no standby reachable")
