"""Where a statement runs, as the router's analysis decides it (:mod:`.analyze`) and its sessions act on it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the host type is only named here; multishard.py imports this module
    from .multishard import MultiShardHost


@dataclass(frozen=True)
class Coordinator:
    reason: str


@dataclass(frozen=True)
class Shard:
    node: str
    shard_index: int
    shard_ids: tuple[int, ...]  # the shards the statement touches (one per distributed table)
    sql: str


@dataclass(frozen=True)
class Split:
    """A multi-row INSERT over several shards: one part per shard, with the row numbers it carries."""

    parts: tuple[tuple[Shard, tuple[int, ...]], ...]


class MultiShard:
    """A statement the router runs itself over several shards or nodes (scatter/gather reads, COPY,
    multi-shard writes): planned purely by a planner of :mod:`.multishard`, run by a session.

    Plans are immutable and cached with the statement's text, so ``run`` keeps its state in locals."""

    description = "multi-shard"
    transactional = False  # it can run inside a client's transaction (:meth:`run_in_transaction`)
    writes = False  # it may write rows

    async def run_in_transaction(self, host: MultiShardHost) -> bytes | None:
        """Run the statement as part of the client's open transaction: ``host.worker`` gives the transaction's
        connection to a node (joining it), nothing is committed or rolled back here. The reply ends with
        ReadyForQuery ('I': the caller sets the transaction's status); None: nothing ran, the coordinator
        would have to run it."""
        raise NotImplementedError

    async def run(self, host: MultiShardHost) -> bytes | None:
        """Run the statement; return the client's whole reply (ending with ReadyForQuery), or None when
        nothing was executed anywhere, so that the coordinator runs the statement instead. Once anything
        may have run, return a reply (an ErrorResponse + ReadyForQuery at worst), never None."""
        raise NotImplementedError


Route = Coordinator | Shard | Split | MultiShard
