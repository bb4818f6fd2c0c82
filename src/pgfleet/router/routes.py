"""Where a statement runs, as the router's analysis decides it (:mod:`.analyze`) and its sessions act on it."""

from __future__ import annotations

from dataclasses import dataclass


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


Route = Coordinator | Shard | Split
