"""The router's TCP server: an asyncio (uvloop when installed) listener on loopback, one
:class:`ClientSession` per client, a status file refreshed every second for ``pgfleet router status``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NodeError
from . import recovery
from .routing import Routing
from .context import Address, DatabaseRoute, RouterContext
from .pool import POOL_TIMEOUT
from .session import ClientSession

log = logging.getLogger(__name__)

STATUS_INTERVAL = 1.0
TOPOLOGY_REFRESH = 2.0  # seconds between catalog reads (a distribute/undistribute is seen within this)
DATABASES_REFRESH = 30.0  # seconds between listings of the databases that hold a catalog (recovery)


@dataclass(frozen=True)
class RouterConfig:
    port: int
    upstream: Callable[[], Address]  # the coordinator's current address
    host: str = "127.0.0.1"
    process_index: int = 0
    peers: Mapping[int, Address] = field(default_factory=dict)
    status_file: Path | None = None
    routing: Routing | None = None  # None: relay everything to the coordinator
    # the routing of the coordinator's other databases (their first session reads the catalog); None: relayed
    routing_for: Callable[[str], Routing] | None = None
    # the databases holding a pgfleet catalog, for recovery in each (process 0); None: the main one only
    catalog_databases: Callable[[], list[str]] | None = None
    reuse_port: bool = False  # several router processes accept on ``port`` (SO_REUSEPORT)
    peer_port: int | None = None  # this process's own port, where the others forward cancel requests
    recovery_interval: float = recovery.INTERVAL  # seconds between recovery passes (process 0)
    recovery_min_age: float = recovery.MIN_AGE  # prepared transactions younger than this are left to their owner
    pool_size: int | None = None  # worker connections per node (None: two per core)
    pool_timeout: float = POOL_TIMEOUT  # seconds a session waits for a connection of an exhausted pool


def _run_loop(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on every platform pgfleet runs servers on
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


class RouterServer:
    def __init__(self, config: RouterConfig) -> None:
        self.config = config
        self.context = RouterContext(upstream=config.upstream, process_index=config.process_index,
                                     peers=config.peers, routing=config.routing, pool_size=config.pool_size,
                                     pool_timeout=config.pool_timeout, routing_for=config.routing_for,
                                     on_new_route=self._route_added)
        self.started = time.time()
        self._servers: list[asyncio.Server] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        main = self.context.main
        if main is not None:
            await asyncio.to_thread(main.routing.refresh)
            self.context.spawn(self._refresh_routing(main))
            if main.routing.coordinator_login is not None and self.config.process_index == 0:
                self.context.spawn(self._recover(main.routing))
        ports = [(self.config.port, self.config.reuse_port)]
        if self.config.peer_port is not None:
            ports.append((self.config.peer_port, False))
        for port, reuse_port in ports:
            try:
                self._servers.append(await loop.create_server(
                    lambda: ClientSession(self.context), self.config.host, port, reuse_address=True,
                    reuse_port=reuse_port or None))
            except OSError as exc:
                for server in self._servers:
                    server.close()
                raise NodeError(f"the router cannot listen on {self.config.host}:{port}: {exc.strerror}",
                                hint="choose another --port") from None
        log.info("router process %d listening on %s:%d%s", self.config.process_index, self.config.host,
                 self.config.port, "" if self.config.peer_port is None else f" and :{self.config.peer_port}")

    def _route_added(self, route: DatabaseRoute) -> None:
        self.context.spawn(self._refresh_routing(route))

    async def _refresh_routing(self, route: DatabaseRoute) -> None:
        while True:
            await asyncio.sleep(TOPOLOGY_REFRESH)
            await asyncio.to_thread(route.routing.refresh)
            route.pools.follow_primaries()  # a failover empties that node's pool

    async def _recover(self, main: Routing) -> None:
        """Finish the two-phase commits their owners left (process 0 only), in every database with a
        catalog, at start and every few seconds."""
        stats = self.context.stats
        databases = [main.dbname]
        listed = 0.0
        while True:
            in_doubt = 0
            if self.config.catalog_databases is not None and self.config.routing_for is not None \
                    and time.monotonic() - listed > DATABASES_REFRESH:
                with contextlib.suppress(Exception):  # the coordinator is down: the last list
                    databases = await asyncio.to_thread(self.config.catalog_databases)
                    listed = time.monotonic()
            for name in databases:
                routing = main if name == main.dbname or self.config.routing_for is None else self.config.routing_for(name)
                try:
                    report = await asyncio.to_thread(self._recover_once, routing)
                    stats.recovered_commits += report.committed
                    stats.recovered_aborts += report.aborted
                    in_doubt += report.in_doubt
                    for problem in report.errors:
                        log.warning("recovery in %s: %s", name, problem.splitlines()[0] if problem else problem)
                except Exception as exc:  # the coordinator is down or failing over: the next pass retries
                    log.warning("recovery pass in %s failed: %s", name, str(exc).splitlines()[0] if str(exc) else exc)
            stats.in_doubt = in_doubt
            await asyncio.sleep(self.config.recovery_interval)

    def _recover_once(self, routing: Routing) -> recovery.Report:
        assert routing.coordinator_login is not None

        def worker(node: str) -> recovery.Conn:
            return recovery.connector(lambda: routing.login(node))()

        return recovery.recover_once(recovery.connector(routing.coordinator_login), worker,
                                     min_age=self.config.recovery_min_age, owner=self.context.gids.owner_alive)

    async def serve(self, stop: asyncio.Event) -> None:
        await self.start()
        try:
            while not stop.is_set():
                self.write_status()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), STATUS_INTERVAL)
        finally:
            await self.close()

    async def close(self) -> None:
        for task in list(self.context.tasks):
            task.cancel()
        for server in self._servers:
            server.close()
        if self._servers:
            for session in list(self.context.sessions.values()):
                session.refuse("57P01", "terminating connection due to administrator command (pgfleet router stopped)")
        for server in self._servers:
            await server.wait_closed()
        for route in self.context.routes():
            if route.twophase is not None:
                route.twophase.decisions.close()
        if self.config.status_file is not None:
            self.config.status_file.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        host, port = self.config.upstream()
        return {"pid": os.getpid(), "host": self.config.host, "port": self.config.port,
                "routing": self.config.routing is not None,
                "process_index": self.config.process_index, "coordinator": f"{host}:{port}",
                "started": self.started, "updated": time.time(), **asdict(self.context.stats),
                "worker_connections": self.worker_connections(),
                "pools": self._pools_status()}

    def _pools_status(self) -> dict[str, Any]:
        """Each node's pool of the main database; ``node/database`` for the others'."""
        found: dict[str, Any] = {}
        for route in self.context.routes():
            suffix = "" if route is self.context.main else f"/{route.routing.dbname}"
            found.update({f"{node}{suffix}": value for node, value in route.pools.status().items()})
        return found

    def worker_connections(self) -> int:
        """Open connections of this process's worker pools (leased and idle), in every database."""
        return sum(route.pools.connections() for route in self.context.routes())

    def write_status(self) -> None:
        path = self.config.status_file
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()) + "\n")
        os.replace(tmp, path)


def run_forever(config: RouterConfig) -> None:
    """Serve until SIGTERM or SIGINT (the foreground 'pgfleet router run')."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await RouterServer(config).serve(stop)

    _run_loop(main())


@contextlib.contextmanager
def serve_in_thread(config: RouterConfig, timeout: float = 10.0) -> Iterator[RouterServer]:
    """A router on its own event loop in a background thread (tests, benchmarks); stopped on exit."""
    server = RouterServer(config)
    ready = threading.Event()
    failure: list[BaseException] = []
    holder: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        holder["loop"], holder["stop"] = asyncio.get_running_loop(), stop
        try:
            await server.start()
        except BaseException as exc:
            failure.append(exc)
            ready.set()
            return
        ready.set()
        await stop.wait()
        await server.close()

    thread = threading.Thread(target=_run_loop, args=(main(),), name="pgfleet-router", daemon=True)
    thread.start()
    if not ready.wait(timeout):
        raise NodeError("the router did not start in time")
    if failure:
        thread.join(timeout)
        raise failure[0]
    try:
        yield server
    finally:
        holder["loop"].call_soon_threadsafe(holder["stop"].set)
        thread.join(timeout)
