"""A client session whose coordinator connection was lost while it was idle (the coordinator restarted or
failed over) is logged in again on the coordinator's current primary as the same role (:mod:`.reauth`), its
prepared statements parsed again there, and goes on: the client does not notice, apart from a new backend.

Only a session that holds nothing the new backend would lack is carried over: idle (no statement in flight,
no transaction), never pinned to the coordinator (so no temporary table, cursor, LISTEN, advisory lock,
SQL-level PREPARE or SET the router does not carry since its startup, whose parameters are sent again, with
the values of the SETs it carries: :meth:`.settings.SessionSettings.coordinator_params`), logged in with
SCRAM-SHA-256. Any
other session ends as before with 57P01 and reconnects. Client bytes that arrive meanwhile wait; the new
login is tried for up to :data:`RECONNECT_SECONDS` (a failover takes a few seconds).

A backend often says why it ends before its connection closes: a FATAL ErrorResponse with 57P01 (its
postmaster died, or a fast shutdown or pg_terminate_backend), 57P02 or 57P03. For a session that can be
carried over, that message is held back (:func:`holds_back`): relayed, it would end the client's session
although the router replaces the connection. A session that cannot be carried over gets it as sent."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import protocol as p
from . import wire
from .backend import BackendError, WorkerConnection
from .context import Address
from .reauth import keys_for, login_again
from .keys import CancelKey
from .upstream import Phase, ServerSide, coordinator_lost

if TYPE_CHECKING:  # session.py imports this module
    from .session import ClientSession

log = logging.getLogger(__name__)

RECONNECT_SECONDS = 30.0
SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})  # admin_shutdown, crash_shutdown, cannot_connect_now
RETRY_SECONDS = 0.5


def may_reconnect(session: ClientSession) -> bool:
    """Whether the session's lost coordinator connection can be replaced without the client noticing."""
    routing = session.routing
    return (session.phase is Phase.RELAY and not session.terminating and not session.pinned
            and routing is not None and routing.coordinator_login is not None and session.scram.usable
            and session.outstanding == 0 and not session.busy and session.transactions.txn is None
            and not session.coordinator_txn and session.skipper is None and session.rewriter is None
            and session.extended.capture is None and session.extended.statements.settled
            and session.server_framer.last_status == b"I")


def holds_back(session: ClientSession, data: bytes) -> bool:
    """Whether ``data`` from the coordinator, unasked, is one FATAL ErrorResponse saying that the backend ends
    for a shutdown, of a session that can be carried over: then it is not relayed, and the connection's
    close carries the session over."""
    if data[:1] != b"E" or not may_reconnect(session):
        return False
    try:
        found = wire.Framer().feed(data)
    except wire.ProtocolViolation:
        return False
    if len(found) != 1 or len(data) != 5 + len(found[0][1]):
        return False
    error = p.decode_backend(*found[0])
    return isinstance(error, p.ErrorResponse) and error.field("V") == "FATAL" and error.sqlstate in SHUTDOWN_STATES


async def carry_over(session: ClientSession) -> None:
    """Replace the session's lost coordinator connection (``may_reconnect`` said it can), then go on with
    what the client sent meanwhile; or end the session as before."""
    lost = session.address
    found = await log_in_again(session)
    if session.phase is Phase.CLOSED:  # the client went away meanwhile
        if found is not None:
            found[0].close()
        return
    if found is None:
        session.busy = False
        session._write(coordinator_lost(lost))
        session.phase = Phase.CLOSED
        if session.client:
            session.client.close()
        return
    conn, address = found
    transport = conn.transport
    assert transport is not None and conn.cancel_key is not None
    server = ServerSide(session)
    transport.set_protocol(server)  # the logged-in connection is the session's coordinator connection now
    server.transport = transport
    session.server, session.address = server, address
    session.server_key = CancelKey(*conn.cancel_key)
    session.server_framer = wire.Framer()
    session.server_framer.last_status = b"I"
    session.context.stats.sessions_logged_in_again += 1
    log.info("session of %s: logged in again on the coordinator at %s:%d", session.user, *address)
    session.busy = False
    session.resume()


async def log_in_again(session: ClientSession) -> tuple[WorkerConnection, Address] | None:
    """A new coordinator connection logged in as the session's role, its prepared statements parsed again,
    idle; None when that cannot be done (then the session ends)."""
    routing = session.routing
    assert routing is not None and routing.coordinator_login is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECONNECT_SECONDS
    while True:
        try:
            keys = keys_for(session.scram, await session.context.secrets.secret(session.user, routing.coordinator_login()))
            if keys is None:
                log.info("session of %s: the role's SCRAM secret no longer matches; the session ends", session.user)
                return None
            address = session.context.upstream()
            conn = await login_again(*address, session.coordinator_params(), keys)
            if not await _prepare_again(conn, session):
                conn.close()
                return None
            return conn, address
        except (BackendError, OSError) as exc:
            if loop.time() > deadline:
                log.info("session of %s: could not log in again on the coordinator: %s", session.user, exc)
                return None
            await asyncio.sleep(RETRY_SECONDS)


async def _prepare_again(conn: WorkerConnection, session: ClientSession) -> bool:
    known = session.extended.statements.known()
    if not known:
        return True
    request = b"".join(p.Parse(name, statement.sql, statement.client_types).encode() for name, statement in known.items())
    reply = await conn.roundtrip(request + p.Sync().encode())
    return all(type_byte != b"E" for type_byte, _ in wire.Framer().feed(reply))
