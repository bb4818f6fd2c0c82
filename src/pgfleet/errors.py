"""One error root for pgfleet, a subclass per layer.

Every message says what failed (and on which node, when a node is involved) and what to do about it;
the CLI prints ``str(error)`` as one line and exits non-zero.
"""

from __future__ import annotations


class PgfleetError(Exception):
    """Root of every error pgfleet raises on purpose."""

    def __init__(self, message: str, *, hint: str | None = None, node: str | None = None) -> None:
        self.message = message
        self.hint = hint
        self.node = node
        super().__init__(self.render())

    def render(self) -> str:
        text = self.message
        if self.node and f"node {self.node}" not in text:
            text = f"node {self.node}: {text}"
        if self.hint:
            text = f"{text} — {self.hint}"
        return text


class SpecError(PgfleetError):
    """What the user asked for is not valid (bad spec, unknown table or column, bad identifier)."""


class TopologyError(PgfleetError):
    """The catalog or the servers are not in the state an operation needs."""


class PlanError(PgfleetError):
    """A wanted state cannot be reached from the existing one."""


class ExecuteError(PgfleetError):
    """A statement failed on a server."""


class NodeError(PgfleetError):
    """A PostgreSQL process could not be created, started, stopped or reached."""


class ClusterError(PgfleetError):
    """The local cluster directory or its file is missing or broken."""


class RouterError(PgfleetError):
    """The router could not start, stop or serve."""
