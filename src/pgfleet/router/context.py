"""What the client sessions of one router process share (:class:`RouterContext`: upstream address,
routing, counters, cancel keys, the two-phase-commit machinery) and the forwarding of cancel requests."""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import wire
from .keys import KeyAllocator, process_of
from .pool import POOL_TIMEOUT, WorkerPools
from .reauth import SecretReader
from .routing import Routing
from .stats import RouterStats
from .twophase import DecisionStore, GidMaker
from .twophase import TwoPhase

if TYPE_CHECKING:
    from .session import ClientSession

log = logging.getLogger(__name__)

CANCEL_TIMEOUT = 5.0

Address = tuple[str, int]


ROUTE_RETRY = 10.0  # seconds before a database without a catalog (or unreachable) is looked at again


@dataclass
class DatabaseRoute:
    """Routing in one coordinator database: its catalog snapshot, its worker pools (connections to the
    workers' database of the same name) and its two-phase commits (decisions in its own catalog)."""

    routing: Routing
    pools: WorkerPools
    twophase: TwoPhase | None


@dataclass
class RouterContext:
    """What every session of one router process shares."""

    upstream: Callable[[], Address]  # the coordinator's address now (asked for each new client)
    process_index: int = 0
    peers: Mapping[int, Address] = field(default_factory=dict)  # other router processes, by index
    stats: RouterStats = field(default_factory=RouterStats)
    sessions: dict[int, ClientSession] = field(default_factory=dict)  # by the router's process id
    keys: KeyAllocator = field(init=False)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    routing: Routing | None = None  # None: every statement goes to the coordinator
    twophase: TwoPhase | None = field(init=False, default=None)  # multi-worker commits (routing with a coordinator login)
    pool_size: int | None = None  # connections per worker node (None: two per core)
    pool_timeout: float = POOL_TIMEOUT  # seconds a session waits for a connection of an exhausted pool
    pools: WorkerPools | None = field(init=False, default=None)  # the worker connections, shared by the sessions
    # the routing of another database of the coordinator (None: only ``routing``'s database is routed)
    routing_for: Callable[[str], Routing] | None = None
    main: DatabaseRoute | None = field(init=False, default=None)  # ``routing``'s database
    others: dict[str, tuple[DatabaseRoute | None, float]] = field(default_factory=dict)  # by name: route, retry at
    on_new_route: Callable[[DatabaseRoute], None] | None = None  # the server starts its refresh loop
    gids: GidMaker = field(init=False)  # one per process: gids are unique on a worker server, across databases
    secrets: SecretReader = field(default_factory=SecretReader)  # for sessions logged in again (reconnect.py)
    _loading: dict[str, asyncio.Future[DatabaseRoute | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.keys = KeyAllocator(self.process_index)
        self.gids = GidMaker(self.process_index)
        if self.routing is not None:
            self.main = self._route(self.routing)
            self.pools, self.twophase = self.main.pools, self.main.twophase

    def _route(self, routing: Routing) -> DatabaseRoute:
        return DatabaseRoute(routing, WorkerPools(routing.login, self.pool_size, self.pool_timeout),
                             None if routing.coordinator_login is None
                             else TwoPhase(self.gids, DecisionStore(routing.coordinator_login)))

    def routes(self) -> list[DatabaseRoute]:
        """Every database routed so far, the main one first."""
        found = [self.main] if self.main is not None else []
        return found + [route for route, _ in self.others.values() if route is not None]

    async def route_for(self, database: str) -> DatabaseRoute | None:
        """The routing of ``database``: the main one, or another with a pgfleet catalog (its snapshot read on
        its first session); None: its sessions are relayed (no catalog, or it could not be read)."""
        if self.main is not None and database == self.main.routing.dbname:
            return self.main
        if self.routing_for is None or self.main is None:
            return None
        known = self.others.get(database)
        if known is not None and (known[0] is not None or time.monotonic() < known[1]):
            return known[0]
        loading = self._loading.get(database)
        if loading is None:
            loading = asyncio.get_running_loop().create_future()
            self._loading[database] = loading
            try:
                route = await self._load(database)
            finally:
                del self._loading[database]
            loading.set_result(route)
            return route
        return await loading

    async def _load(self, database: str) -> DatabaseRoute | None:
        assert self.routing_for is not None
        routing = self.routing_for(database)
        try:
            routing.topology = await asyncio.to_thread(routing.load_topology)
            await asyncio.to_thread(routing.refresh)  # and the roles copied to the workers' database
        except Exception as exc:  # no pgfleet catalog there (or the coordinator is busy): relay, look again later
            log.info("database %s is relayed: %s", database, str(exc).splitlines()[0] if str(exc) else exc)
            self.others[database] = (None, time.monotonic() + ROUTE_RETRY)
            return None
        route = self._route(routing)
        self.others[database] = (route, 0.0)
        if self.on_new_route is not None:
            self.on_new_route(route)
        return route

    def roles_changed(self, *, refresh: bool) -> None:
        """A session sent a statement that may change roles or memberships (which fire no trigger on the
        coordinator): until the workers have the roles again, statements of roles other than superusers are
        not routed in any database (they go to the coordinator, which checks their rights as they are now);
        with ``refresh`` (its ReadyForQuery came, so it is committed or rolled back) the roles are copied to
        the workers now rather than at the next periodic refresh."""
        for route in self.routes():
            route.routing.roles_synced = None
            if refresh:
                self.spawn(asyncio.to_thread(route.routing.refresh))

    def spawn(self, coro: object) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def cancel(self, request: wire.CancelRequest) -> None:
        """Forward a client's cancel to the server running its query, or to the router process holding it."""
        owner = process_of(request.process_id)
        if owner != self.process_index:
            peer = self.peers.get(owner)
            if peer is None:
                log.info("cancel request for router process %d, which is not known here: ignored", owner)
                return
            self.spawn(send_cancel(peer, request))
            return
        session = self.sessions.get(request.process_id)
        if session is None or session.client_key is None or session.server_key is None or session.address is None \
                or not hmac.compare_digest(session.client_key.secret, request.secret):
            log.info("cancel request with an unknown key: ignored")  # as the server does, silently
            return
        self.stats.cancels += 1
        worker = session.running_on
        if worker is not None and worker.cancel_key is not None:  # a routed statement: cancel it on its worker
            worker.cancelled = True  # the cancel may land after the statement: the connection is not reused
            self.spawn(send_cancel(worker.address, wire.CancelRequest(*worker.cancel_key)))
            return
        # a statement the router runs itself over several workers (multishard.py): cancel it on each; each
        # plan rolls back everywhere on the first error and answers 57014 in the client's terms
        planned = [c for c in session.leases.held.values() if c.cancel_key is not None] if session.busy else []
        if planned:
            for conn in planned:
                conn.cancelled = True
                assert conn.cancel_key is not None
                self.spawn(send_cancel(conn.address, wire.CancelRequest(*conn.cancel_key)))
            return
        self.spawn(send_cancel(session.address, wire.CancelRequest(session.server_key.process_id, session.server_key.secret)))


async def send_cancel(address: Address, request: wire.CancelRequest) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), CANCEL_TIMEOUT)
        writer.write(request.encode())
        await writer.drain()
        await asyncio.wait_for(reader.read(), CANCEL_TIMEOUT)  # the server closes after reading it
        writer.close()
    except (OSError, TimeoutError) as exc:
        log.warning("could not forward a cancel request to %s:%d: %s", *address, exc)
