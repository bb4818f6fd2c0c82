"""What the client sessions of one router process share (:class:`RouterContext`: upstream address,
routing, counters, cancel keys, the two-phase-commit machinery) and the forwarding of cancel requests."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import wire
from .keys import KeyAllocator, process_of
from .pool import POOL_TIMEOUT, WorkerPools
from .routing import Routing
from .stats import RouterStats
from .twophase import DecisionStore, GidMaker
from .twophase import TwoPhase

if TYPE_CHECKING:
    from .session import ClientSession

log = logging.getLogger(__name__)

CANCEL_TIMEOUT = 5.0

Address = tuple[str, int]


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

    def __post_init__(self) -> None:
        self.keys = KeyAllocator(self.process_index)
        if self.routing is not None:
            self.pools = WorkerPools(self.routing.login, self.pool_size, self.pool_timeout)
        if self.routing is not None and self.routing.coordinator_login is not None:
            self.twophase = TwoPhase(GidMaker(self.process_index), DecisionStore(self.routing.coordinator_login))

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
