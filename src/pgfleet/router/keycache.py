"""Distribution keys a router process drew ahead from a sequence (:mod:`.keyfill`), as PostgreSQL's own
``CACHE`` of a sequence keeps values per session (pure).

A draw asks the coordinator for as many keys as the statement needs, or more when the sequence is busy:
the block doubles (up to :data:`MAX_BLOCK`) each time the cache runs dry within :data:`BUSY_SECONDS` of the
previous draw, and falls back to one draw per statement when it is quiet; keys left over from a draw more
than :data:`KEEP_SECONDS` old are dropped. So an occasional INSERT takes the next value as the coordinator
would give it, and a stream of INSERTs mostly finds its keys here, without a round trip to the
coordinator. As with ``CACHE`` in PostgreSQL, keys are unique but not handed out in the order of the
statements over all sessions, and keys a process held when it stopped are never used.

A session of a role other than a superuser takes cached keys only once a draw checked that role's right
to the key (:func:`.keyfill.next_keys_sql`); those checks are forgotten with every new topology snapshot,
whose roles fingerprint changes with every GRANT or REVOKE."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

MAX_BLOCK = 64
BUSY_SECONDS = 1.0
KEEP_SECONDS = 5.0  # keys left from a draw older than that are dropped (a RESTART of the sequence, a quiet one)


class KeyCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[int, deque[int]] = {}
        self._block: dict[int, int] = {}
        self._drawn_at: dict[int, float] = {}
        self._checked: set[tuple[str, int]] = set()  # (role, table oid) whose rights a draw checked

    def take(self, sequence: int, rows: int, role: str | None, table: int) -> list[int] | None:
        """``rows`` cached keys of ``sequence`` for a session of ``role`` (None: a superuser); None when
        there are not enough, or the role's rights were not checked yet."""
        keys = self._keys.get(sequence)
        if keys and self._clock() - self._drawn_at.get(sequence, float("-inf")) > KEEP_SECONDS:
            keys.clear()  # left over from a busy spell: dropped (a gap), so a quiet sequence stays exact
        if not keys or len(keys) < rows or (role is not None and (role, table) not in self._checked):
            return None
        return [keys.popleft() for _ in range(rows)]

    def block(self, sequence: int, rows: int) -> int:
        """How many keys to draw for a statement of ``rows`` rows."""
        now = self._clock()
        busy = now - self._drawn_at.get(sequence, float("-inf")) < BUSY_SECONDS
        self._drawn_at[sequence] = now
        size = min(self._block.get(sequence, 1) * 2, MAX_BLOCK) if busy else 1
        self._block[sequence] = size
        return max(size, rows)

    def drawn(self, sequence: int, keys: list[int], rows: int, role: str | None, table: int) -> list[int]:
        """A draw came back: the statement's keys; the rest is kept."""
        if role is not None:
            self._checked.add((role, table))
        self._keys.setdefault(sequence, deque()).extend(keys[rows:])
        return keys[:rows]

    def forget_roles(self) -> None:
        self._checked.clear()
