"""A write the router runs itself over several shards, atomically: the per-shard statements of one client
statement (planned by :mod:`.mwrite`), grouped by node.

Each node runs its statements in one Query, in one READ COMMITTED transaction under the client's role::

    BEGIN ISOLATION LEVEL READ COMMITTED; [SET LOCAL ROLE r;] <shard statement>; …; COMMIT

with one node, or with ``PREPARE TRANSACTION '<gid>'`` in place of COMMIT when several nodes take part;
then the decision is recorded and COMMIT PREPARED sent (:func:`.twophase.commit_prepared`; what a crash
leaves is settled by :mod:`.recovery`). Nodes run at once; one node's shards run one after the other in
its Query. An error anywhere rolls back every node (nothing applied) and the client gets that error.

The client's reply is the logical statement's: the first RowDescription of a RETURNING, every row (in the
order of the client's VALUES list when the plan knows it), and one CommandComplete whose count is the sum.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from . import protocol as p
from . import wire
from .backend import BackendError, WorkerConnection, lost_in_flight
from .logical import Renames, renamed
from .routes import MultiShard
from .multishard import MultiShardHost
from .rewrite import qualified
from .twophase import commit_prepared, literal, messages, run_each, status_of

INSUFFICIENT_PRIVILEGE = "42501"
CONNECTION_FAILURE = "08006"


@dataclass(frozen=True)
class NodeWrites:
    node: str
    statements: tuple[str, ...]  # each one shard's statement, in the client's SQL rewritten
    row_numbers: tuple[tuple[int, ...], ...] = ()  # per statement: the client's VALUES rows it inserts


@dataclass
class _Result:
    """One statement's part of a node's reply."""

    description: bytes | None = None  # RowDescription payload
    rows: list[bytes] | None = None  # DataRow payloads
    tag: str = ""


@dataclass
class _NodeReply:
    error: p.ErrorResponse | None
    results: list[_Result]
    finished: bool  # the final COMMIT / PREPARE TRANSACTION completed


def _parse(reply: bytes, setup: int, count: int, finish: str) -> _NodeReply:
    """A node's reply: ``setup`` CommandCompletes to skip, ``count`` statements' results, then ``finish``."""
    error: p.ErrorResponse | None = None
    results: list[_Result] = []
    current = _Result(rows=[])
    skipped = 0
    finished = False
    for type_byte, payload in messages(reply):
        if type_byte == b"E" and error is None:
            decoded = p.decode_backend(type_byte, payload)
            assert isinstance(decoded, p.ErrorResponse)
            error = decoded
        elif type_byte == b"C":
            tag = payload[:-1].decode()
            if skipped < setup:
                skipped += 1
            elif len(results) < count:
                current.tag = tag
                results.append(current)
                current = _Result(rows=[])
            else:
                finished = tag == finish
        elif type_byte == b"T" and skipped >= setup:
            current.description = payload
        elif type_byte == b"D":
            assert current.rows is not None
            current.rows.append(payload)
    return _NodeReply(error, results, finished and error is None and status_of(reply) == b"I")


def combined_tag(tags: list[str]) -> str:
    """``UPDATE 3`` + ``UPDATE 4`` → ``UPDATE 7``; ``INSERT 0 n`` likewise; a tag without a count as it is."""
    head = tags[0].rpartition(" ")[0]
    if not head or not all(t.rpartition(" ")[2].isdigit() for t in tags):
        return tags[0]
    return f"{head} {sum(int(t.rpartition(' ')[2]) for t in tags)}"


@dataclass(frozen=True)
class ShardWrite(MultiShard):
    """One client statement as statements on shards, committed on every node or on none."""

    parts: tuple[NodeWrites, ...]
    shard_ids: frozenset[int] = frozenset()  # every shard written: an error names their logical tables
    renames: Renames | None = field(default=None, compare=False)
    description = "multi-shard write"
    transactional = True
    writes = True

    async def run_in_transaction(self, host: MultiShardHost) -> bytes | None:
        """The shard statements on the transaction's connections, nothing committed: the transaction's COMMIT
        commits them with the rest (two-phase when it spans nodes). An error fails the client's transaction
        (ROLLBACK TO SAVEPOINT undoes the statement on every node, as on one server)."""
        nodes = [part.node for part in self.parts]
        try:
            conns = list(await asyncio.gather(*(host.worker(node) for node in nodes)))
        except BackendError:
            return None
        texts = [";\n".join(f"{s}\n" for s in part.statements) for part in self.parts]
        replies = await run_each(conns, texts)
        parsed: list[_NodeReply] = []
        for node, reply, part in zip(nodes, replies, self.parts, strict=True):
            if reply is None:
                host.drop_worker(node)  # the transaction is lost with the connection
                return None
            parsed.append(_parse(reply, 0, len(part.statements), ""))
        errors = [r.error for r in parsed if r.error is not None]
        if errors:
            return self._client_error(errors[0])
        return self._reply([r.results for r in parsed])

    async def run(self, host: MultiShardHost) -> bytes | None:
        nodes = [part.node for part in self.parts]
        twophase = host.twophase
        several = len(nodes) > 1
        if several and twophase is None:
            return None
        try:
            conns = list(await asyncio.gather(*(host.worker(node) for node in nodes)))
        except BackendError:
            return None  # nothing ran: the coordinator runs it
        gid = twophase.gids.next() if several and twophase is not None else ""
        try:
            return await self._write(host, nodes, conns, gid)
        finally:
            if gid and twophase is not None:
                twophase.gids.done(gid)

    async def _write(self, host: MultiShardHost, nodes: list[str], conns: list[WorkerConnection], gid: str) -> bytes | None:
        twophase = host.twophase
        several = len(nodes) > 1
        finish = f"PREPARE TRANSACTION {literal(gid)}" if several else "COMMIT"
        texts, setups = [], []
        for part, conn in zip(self.parts, conns, strict=True):
            setup = ["BEGIN ISOLATION LEVEL READ COMMITTED"]
            role = host.role_on(conn)
            if role != conn.user:
                setup.append(f"SET LOCAL ROLE {qualified(role)}")
            setups.append(len(setup))
            # each statement ends on a new line: a trailing -- comment ends with it
            texts.append(";\n".join([*setup, *(f"{s}\n" for s in part.statements), finish]))
        replies = await run_each(conns, texts)
        parsed = [None if reply is None else _parse(reply, setup, len(part.statements), finish.split(" '")[0])
                  for reply, setup, part in zip(replies, setups, self.parts, strict=True)]
        if all(r is not None and r.finished for r in parsed):
            if several and twophase is not None:
                failure = await commit_prepared(twophase, gid, dict(zip(nodes, conns, strict=True)), host.drop_worker)
                if failure is not None:
                    return failure + p.ReadyForQuery("I").encode()
            return self._reply([r.results for r in parsed if r is not None])
        return await self._undo(host, nodes, conns, replies, parsed, gid)

    async def _undo(self, host: MultiShardHost, nodes: list[str], conns: list[WorkerConnection],
                    replies: list[bytes | None], parsed: list[_NodeReply | None], gid: str) -> bytes | None:
        """Roll back every node after a failure; the client's error (None: refused for lack of a privilege
        everywhere and rolled back: the coordinator runs it and answers in its own words)."""
        undo: list[tuple[WorkerConnection, str]] = []
        for node, conn, reply, result in zip(nodes, conns, replies, parsed, strict=True):
            if reply is None:
                host.drop_worker(node)  # its transaction ends with the connection; recovery aborts a prepared one
            elif result is not None and result.finished and gid:
                undo.append((conn, f"ROLLBACK PREPARED {literal(gid)}"))
            elif status_of(reply) in (b"T", b"E"):
                undo.append((conn, "ROLLBACK"))
        undone = await run_each([c for c, _ in undo], [s for _, s in undo])
        errors = [r.error for r in parsed if r is not None and r.error is not None]
        lost = [node for node, reply in zip(nodes, replies, strict=True) if reply is None]
        if errors and not lost and all(e.sqlstate == INSUFFICIENT_PRIVILEGE for e in errors) \
                and all(u is not None for u in undone):
            return None
        if errors:
            return self._client_error(errors[0])
        if lost and not gid:
            return lost_in_flight(lost[0])  # its COMMIT may have run
        return p.error_response(CONNECTION_FAILURE, f"pgfleet router: the connection to worker {', '.join(lost)} was "
                                "lost while it ran this statement; the statement was rolled back on every node",
                                severity="ERROR", hint="retry the statement").encode() + p.ReadyForQuery("I").encode()

    def _client_error(self, error: p.ErrorResponse) -> bytes:
        """A shard's error as the client gets it: in the logical tables' names, then ReadyForQuery."""
        if self.renames is not None:
            error = p.ErrorResponse(renamed(error.fields, self.renames))
        return error.encode() + p.ReadyForQuery("I").encode()

    def _reply(self, results: list[list[_Result]]) -> bytes:
        out: list[bytes] = []
        flat = [r for node in results for r in node]
        description = next((r.description for r in flat if r.description is not None), None)
        if description is not None:
            out.append(wire.frame(b"T", description))
            out += [wire.frame(b"D", row) for row in self._ordered_rows(results)]
        out.append(p.CommandComplete(combined_tag([r.tag for r in flat])).encode())
        out.append(p.ReadyForQuery("I").encode())
        return b"".join(out)

    def _ordered_rows(self, results: list[list[_Result]]) -> list[bytes]:
        """Every returned row; in the client's VALUES order when each statement returned one row per row."""
        pairs = [(numbers, r.rows or []) for part, node in zip(self.parts, results, strict=True)
                 for numbers, r in zip(part.row_numbers or [()] * len(node), node, strict=True)]
        if all(numbers and len(numbers) == len(rows) for numbers, rows in pairs):
            placed = sorted((n, row) for numbers, rows in pairs for n, row in zip(numbers, rows, strict=True))
            return [row for _, row in placed]
        return [row for _, rows in pairs for row in rows]
