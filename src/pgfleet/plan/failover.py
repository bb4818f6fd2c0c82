"""The monitor's decisions, pure: what it saw in → what to do out. Tested without servers."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StandbySeen:
    member: str
    reachable: bool
    replay_lsn: int | None  # pg_last_wal_replay_lsn() as an integer; None when unknown
    sync: bool = True


@dataclass(frozen=True)
class GroupSeen:
    group: str
    primary: str
    primary_ok: bool
    down_since: float | None  # monotonic time of the first failed check in a row
    standbys: tuple[StandbySeen, ...]


@dataclass(frozen=True)
class Decision:
    group: str
    action: str  # ok | waiting | failover | no_candidate
    candidate: str | None = None
    reason: str = ""


def best_standby(standbys: tuple[StandbySeen, ...]) -> StandbySeen | None:
    """The reachable standby that has replayed the most WAL; synchronous ones first on a tie."""
    alive = [s for s in standbys if s.reachable and s.replay_lsn is not None]
    if not alive:
        return None
    return max(alive, key=lambda s: (s.replay_lsn or 0, s.sync, s.member))


def decide(seen: GroupSeen, now: float, timeout: float) -> Decision:
    """Fail over when the primary has not answered for ``timeout`` seconds and a standby can take over."""
    if seen.primary_ok:
        return Decision(seen.group, "ok")
    down_for = 0.0 if seen.down_since is None else now - seen.down_since
    if down_for < timeout:
        return Decision(seen.group, "waiting", reason=f"primary {seen.primary} not answering for {down_for:.1f} s")
    best = best_standby(seen.standbys)
    if best is None:
        why = "no standby" if not seen.standbys else "no standby reachable"
        return Decision(seen.group, "no_candidate", reason=f"primary {seen.primary} down for {down_for:.1f} s, {why}")
    return Decision(seen.group, "failover", best.member,
                    f"primary {seen.primary} down for {down_for:.1f} s; {best.member} replayed the most WAL")
