"""What the router's COPY plans (:mod:`.copyin`, :mod:`.copyout`) share: a transaction on every node of
a table under the client's role, and a shard's error told in the words of the logical table."""

from __future__ import annotations

import re
from collections.abc import Sequence

from . import protocol as p
from .backend import BackendError, WorkerConnection
from .multishard import MultiShardHost
from .rewrite import qualified
from .snapshot import RoutedTable
from .twophase import first_error, run_each, run_everywhere, tags
from ..topology.model import Shard

_LINE = re.compile(r"^(COPY [^,]+), line \d+")


async def open_nodes(host: MultiShardHost, nodes: Sequence[str]) -> dict[str, WorkerConnection] | None:
    """This session's connection to every node, or None (nothing ran: the coordinator runs the statement)."""
    conns: dict[str, WorkerConnection] = {}
    try:
        for node in nodes:
            conns[node] = await host.worker(node)
    except BackendError:
        for node in conns:
            host.drop_worker(node)
        return None
    return conns


async def begin_everywhere(host: MultiShardHost, conns: dict[str, WorkerConnection], begin: str) -> bool:
    """``begin`` and SET LOCAL ROLE to the client's role on every connection; False (all rolled back) when
    a node refused or broke."""
    statements = [begin if host.role_on(c) == c.user else f"{begin}; SET LOCAL ROLE {qualified(host.role_on(c))}"
                  for c in conns.values()]
    replies = await run_each(list(conns.values()), statements)
    if all(r is not None and first_error(r) is None for r in replies):
        return True
    await rollback(host, conns)
    return False


async def rollback(host: MultiShardHost, conns: dict[str, WorkerConnection]) -> None:
    """ROLLBACK on every connection; a connection that broke is dropped (its transaction ended with it)."""
    replies = await run_everywhere(list(conns.values()), "ROLLBACK")
    for node, reply in zip(conns, replies, strict=True):
        if reply is None:
            host.drop_worker(node)


def completed(reply: bytes) -> bool:
    return first_error(reply) is None and bool(tags(reply))


def logical_error(error: p.ErrorResponse, table: RoutedTable, shards: Sequence[Shard]) -> bytes:
    """A shard's ErrorResponse as the same COPY of the logical table gets it from one server: the shard
    suffix ``_<shard id>`` of the shard table and of its constraints' names is dropped (``t_102038`` →
    ``t``, ``t_pkey_102038`` → ``t_pkey``); the CONTEXT keeps the table but not the line number, which
    counts the lines of the shard's part of the data."""
    suffix = re.compile("_(?:" + "|".join(str(s.shard_id) for s in shards) + ")(?![0-9])")
    fields: list[tuple[str, str]] = []
    for code, original in error.fields:
        text = table.schema if code == "s" else suffix.sub("", original)
        if code == "W":
            text = _LINE.sub(r"\1", text)
        fields.append((code, text))
    return p.ErrorResponse(tuple(fields)).encode()


def shard_failure(reply: bytes | None, node: str, table: RoutedTable, shards: Sequence[Shard]) -> bytes:
    """The client's error for a shard statement that failed (its error renamed) or lost its connection."""
    error = first_error(reply) if reply is not None else None
    if error is not None:
        return logical_error(error, table, shards)
    return p.error_response("08006", f"pgfleet router: the connection to worker {node} was lost during COPY; "
                            "nothing was loaded", severity="ERROR", hint="retry the COPY").encode()
