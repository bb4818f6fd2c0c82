"""Recovery of the router's two-phase commits: prepared transactions ``pgfleet_rt_…`` left on workers by an
owner that died, lost a worker or lost the coordinator between PREPARE and COMMIT PREPARED.

One pass (:func:`recover_once`, synchronous, so a restore can call it too; the router's process 0 runs
it in a thread at start and every few seconds):

1. read every decision row (``pgfleet.commit_decisions``) — *before* listing prepared transactions, so a
   row read is never one whose prepared transactions were not yet visible;
2. list each worker's prepared ``pgfleet_rt_`` transactions older than ``min_age`` (an owner in the middle
   of its commit is left alone);
3. those without a row: insert outcome 'abort' ON CONFLICT DO NOTHING (this waits for an owner's decision
   in flight, and a late owner's INSERT then fails on the key), re-read the rows;
4. COMMIT PREPARED or ROLLBACK PREPARED by the row; delete rows whose gid is prepared on no worker (only
   when every worker could be listed; 'abort' rows are kept ``keep_abort`` seconds so a very late owner
   still finds them).

:func:`plan` is the decision logic, pure: prepared transactions per node + decisions → actions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from .backend import WorkerLogin
from .twophase import GID_PREFIX

log = logging.getLogger(__name__)

MIN_AGE = 4.0  # seconds a prepared transaction must exist before recovery touches it
OWNER_GRACE = 60.0  # seconds an undecided one whose router process is alive is left to that process
KEEP_ABORT = 600.0  # seconds an 'abort' row outlives its prepared transactions
INTERVAL = 3.0  # seconds between passes in the router


@dataclass(frozen=True)
class Prepared:
    gid: str
    age: float  # seconds since PREPARE TRANSACTION


@dataclass(frozen=True)
class Outcome:
    outcome: str  # 'commit' | 'abort'
    age: float  # seconds since the decision


@dataclass(frozen=True)
class Plan:
    undecided: tuple[str, ...] = ()  # gids that need an 'abort' row before anything is done with them
    commit: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # node → gids to COMMIT PREPARED
    rollback: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # node → gids to ROLLBACK PREPARED
    delete: tuple[str, ...] = ()  # decision rows no longer needed


def plan(prepared: Mapping[str, Iterable[Prepared]], decisions: Mapping[str, Outcome], *, complete: bool,
         min_age: float = MIN_AGE, keep_abort: float = KEEP_ABORT,
         owner_alive: Callable[[str], bool] = lambda _gid: False, owner_grace: float = OWNER_GRACE) -> Plan:
    """What to do. ``prepared``: the router's prepared transactions per worker listed after
    ``decisions`` were read; ``complete``: every worker could be listed. An undecided transaction whose
    owner (the router process its gid names) is alive is that process's to decide, unless it is older
    than ``owner_grace`` (a loaded machine can delay a commit past ``min_age``; aborting it then would
    turn a commit the client waits for into a rollback)."""
    undecided: list[str] = []
    commit: dict[str, list[str]] = {}
    rollback: dict[str, list[str]] = {}
    seen: set[str] = set()
    for node, xacts in prepared.items():
        for xact in xacts:
            if not xact.gid.startswith(GID_PREFIX):
                continue
            seen.add(xact.gid)
            if xact.age < min_age:
                continue
            decision = decisions.get(xact.gid)
            if decision is None:
                if xact.age < owner_grace and owner_alive(xact.gid):
                    continue
                if xact.gid not in undecided:
                    undecided.append(xact.gid)
            elif decision.outcome == "commit":
                commit.setdefault(node, []).append(xact.gid)
            else:
                rollback.setdefault(node, []).append(xact.gid)
    delete: list[str] = []
    if complete:
        delete = sorted(gid for gid, d in decisions.items() if gid not in seen
                        and (d.outcome == "commit" or d.age >= keep_abort))
    return Plan(tuple(undecided), {n: tuple(g) for n, g in commit.items()},
                {n: tuple(g) for n, g in rollback.items()}, tuple(delete))


@dataclass
class Report:
    committed: int = 0
    aborted: int = 0
    in_doubt: int = 0  # prepared router transactions older than min_age still there after the pass
    deleted: int = 0
    errors: list[str] = field(default_factory=list)
    done: list[tuple[str, str, str]] = field(default_factory=list)  # (node, gid, 'commit' | 'abort')


Conn = psycopg.Connection[tuple[object, ...]]


def connector(login: Callable[[], WorkerLogin]) -> Callable[[], Conn]:
    """An autocommit connection to where ``login`` says (a node's primary, as the cluster superuser)."""

    def connect() -> Conn:
        where = login()
        return psycopg.connect(host=where.host, port=where.port, user=where.user, password=where.password,
                               dbname=where.database, autocommit=True, connect_timeout=5)

    return connect


def read_decisions(coord: Conn) -> dict[str, Outcome]:
    rows = coord.execute("SELECT gid, outcome, extract(epoch FROM now() - decided_at)::float8 "
                         "FROM pgfleet.commit_decisions").fetchall()
    return {str(gid): Outcome(str(outcome), float(str(age))) for gid, outcome, age in rows}


def list_prepared(conn: Conn) -> list[Prepared]:
    rows = conn.execute("SELECT gid, extract(epoch FROM now() - prepared)::float8 FROM pg_prepared_xacts "
                        "WHERE database = current_database() AND starts_with(gid, %s)", (GID_PREFIX,)).fetchall()
    return [Prepared(str(gid), float(str(age))) for gid, age in rows]


def recover_once(coordinator: Callable[[], Conn], worker: Callable[[str], Conn], *, min_age: float = MIN_AGE,
                 keep_abort: float = KEEP_ABORT, owner: Callable[[str], bool] = lambda _gid: False) -> Report:
    """One recovery pass; ``coordinator()`` and ``worker(node)`` open autocommit superuser connections to
    the primaries. Raises psycopg.Error / OSError when the coordinator cannot be reached (nothing done)."""
    report = Report()
    with coordinator() as coord:
        workers = [str(name) for (name,) in coord.execute(
            "SELECT name FROM pgfleet.nodes WHERE role = 'worker' ORDER BY name").fetchall()]
        conns: dict[str, Conn] = {}
        try:
            for node in workers:
                try:
                    conns[node] = worker(node)
                except (psycopg.Error, OSError) as exc:
                    report.errors.append(f"{node}: {exc}")
            recover_with(coord, conns, complete=len(conns) == len(workers), min_age=min_age, keep_abort=keep_abort,
                         report=report, owner=owner)
        finally:
            for conn in conns.values():
                conn.close()
    return report


def recover_with(coord: Conn, conns: Mapping[str, Conn], *, complete: bool, min_age: float = MIN_AGE,
                 keep_abort: float = KEEP_ABORT, report: Report | None = None,
                 owner: Callable[[str], bool] = lambda _gid: False) -> Report:
    """One pass over open autocommit connections (the coordinator's and the workers' by node name);
    ``complete``: ``conns`` holds every worker (only then are decision rows deleted)."""
    report = report if report is not None else Report()
    decisions = read_decisions(coord)  # before the prepared transactions are listed (see above)
    prepared: dict[str, list[Prepared]] = {}
    for node, conn in conns.items():
        try:
            prepared[node] = list_prepared(conn)
        except (psycopg.Error, OSError) as exc:
            report.errors.append(f"{node}: {exc}")
    complete = complete and len(prepared) == len(conns)
    todo = plan(prepared, decisions, complete=complete, min_age=min_age, keep_abort=keep_abort, owner_alive=owner)
    if todo.undecided:
        coord.execute("INSERT INTO pgfleet.commit_decisions (gid, outcome) SELECT unnest(%s::text[]), 'abort' "
                      "ON CONFLICT (gid) DO NOTHING", (list(todo.undecided),))
        decisions = read_decisions(coord)
        todo = plan(prepared, decisions, complete=complete, min_age=min_age, keep_abort=keep_abort, owner_alive=owner)
    report.committed += _finish(conns, todo.commit, "COMMIT PREPARED", report)
    report.aborted += _finish(conns, todo.rollback, "ROLLBACK PREPARED", report)
    if todo.delete:
        report.deleted += coord.execute("DELETE FROM pgfleet.commit_decisions WHERE gid = ANY(%s)",
                                        (list(todo.delete),)).rowcount
    old = sum(1 for xacts in prepared.values() for x in xacts if x.age >= min_age)
    report.in_doubt = old - report.committed - report.aborted
    return report


def _finish(conns: Mapping[str, Conn], work: Mapping[str, Sequence[str]],
            command: str, report: Report) -> int:
    done = 0
    for node, gids in work.items():
        for gid in gids:
            try:
                conns[node].execute(sql.SQL(command + " {}").format(sql.Literal(gid)))
                done += 1
                report.done.append((node, gid, "commit" if command.startswith("COMMIT") else "abort"))
                log.info("recovery: %s %s on %s", command, gid, node)
            except psycopg.Error as exc:  # finished meanwhile by its owner, or the node went away
                report.errors.append(f"{node}: {command} {gid}: {exc}")
    return done
