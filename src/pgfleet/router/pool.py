"""Worker connections shared by the client sessions of one router process (transaction-level pooling).

Each worker node has a :class:`NodePool` of at most ``size`` connections to its primary, logged in as the
router's login. A connection carries the settings it was opened with (the client's startup options and
the coordinator's DateStyle, IntervalStyle, TimeZone, search_path, client_encoding: what
``ClientSession._worker_settings`` sends), and only a session with the same settings gets it; the size
bounds the node's connections over all settings (an idle connection of other settings is closed to make
room). A session (:class:`Leases`) leases a connection for one autocommit routed statement or for the
whole of a router transaction on that node, and gives it back when it is idle again.

A connection goes back to the pool only when it is idle outside a transaction block (its last
ReadyForQuery said 'I'), nothing is pending on it and no cancel request was sent for it; otherwise it is
closed. Routed statements change the role only with ``SET ROLE …; <statement>; RESET ROLE`` in one implicit
transaction or with ``SET LOCAL ROLE``, so no role or setting outlives the statement or transaction, and
the statements the router parses there are named by the router and kept per connection: nothing else
needs resetting, and the hot path stays one round trip.

When every connection of a node is in use, a session waits, first come first served, up to ``timeout``
seconds, then gets :class:`PoolExhausted`. A broken connection is dropped; when a node's primary moves
(a failover), its pool is emptied: idle connections are closed, leased ones are closed when given back.
"""

from __future__ import annotations

import asyncio
import collections
import os
from collections.abc import Callable

from . import protocol as p
from .backend import BackendError, WorkerConnection, WorkerLogin

Settings = tuple[tuple[str, str], ...]

POOL_TIMEOUT = 10.0  # seconds a session waits for a connection of an exhausted pool
TOO_MANY_CONNECTIONS = "53300"


def default_pool_size() -> int:
    """Connections per worker node and router process: two per core."""
    return 2 * (os.cpu_count() or 1)


class PoolExhausted(BackendError):
    """No connection to the node became free within the pool's timeout."""

    def __init__(self, node: str, size: int, timeout: float, waiting: int) -> None:
        super().__init__(f"no connection to worker {node} became free within {timeout:g} s "
                         f"(pool size {size}, {waiting} other session(s) waiting)")
        self.node = node


def exhausted_reply(exc: PoolExhausted) -> bytes:
    """What the client gets for an autocommit statement that found no free connection: an error, then
    an idle session (the statement did not run)."""
    error = p.error_response(TOO_MANY_CONNECTIONS, f"pgfleet router: {exc}", severity="ERROR",
                             hint="retry; or start the router with a larger --pool-size, or use fewer concurrent clients")
    return error.encode() + p.ReadyForQuery("I").encode()


class NodePool:
    """The connections of one router process to one worker node's primary."""

    def __init__(self, node: str, login: Callable[[], WorkerLogin], size: int, timeout: float) -> None:
        self.node = node
        self.login = login
        self.size = size
        self.timeout = timeout
        self.idle: dict[Settings, list[WorkerConnection]] = {}
        self.in_use = 0
        self.opening = 0  # connections being opened (their slots are taken)
        self.waiters: collections.deque[tuple[Settings, asyncio.Future[WorkerConnection | None]]] = collections.deque()
        self.generation = 0  # a new primary starts a new one: older connections are not reused
        self.address: tuple[str, int] | None = None  # the primary the connections go to

    # --- counts --------------------------------------------------------------------------------------
    def idle_count(self) -> int:
        return sum(len(conns) for conns in self.idle.values())

    def total(self) -> int:
        return self.in_use + self.opening + self.idle_count()

    def status(self) -> dict[str, int]:
        return {"size": self.size, "in_use": self.in_use, "idle": self.idle_count(),
                "waiting": sum(1 for _, fut in self.waiters if not fut.done())}

    # --- leasing ----------------------------------------------------------------------------------------
    def take(self, settings: Settings) -> WorkerConnection | None:
        """An idle connection with these settings, now (no task, no wait); None when there is none or
        sessions are waiting (they go first)."""
        if self.waiters:
            return None
        conns = self.idle.get(settings)
        while conns:
            conn = conns.pop()
            if not conn.broken:
                self.in_use += 1
                return conn
            conn.close()
        return None

    async def lease(self, settings: Settings) -> WorkerConnection:
        """A connection with these settings: an idle one, a new one while the pool has room, else the
        next one given back (first come first served); PoolExhausted after ``timeout`` seconds."""
        conn = self.take(settings)
        if conn is not None:
            return conn
        self._slot_freed()  # broken idle connections pruned; waiters first where there is room
        if self.waiters or (self.total() >= self.size and not self._evict_idle()):
            handed = await self._wait(settings)
            if handed is not None:
                return handed
        else:
            self.opening += 1
        return await self._open(settings)  # a slot is reserved (opening counts it)

    async def _open(self, settings: Settings) -> WorkerConnection:
        try:
            login = self.login()
            address = (login.host, login.port)
            if self.address != address:
                if self.address is not None:
                    self.reset()  # the node's primary moved: the old connections go
                self.address = address
            generation = self.generation
            conn = await WorkerConnection.open(login, settings)
        except BaseException:
            self.opening -= 1
            self._slot_freed()
            raise
        self.opening -= 1
        self.in_use += 1
        conn.generation = generation
        return conn

    async def _wait(self, settings: Settings) -> WorkerConnection | None:
        """Wait for a connection given back with these settings, or (None) for a slot to open one in."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[WorkerConnection | None] = loop.create_future()
        entry = (settings, future)
        self.waiters.append(entry)

        def expire() -> None:
            if not future.done():
                self.waiters.remove(entry)
                future.set_exception(PoolExhausted(self.node, self.size, self.timeout, len(self.waiters)))

        timer = loop.call_later(self.timeout, expire)
        try:
            return await future
        except asyncio.CancelledError:  # the session's task ended: what it was handed goes back
            if entry in self.waiters:
                self.waiters.remove(entry)
            elif future.done() and not future.cancelled() and future.exception() is None:
                handed = future.result()
                if handed is not None:
                    self.release(handed, settings)
                else:
                    self.opening -= 1
                    self._slot_freed()
            raise
        finally:
            timer.cancel()

    # --- giving back --------------------------------------------------------------------------------
    def release(self, conn: WorkerConnection, settings: Settings) -> None:
        """A session is done with ``conn``: to the first waiter, or idle; closed when it is not clean."""
        self.in_use -= 1
        if not conn.reusable or conn.generation != self.generation:
            conn.close()
            self._slot_freed()
            return
        while self.waiters:
            wanted, future = self.waiters.popleft()
            if future.done():
                continue
            if wanted == settings:
                self.in_use += 1
                future.set_result(conn)
            else:  # the first waiter needs other settings: its own connection in this one's slot
                conn.close()
                self.opening += 1
                future.set_result(None)
            return
        self.idle.setdefault(settings, []).append(conn)

    def discard(self, conn: WorkerConnection) -> None:
        """A leased connection that broke or whose state is not known: closed, its slot freed."""
        self.in_use -= 1
        conn.close()
        self._slot_freed()

    def reset(self) -> None:
        """The node has a new primary: close the idle connections; leased ones close when given back."""
        self.generation += 1
        for conns in self.idle.values():
            for conn in conns:
                conn.close()
        self.idle.clear()
        self._slot_freed()

    def _slot_freed(self) -> None:
        """Slots are free: the first waiters open their own connections in them."""
        self._prune()
        while self.waiters and self.total() < self.size:
            _, future = self.waiters.popleft()
            if not future.done():
                self.opening += 1
                future.set_result(None)

    def _prune(self) -> None:
        for settings in [s for s, conns in self.idle.items() if any(c.broken for c in conns) or not conns]:
            kept = [c for c in self.idle[settings] if not c.broken]
            if kept:
                self.idle[settings] = kept
            else:
                del self.idle[settings]

    def _evict_idle(self) -> bool:
        """Close one idle connection (of other settings) to make room (the caller takes the slot); False
        when none is idle."""
        for settings, conns in self.idle.items():
            if conns:
                conns.pop(0).close()  # the least recently used of its settings
                if not conns:
                    del self.idle[settings]
                return True
        return False


class WorkerPools:
    """Every node's pool, of one router process."""

    def __init__(self, login: Callable[[str], WorkerLogin], size: int | None = None, timeout: float = POOL_TIMEOUT) -> None:
        if size is not None and size < 1:
            raise ValueError("the pool size must be at least 1")
        self.login = login
        self.size = size or default_pool_size()
        self.timeout = timeout
        self.nodes: dict[str, NodePool] = {}

    def node(self, name: str) -> NodePool:
        pool = self.nodes.get(name)
        if pool is None:
            pool = self.nodes[name] = NodePool(name, lambda: self.login(name), self.size, self.timeout)
        return pool

    def follow_primaries(self) -> None:
        """Empty the pool of every node whose primary moved (cluster.json changed: a failover)."""
        for name, pool in self.nodes.items():
            try:
                login = self.login(name)
            except Exception:  # the node left the cluster: its pool empties
                pool.reset()
                continue
            if pool.address is not None and (login.host, login.port) != pool.address:
                pool.reset()
                pool.address = (login.host, login.port)

    def status(self) -> dict[str, dict[str, int]]:
        return {name: pool.status() for name, pool in sorted(self.nodes.items())}

    def connections(self) -> int:
        return sum(pool.in_use + pool.idle_count() for pool in self.nodes.values())


class Leases:
    """The worker connections one client session holds, by node: leased for one autocommit statement or
    a whole router transaction, given back when the session is idle again."""

    def __init__(self, pools: WorkerPools | None) -> None:
        self.pools = pools
        self.settings: Settings = ()  # set when the session's settings are known (its first ReadyForQuery)
        self.held: dict[str, WorkerConnection] = {}
        self.closed = False

    def free(self, node: str) -> WorkerConnection | None:
        """The connection held for ``node``, or an idle one of its pool, now; None: none without waiting."""
        conn = self.held.get(node)
        if conn is not None:
            if not conn.broken:
                return conn
            self.drop(node)
        if self.pools is None or self.closed:
            return None
        conn = self.pools.node(node).take(self.settings)
        if conn is not None:
            self.held[node] = conn
        return conn

    async def lease(self, node: str) -> WorkerConnection:
        """A connection to ``node``'s primary that the session holds until :meth:`release` (raises
        BackendError, PoolExhausted)."""
        conn = self.free(node)
        if conn is not None:
            return conn
        if self.pools is None or self.closed:
            raise BackendError("the client session ended")
        pool = self.pools.node(node)
        conn = await pool.lease(self.settings)
        held = self.held.get(node)
        if self.closed or (held is not None and not held.broken):  # ended meanwhile, or leased twice
            pool.release(conn, self.settings)
            if held is None:
                raise BackendError("the client session ended")
            return held
        self.held[node] = conn
        return conn

    async def exchange_once(self, node: str, text: str) -> bytes:
        """``text`` as one Query on a pooled connection to ``node`` that the session does not hold: leased for
        this Query only, outside any transaction of the session (raises BackendError, PoolExhausted)."""
        return await self.roundtrip_once(node, p.Query(text).encode())

    async def roundtrip_once(self, node: str, request: bytes) -> bytes:
        """:meth:`exchange_once` of messages ending in a Query or a Sync."""
        if self.pools is None or self.closed:
            raise BackendError("the client session ended")
        pool = self.pools.node(node)
        conn = await pool.lease(self.settings)
        try:
            reply = await conn.roundtrip(request)
        except BaseException:  # broken, or the caller cancelled: its reply may still come, so it is not reused
            pool.discard(conn)
            raise
        pool.release(conn, self.settings)
        return reply

    def drop(self, node: str) -> None:
        """Forget the connection held for ``node`` (broken, or its state not known): closed, not reused."""
        conn = self.held.pop(node, None)
        if conn is not None and self.pools is not None:
            self.pools.node(node).discard(conn)

    def release(self) -> None:
        """The session is idle: every held connection goes back (or is closed when not clean)."""
        held, self.held = self.held, {}
        if self.pools is not None:
            for node, conn in held.items():
                self.pools.node(node).release(conn, self.settings)

    def close(self) -> None:
        """The session ended: give everything back; later leases are refused."""
        self.closed = True
        self.release()
