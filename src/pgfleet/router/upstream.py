"""The session's side toward the coordinator: its asyncio protocol, the session phases, and what a
client gets when that connection is lost."""

from __future__ import annotations

import asyncio
import enum
from typing import Protocol, cast

from . import protocol as p
from .context import Address


class CoordinatorListener(Protocol):
    """What the coordinator connection reports to (a :class:`~.session.ClientSession`)."""

    def from_server(self, data: bytes) -> None: ...
    def server_lost(self) -> None: ...
    def pause_client(self) -> None: ...
    def resume_client(self) -> None: ...


def coordinator_lost(address: Address | None) -> bytes:
    """What a client in a session gets when its coordinator connection ends without a word from the
    server (killed, or failing over): the router cannot log in again for the client (it keeps no
    password), so the session ends and the client reconnects; new connections go to the current primary."""
    where = f" at {address[0]}:{address[1]}" if address else ""
    return p.error_response("57P01", f"pgfleet router: the connection to the coordinator{where} was lost (the "
                            "coordinator stopped or is failing over); this session ends", severity="FATAL",
                            hint="reconnect: new connections go to the coordinator's current primary").encode()


class Phase(enum.Enum):
    STARTUP = 1
    CONNECTING = 2
    AUTH = 3
    RELAY = 4
    CLOSED = 5


class ServerSide(asyncio.Protocol):
    """The session's connection to the coordinator."""

    def __init__(self, session: CoordinatorListener) -> None:
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
