"""Cancel keys the router hands its clients.

A client cancels by opening a new connection and sending the (process id, secret) it got in
BackendKeyData. The router gives each client its own key, never the coordinator's, and keeps the
mapping to the server's key. The process id field carries the router process's index in its high bits,
so with several router processes behind one port (SO_REUSEPORT) whichever process receives a cancel
knows which one holds the session and forwards it there.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

SESSION_BITS = 22  # up to ~4 million concurrent sessions per process
PROCESS_BITS = 8  # up to 256 router processes; pid stays a positive int32
MAX_PROCESS_INDEX = (1 << PROCESS_BITS) - 1


@dataclass(frozen=True)
class CancelKey:
    process_id: int
    secret: bytes


def process_of(process_id: int) -> int:
    """The router process index encoded in a key's process id."""
    return (process_id >> SESSION_BITS) & MAX_PROCESS_INDEX


class KeyAllocator:
    """Unique keys of one router process: the session number wraps around, skipping those in use."""

    def __init__(self, process_index: int) -> None:
        if not 0 <= process_index <= MAX_PROCESS_INDEX:
            raise ValueError(f"router process index {process_index} out of range 0..{MAX_PROCESS_INDEX}")
        self.process_index = process_index
        self._next = 1
        self._in_use: set[int] = set()

    def allocate(self, secret_length: int = 4) -> CancelKey:
        mask = (1 << SESSION_BITS) - 1
        for _ in range(mask):
            number = self._next
            self._next = self._next % mask + 1  # 1..mask: a process id is never 0
            pid = (self.process_index << SESSION_BITS) | number
            if pid not in self._in_use:
                self._in_use.add(pid)
                return CancelKey(pid, os.urandom(secret_length))
        raise RuntimeError("no free cancel key: too many sessions in one router process")

    def release(self, process_id: int) -> None:
        self._in_use.discard(process_id)
