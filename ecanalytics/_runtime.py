"""The library's clocks, ids and thread pools: the one seam tests and the simulator patch.

Every wall-clock reading that is *recorded* (commit times, default transaction timestamps, file
ids, retention days), every random name (commit tokens, object ids) and every thread pool whose
order of storage calls matters goes through here, so the deterministic simulator
(``tests/sim/runtime.py``) replaces four names of this module (``time``, ``urandom``, ``datetime``,
``ThreadPoolExecutor``) and nothing else. Durations
(``time.perf_counter``, ``time.monotonic``) are measured directly: nothing is decided by them.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from os import urandom
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(timezone.utc)


def time_ns() -> int:
    """The current time in nanoseconds since the epoch."""
    return time.time_ns()


def token(length: int = 32) -> str:
    """A random hex name of ``length`` characters (commit tokens, object names)."""
    return urandom(16).hex()[:length]


def sortable_id(length: int = 32) -> str:
    """A time-sortable unique id: 20 digits of nanoseconds, ``-``, a random hex of ``length``."""
    return f"{time_ns():020d}-{token(length)}"


def backoff(attempt: int, first_s: float, max_s: float) -> None:
    """Sleep before retry ``attempt`` (from 0) after a lost race: full jitter under a ceiling
    that doubles from ``first_s`` up to ``max_s``."""
    time.sleep(random.uniform(0, min(max_s, first_s * 2**attempt)))


def executor(max_workers: int) -> ThreadPoolExecutor:
    """A thread pool (the simulator runs its tasks in order on the calling thread)."""
    return ThreadPoolExecutor(max_workers=max_workers)


def each(fn: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    """``fn`` of every item, in order, on up to ``threads`` threads of an :func:`executor`; on the
    calling thread when one would do (a pool's threads cost more than a few local calls)."""
    if threads <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with executor(min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def ahead(fn: Callable[[T], R], items: Sequence[T], depth: int = 1) -> Iterator[R]:
    """``fn`` of every item, in order, made up to ``depth`` (0 or more) items ahead of the caller
    on an :func:`executor`: the next item is made while the caller works on this one, so up to
    ``depth`` results are made or held besides the one handed over (and the caller's previous
    one, until it lets go)."""
    if depth < 0:
        raise ValueError(f"depth must be 0 or more, not {depth}")
    with executor(max(1, depth)) as pool:
        making = deque(pool.submit(fn, item) for item in items[:depth])
        for i in range(len(items)):
            result = making.popleft().result() if depth > 0 else fn(items[i])
            if depth > 0 and i + depth < len(items):
                making.append(pool.submit(fn, items[i + depth]))
            yield result
