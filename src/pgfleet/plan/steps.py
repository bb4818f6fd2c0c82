"""Rendering composed statements without a connection (tests, logs)."""

from __future__ import annotations

from psycopg import sql


def render(statement: sql.Composable) -> str:
    """The SQL text of a composed statement, without a connection."""
    return statement.as_string(None)
