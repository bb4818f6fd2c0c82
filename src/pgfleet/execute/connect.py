"""Connections to nodes. Passwords travel in memory only, never in a message or a log line."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ..errors import ExecuteError, NodeError

log = logging.getLogger(__name__)

Conn = psycopg.Connection[tuple[Any, ...]]

# Same text output on every server, so that row checksums computed on different nodes compare.
CANONICAL_SETTINGS = {
    "TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres", "extra_float_digits": "3",
    "bytea_output": "hex",
}


@dataclass(frozen=True)
class Endpoint:
    """How to reach one node. ``password`` is excluded from repr."""

    name: str
    host: str
    port: int
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)

    def conninfo(self, *, with_password: bool = True) -> str:
        from psycopg.conninfo import make_conninfo

        params: dict[str, object] = {"host": self.host, "port": self.port, "dbname": self.dbname,
                                     "user": self.user}
        if with_password and self.password:
            params["password"] = self.password
        return make_conninfo("", **params)  # type: ignore[arg-type]

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"


def connect(ep: Endpoint, *, autocommit: bool = True, timeout: int = 10,
            canonical: bool = False, settings: Mapping[str, str] | None = None) -> Conn:
    """A connection to ``ep``; ``canonical`` pins the settings that change how values print, and
    ``settings`` are further session settings (sent with the startup packet: no extra round trip)."""
    conninfo = ep.conninfo()
    wanted = {**(CANONICAL_SETTINGS if canonical else {}), **(settings or {})}
    if wanted:
        from psycopg.conninfo import make_conninfo

        conninfo = make_conninfo(conninfo, options=" ".join(f"-c {k}={v.replace(' ', '')}" for k, v in wanted.items()))
    try:
        conn = psycopg.connect(conninfo, autocommit=autocommit, connect_timeout=timeout,
                               application_name="pgfleet")
    except psycopg.OperationalError as exc:
        raise NodeError(f"cannot connect to {ep.address}: {_first_line(exc)}", node=ep.name,
                        hint="start the node ('pgfleet up' for a local cluster) or check its address and password") from None
    return conn


def describe_error(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = diag.message_primary or _first_line(exc)
    if diag.message_detail:
        text += f" ({diag.message_detail})"
    return text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    if not text:
        return exc.__class__.__name__
    # libpq: 'connection failed: connection to server at "…", port … failed: Connection refused'
    return text[0].rsplit("failed: ", 1)[-1]


def wrap(exc: psycopg.Error, node: str, what: str) -> ExecuteError:
    return ExecuteError(f"{what} failed: {describe_error(exc)}", node=node)
