"""The HA event log: every decision of the monitor and of pgfleet's HA commands, one JSON line each in
``events.jsonl`` in the cluster directory."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from ..cluster.local import LocalCluster

log = logging.getLogger(__name__)

EVENTS = "events.jsonl"
Say = Callable[[str], None]


@dataclass(frozen=True)
class Event:
    time: str
    node: str
    kind: str
    detail: str


def record(local: LocalCluster, node: str, kind: str, detail: str) -> Event:
    event = Event(datetime.now(UTC).isoformat(timespec="milliseconds"), node, kind, detail)
    path = local.directory / EVENTS
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as handle:
        handle.write(json.dumps(asdict(event)) + "\n")
    log.info("%s %s: %s", node, kind, detail)
    return event


def read_events(local: LocalCluster) -> list[Event]:
    path = local.directory / EVENTS
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(ValueError, TypeError):
            events.append(Event(**json.loads(line)))
    return events
