"""What exists: immutable snapshots read from the catalog and the servers."""

from .model import (
    Column,
    Constraint,
    DistTable,
    Index,
    Node,
    Shard,
    TableDef,
    Topology,
)

__all__ = ["Column", "Constraint", "DistTable", "Index", "Node", "Shard", "TableDef", "Topology"]
