"""Run steps on their nodes, in order."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping

import psycopg

from ..errors import ExecuteError
from ..plan import Step, render
from .connect import describe_error

log = logging.getLogger(__name__)


def run_steps(conns: Mapping[str, psycopg.Connection[tuple[object, ...]]], steps: Iterable[Step],
              on_step: Callable[[Step], None] | None = None) -> None:
    for step in steps:
        conn = conns.get(step.node)
        if conn is None:
            raise ExecuteError(f"no connection for node {step.node}")
        log.debug("[%s] %s", step.node, render(step.statement))
        try:
            conn.execute(step.statement)
        except psycopg.Error as exc:
            what = step.description or "statement"
            raise ExecuteError(f"{what} failed: {describe_error(exc)}", node=step.node) from None
        if on_step:
            on_step(step)
