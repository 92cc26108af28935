"""Deterministic clocks, ids and executors for the library while a simulation runs.

:func:`simulated_runtime` patches the names of the library's one seam for clocks, ids and thread
pools (``ecanalytics._runtime``) and the database's ``Store``, and restores them afterwards:

* ``time`` / ``datetime``: the simulated clock (a fixed epoch plus 1 ms per storage step, plus
  the hours that ``pause`` faults added) plus the calling actor's skew, so file ids, transaction
  ids, retention cuts and backoffs are reproducible, and each actor's clock can be off;
* ``urandom``: bytes from the world's seeded RNG (object names, commit tokens), the same bytes a
  seeded ``uuid4()`` had, so seeds keep their runs;
* ``ThreadPoolExecutor``: a sequential executor. A commit writes its objects side by side on S3
  and a checkpoint four buckets at a time, on threads that would call the store in an order no
  seed controls;
* ``ecanalytics.database.Store``: every connection's Store is wrapped by the world.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib
import threading
import time as _time
import uuid as _uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any

from ecanalytics.storage import StorageConfig, Store
from tests.sim.faultstore import World

_ACTIVE = threading.Lock()  # one simulation per process at a time: the patches are global
PATCHES = {
    # Every recorded clock, random name and ordered thread pool of the library goes through this seam.
    "ecanalytics._runtime": ("time", "urandom", "datetime", "ThreadPoolExecutor"),
    "ecanalytics.database": ("Store",),
}


class SimTime:
    """The ``time`` module, with ``time_ns``/``time`` from the world and ``sleep`` a no-op."""

    def __init__(self, world: World) -> None:
        self._world = world

    def time_ns(self) -> int:
        return self._world.now_ns()

    def time(self) -> float:
        return self._world.now_ns() / 1e9

    def sleep(self, seconds: float) -> None:
        """Backoff between commit attempts costs nothing: the next storage call reschedules."""

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


class _DatetimeMeta(type):
    world: World

    def __getattr__(cls, name: str) -> Any:
        return getattr(_dt.datetime, name)

    def __instancecheck__(cls, obj: object) -> bool:
        return isinstance(obj, _dt.datetime)


class SimDatetime(metaclass=_DatetimeMeta):
    """``datetime.datetime`` whose ``now()`` reads the simulated clock; real instances otherwise."""

    @classmethod
    def now(cls, tz: _dt.tzinfo | None = None) -> _dt.datetime:
        return _dt.datetime.fromtimestamp(cls.world.now_ns() / 1e9, tz)


class SimUrandom:
    """``os.urandom`` from the world's seeded RNG: the bytes of a seeded version-4 UUID, as the
    library drew its tokens from ``uuid4()`` when the simulator's seeds were chosen."""

    def __init__(self, world: World) -> None:
        self._world = world

    def __call__(self, size: int) -> bytes:
        if size > 16:
            raise ValueError("the simulated urandom gives at most 16 bytes (one UUID)")
        return _uuid.UUID(int=self._world.uuid_rng.getrandbits(128), version=4).bytes[:size]


class SequentialExecutor:
    """A ``ThreadPoolExecutor`` stand-in that runs every task at once on the calling thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> SequentialExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        return iter([fn(*args) for args in zip(*iterables, strict=False)])

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future

    def shutdown(self, wait: bool = True, **kwargs: Any) -> None:
        pass


@contextlib.contextmanager
def simulated_runtime(world: World) -> Iterator[None]:
    """Patch :data:`PATCHES` for the duration of one simulated run."""
    sim_datetime: Any = type("SimDatetime", (SimDatetime,), {})
    sim_datetime.world = world

    def store_factory(config: StorageConfig) -> Store:
        return world.wrap(Store(config))

    shims: dict[str, Any] = {"time": SimTime(world), "urandom": SimUrandom(world), "datetime": sim_datetime,
                             "ThreadPoolExecutor": SequentialExecutor, "Store": store_factory}
    saved: list[tuple[Any, str, Any]] = []
    with _ACTIVE:
        try:
            for module_name, names in PATCHES.items():
                module = importlib.import_module(module_name)
                for name in names:
                    if hasattr(module, name):
                        saved.append((module, name, getattr(module, name)))
                        setattr(module, name, shims[name])
            yield
        finally:
            for module, name, original in reversed(saved):
                setattr(module, name, original)
