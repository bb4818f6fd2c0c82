"""One client connection of the router.

Phases: STARTUP (SSLRequest/GSSENCRequest answered 'N', a CancelRequest forwarded, the startup message
kept), CONNECTING (a connection to the coordinator opens; what the client sends meanwhile is kept),
AUTH (the startup message and the whole authentication exchange relayed: the coordinator decides, the
router stores no password; the coordinator's BackendKeyData is replaced by the router's own key), then
RELAY from the first ReadyForQuery on: server bytes go to the client untouched, client bytes are framed
(to count statements and enforce message limits) and sent on as they came.

Both sides are asyncio protocols (no stream wrappers, one write per chunk) with flow control: when one
side's send buffer is full, reading from the other side pauses.
"""

from __future__ import annotations

import asyncio
import enum
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import cast

from . import protocol as p
from . import wire
from .keys import CancelKey, KeyAllocator, process_of

log = logging.getLogger(__name__)

CANNOT_CONNECT = "08006"  # connection_failure
CANCEL_TIMEOUT = 5.0

Address = tuple[str, int]


@dataclass
class RouterStats:
    clients_total: int = 0
    clients_active: int = 0
    queries: int = 0  # simple-protocol Query messages
    executes: int = 0  # extended-protocol Execute messages
    cancels: int = 0  # cancel requests forwarded to a server or a peer router process
    protocol_errors: int = 0


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

    def __post_init__(self) -> None:
        self.keys = KeyAllocator(self.process_index)

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
            self.stats.cancels += 1
            self.spawn(send_cancel(peer, request))
            return
        session = self.sessions.get(request.process_id)
        if session is None or session.client_key is None or session.server_key is None or session.address is None \
                or not hmac.compare_digest(session.client_key.secret, request.secret):
            log.info("cancel request with an unknown key: ignored")  # as the server does, silently
            return
        self.stats.cancels += 1
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


class Phase(enum.Enum):
    STARTUP = 1
    CONNECTING = 2
    AUTH = 3
    RELAY = 4
    CLOSED = 5


class ServerSide(asyncio.Protocol):
    """The session's connection to the coordinator."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        self.session.from_server(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.server_lost()

    def pause_writing(self) -> None:
        self.session.pause_client()

    def resume_writing(self) -> None:
        self.session.resume_client()


class ClientSession(asyncio.Protocol):
    def __init__(self, context: RouterContext) -> None:
        self.context = context
        self.phase = Phase.STARTUP
        self.client: asyncio.Transport | None = None
        self.server: ServerSide | None = None
        self.framer = wire.Framer(initial=True, limit=wire.frontend_limit)
        self.server_framer = wire.Framer()
        self.startup: bytes = b""
        self.pending: list[bytes] = []
        self.address: Address | None = None
        self.client_key: CancelKey | None = None
        self.server_key: CancelKey | None = None
        self.user = ""
        self.database = ""

    # --- client side ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.client = cast(asyncio.Transport, transport)
        self.context.stats.clients_total += 1
        self.context.stats.clients_active += 1

    def data_received(self, data: bytes) -> None:
        try:
            if self.phase is Phase.STARTUP:
                self._startup(data)
            elif self.phase is not Phase.CLOSED:
                self._from_client(self.framer.scan(data), data)
        except wire.ProtocolViolation as exc:
            self.context.stats.protocol_errors += 1
            self.refuse(exc.sqlstate, str(exc))

    def connection_lost(self, exc: Exception | None) -> None:
        self.context.stats.clients_active -= 1
        if self.client_key is not None:
            self.context.sessions.pop(self.client_key.process_id, None)
            self.context.keys.release(self.client_key.process_id)
        self._close()

    def pause_writing(self) -> None:
        if self.server and self.server.transport:
            self.server.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.server and self.server.transport:
            self.server.transport.resume_reading()

    def pause_client(self) -> None:
        if self.client:
            self.client.pause_reading()

    def resume_client(self) -> None:
        if self.client:
            self.client.resume_reading()

    def _startup(self, data: bytes) -> None:
        messages = self.framer.feed(data)
        while messages and self.phase is Phase.STARTUP:
            [(_, payload)] = messages
            self._initial(wire.decode_initial(payload), payload)
            if self.phase is Phase.STARTUP:
                messages = self.framer.feed(b"")
        if self.phase is Phase.CONNECTING and self.framer.buffered:
            rest = self.framer.take_buffer()
            self._from_client(self.framer.scan(rest), rest)

    def _initial(self, message: wire.InitialMessage, payload: bytes) -> None:
        if isinstance(message, wire.SSLRequest | wire.GSSENCRequest):
            self._write(b"N")  # no TLS / GSS encryption (yet): the client goes on in plain text
            self.framer.expect_initial()
        elif isinstance(message, wire.CancelRequest):
            self.context.cancel(message)
            self.phase = Phase.CLOSED
            self._close()
        else:
            self.startup = wire.int32(len(payload) + 4) + payload
            self.user = message.get("user") or ""
            self.database = message.get("database") or self.user
            self.framer.expect_typed()
            self.phase = Phase.CONNECTING
            self.context.spawn(self._connect())

    def _from_client(self, types: list[bytes], raw: bytes) -> None:
        stats = self.context.stats
        for type_byte in types:
            if type_byte == b"Q":
                stats.queries += 1
            elif type_byte == b"E":
                stats.executes += 1
        if self.phase is Phase.CONNECTING:
            self.pending.append(raw)
        elif self.server and self.server.transport:
            self.server.transport.write(raw)

    # --- server side ------------------------------------------------------------------------------
    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.address = self.context.upstream()
        try:
            _, server = await loop.create_connection(lambda: ServerSide(self), host, port)
        except OSError as exc:
            self.refuse(CANNOT_CONNECT, f"pgfleet router: cannot connect to the coordinator at {host}:{port}: "
                        f"{exc.strerror or exc}", hint="start the cluster ('pgfleet up') or check its state with 'pgfleet status'")
            return
        if self.phase is Phase.CLOSED:
            assert server.transport is not None
            server.transport.close()
            return
        self.server = server
        self.phase = Phase.AUTH
        assert server.transport is not None
        server.transport.write(self.startup + b"".join(self.pending))
        self.pending.clear()

    def from_server(self, data: bytes) -> None:
        if self.phase is Phase.RELAY:
            self._write(data)
            return
        try:
            messages = self.server_framer.feed(data)
            out: list[bytes] = []
            for type_byte, payload in messages:
                if type_byte == b"K" and self.phase is Phase.AUTH:
                    out.append(self._replace_key(payload))
                    continue
                out.append(wire.frame(type_byte, payload))
                if type_byte == b"Z":
                    self.phase = Phase.RELAY  # everything after the first ReadyForQuery goes through untouched
            if self.phase is Phase.RELAY:
                out.append(self.server_framer.take_buffer())
            self._write(b"".join(out))
        except wire.ProtocolViolation as exc:
            log.warning("invalid message from the coordinator: %s", exc)
            self.refuse(wire.PROTOCOL_VIOLATION, f"pgfleet router: invalid message from the coordinator: {exc}")

    def _replace_key(self, payload: bytes) -> bytes:
        message = p.decode_backend(b"K", payload)
        assert isinstance(message, p.BackendKeyData)
        self.server_key = CancelKey(message.process_id, message.secret)
        self.client_key = self.context.keys.allocate(len(message.secret))
        self.context.sessions[self.client_key.process_id] = self
        return p.BackendKeyData(self.client_key.process_id, self.client_key.secret).encode()

    def server_lost(self) -> None:
        if self.phase is not Phase.CLOSED:
            self.phase = Phase.CLOSED
            if self.client:
                self.client.close()  # what was written is sent first

    # --- ending -----------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self.client and not self.client.is_closing():
            self.client.write(data)

    def refuse(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        """Tell the client what went wrong (an ErrorResponse), then close both connections."""
        self._write(p.error_response(sqlstate, message, hint=hint).encode())
        self.phase = Phase.CLOSED
        self._close()

    def _close(self) -> None:
        self.phase = Phase.CLOSED
        if self.client and not self.client.is_closing():
            self.client.close()
        if self.server and self.server.transport and not self.server.transport.is_closing():
            self.server.transport.close()
