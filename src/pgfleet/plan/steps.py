"""A step: one SQL statement for one node."""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql


@dataclass(frozen=True)
class Step:
    node: str
    statement: sql.Composable
    description: str = ""


def render(statement: sql.Composable) -> str:
    """The SQL text of a composed statement, without a connection (for tests, logs and --dry-run)."""
    return statement.as_string(None)
