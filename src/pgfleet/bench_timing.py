"""Timing helpers of `pgfleet bench`: rounds, one timed call, threads of clients, bytes copied out."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from psycopg import sql

from .execute.connect import Conn


def secs(duration: float) -> str:
    return str(max(1, round(duration)))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def client_loop(make: Callable[[], Callable[[int], object]], clients: int, duration: float, keys: int) -> float:
    """Operations per second of ``clients`` threads, each calling its own op(key) for ``duration``."""
    import random

    counts = [0] * clients
    barrier = threading.Barrier(clients)

    def worker(i: int) -> None:
        op = make()
        rng = random.Random(i)
        barrier.wait()  # the clock starts when every client is connected
        stop = time.perf_counter() + duration
        n = 0
        while time.perf_counter() < stop:
            op(rng.randint(1, keys))
            n += 1
        counts[i] = n

    errors: list[BaseException] = []

    def guarded(i: int) -> None:
        try:
            worker(i)
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return sum(counts) / duration


def copy_out(conn: Conn, query: sql.Composable) -> int:
    size = 0
    with conn.cursor().copy(sql.SQL("COPY ({}) TO STDOUT").format(query)) as cp:
        for chunk in cp:
            size += len(chunk)
    return size
