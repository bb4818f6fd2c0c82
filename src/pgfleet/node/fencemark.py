"""A fence that outlives the process: a marker in a member's directory and ``standby.signal`` in its data
directory, so that a fenced member is never started writable again (``pgfleet up`` leaves it stopped,
and a server started by hand comes up read-only).

The marker lives in the member's home, next to (not inside) its data directory: pg_rewind and a fresh
base backup replace the data directory, the marker stays until a rejoin succeeds.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from .server import LocalServer

MARK_FILE = "fenced.json"


@dataclass(frozen=True)
class FenceMark:
    member: str
    time: str  # ISO 8601, UTC
    reason: str

    def message(self) -> str:
        """The one line ``up``, ``status`` and the CLI print for a fenced member."""
        return f"{self.member} was fenced at {self.time}: pgfleet node rejoin {self.member}"


def mark_fenced(server: LocalServer, reason: str) -> FenceMark:
    """Write the marker and ``standby.signal`` (the process itself is the caller's business)."""
    mark = FenceMark(server.name, datetime.now(UTC).isoformat(timespec="seconds"), reason)
    server.home.mkdir(parents=True, exist_ok=True)
    server.write_file(server.home / MARK_FILE, json.dumps(asdict(mark)) + "\n")
    if server.exists():
        server.write_file(server.datadir / "standby.signal", "")
    return mark


def read_mark(server: LocalServer) -> FenceMark | None:
    try:
        data = json.loads((server.home / MARK_FILE).read_text())
        return FenceMark(str(data["member"]), str(data["time"]), str(data["reason"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # a damaged marker still fences: better a member left stopped than one started writable
        return FenceMark(server.name, "an unknown time", "damaged fence marker")


def clear_mark(server: LocalServer) -> None:
    with contextlib.suppress(FileNotFoundError):
        (server.home / MARK_FILE).unlink()
