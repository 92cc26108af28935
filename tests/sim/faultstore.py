"""A fault-injecting wrapper around the real :class:`ecanalytics.storage.Store` of a connection.

:class:`World` holds what every connection of one simulated run shares: the seeded RNG that
decides faults, the global storage-step counter, the LIST visibility of each key and the trace of
every call. :meth:`World.wrap` patches the methods named in :data:`STORE_METHODS` on one Store
instance (``db.store``, which that Database's ledger, consolidators and plugins share); a new
Store method only needs adding to that tuple (``write_parquet`` is built on ``write``/``create``).

Every call an actor makes is a scheduling point: the actor hands the baton back to the scheduler,
which lets exactly one actor run until its next storage call. Every fault is drawn from the
world's ``random.Random``, never from wall-clock time or thread timing, so a seed replays exactly.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ecanalytics.errors import StorageError
from ecanalytics.storage import Store

if TYPE_CHECKING:
    from tests.sim.scheduler import Actor, Scheduler

STORE_METHODS = ("read", "read_many", "write", "create", "delete", "listdir", "listdir_times", "listdirs", "find",
                 "find_times", "exists", "copy", "du", "store_now")
DELETE_MODES = ("none", "per_key", "first_key", "denied", "stop")
BASE_NS = 1_795_780_800 * 10**9  # 2026-11-27T12:00:00Z: the simulated epoch
STEP_NS = 1_000_000  # simulated time advances 1 ms per storage step
HOUR_NS = 3600 * 10**9
PAUSE_JUMP_NS = ((5 * HOUR_NS // 4, 6 * HOUR_NS), (6 * HOUR_NS, 36 * HOUR_NS))  # 1.25-6 h mostly, or 6-36 h
PAUSE_BUDGET_NS = 72 * HOUR_NS  # ... and all pauses of a run by at most this much (see Faults)
Script = Callable[["World", "Actor", str, tuple[Any, ...]], "str | None"]


class SimulatedCrash(BaseException):
    """An actor died at a storage step; a BaseException, so no library code can swallow it."""


@dataclass(frozen=True)
class Faults:
    """Rates of each fault class (0 disables it).

    ``delete_mode``: ``per_key`` (S3 DeleteObjects answering 200 with per-key errors: each key is
    skipped with ``delete_rate``, and nothing is reported), ``first_key`` (the first key of every
    DeleteObjects fails silently), ``denied`` (append-only credentials: every delete is a silent
    no-op) or ``stop`` (local-disk style: with ``delete_rate`` a list delete stops part-way and
    reports nothing). ``list_lag``: a new key shows in LIST up to that many steps late and a
    deleted one lingers as long. ``skew_s``: each actor's clock is off by up to that many seconds
    (20 minutes, or days). ``torn`` leaves a truncated temp file beside a local write (the only
    place a real torn object can appear: S3 and ``memory://`` PUTs are atomic), then fails it.

    ``pause``: at a storage call the calling process stops, the world clock (every actor's and
    the store's) jumps forward by 1.25 to 6 hours (one pause in five: 6 to 36 hours), and the
    scheduler runs the others: for 3 to 30 steps, 30 to 300, or until every other actor is done
    or paused. Then the call is made. A pause is eight times likelier before the ``create`` of a
    log entry (the commit point: the commit's deltas are written, its version not yet taken) and
    four times before the write of a delta or a compaction output (a long job), see
    :func:`_pause_weight`, and never happens while every other actor is done. All jumps of a run
    add up to at most :data:`PAUSE_BUDGET_NS` (3 days), so with a skew of days the clocks still
    stay within the 7-day idempotency window: a longer span would legitimately count a retried
    key twice.
    ``operator``: an ``operator`` actor deletes one object the committed manifest names, out of
    band (its deletes never fail).
    """

    latency: float = 0.0
    error: float = 0.0
    lost: float = 0.0
    delete_mode: str = "none"
    delete_rate: float = 0.0
    torn: float = 0.0
    list_lag: int = 0
    skew_s: float = 0.0
    crash: float = 0.0
    pause: float = 0.0
    operator: bool = False

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in vars(self).items() if v not in (0, 0.0, "none", False))


@dataclass
class World:
    """Shared state of one simulated run; see the module docstring."""

    seed: int
    faults: Faults
    backend: str
    scheduler: Scheduler | None = None
    script: Script | None = None
    active: bool = True  # faults on; the checker turns them off
    step: int = 0
    trace: list[str] = field(default_factory=list)
    fired: Counter[str] = field(default_factory=Counter)
    events: dict[str, list[str]] = field(default_factory=dict)  # key -> what happened to it
    foreign: list[str] = field(default_factory=list)  # calls from threads that are not actors
    born: dict[str, int] = field(default_factory=dict)  # key -> first step it shows in LIST
    ghost: dict[str, int] = field(default_factory=dict)  # deleted key -> last step it shows in LIST
    gone: set[str] = field(default_factory=set)
    seen: set[str] = field(default_factory=set)
    blobs: dict[str, bytes] = field(default_factory=dict)  # transaction objects as written, for triage
    mtimes: dict[str, float] = field(default_factory=dict)  # key -> LastModified by the store's clock
    offset_ns: int = 0  # how far pauses moved the world clock forward

    def __post_init__(self) -> None:
        self.rng = random.Random(f"faults-{self.seed}")
        self.uuid_rng = random.Random(f"uuid-{self.seed}")
        self._tls = threading.local()

    # -- clock ------------------------------------------------------------------------------
    def now_ns(self) -> int:
        """Simulated wall clock of the calling actor (its skew included)."""
        from tests.sim.scheduler import current_actor

        actor = current_actor()
        return BASE_NS + self.step * STEP_NS + self.offset_ns + (actor.skew_ns if actor else 0)

    def store_clock(self) -> float:
        """The store's own clock (seconds): one for every actor, unlike their skewed ones."""
        return (BASE_NS + self.step * STEP_NS + self.offset_ns) / 1e9

    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.trace).encode()).hexdigest()[:16]

    def note(self, key: str, event: str) -> None:
        self.events.setdefault(key, []).append(f"{event}@{self.step}")

    # -- wrapping ---------------------------------------------------------------------------
    def wrap(self, store: Store) -> Store:
        """Patch every method of :data:`STORE_METHODS` on ``store`` (the instance only)."""
        for name in STORE_METHODS:
            real = getattr(store, name)

            def wrapper(*args: Any, _name: str = name, _real: Callable[..., Any] = real, **kwargs: Any) -> Any:
                return self._call(store, _name, _real, args, kwargs)

            setattr(store, name, functools.update_wrapper(wrapper, real))
        return store

    def _call(self, store: Store, name: str, real: Callable[..., Any], args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        from tests.sim.scheduler import current_actor

        actor = current_actor()
        depth = getattr(self._tls, "depth", 0)
        if actor is None or depth:
            if actor is None and self.scheduler is not None and self.scheduler.running:
                self.foreign.append(f"{threading.current_thread().name}: {name}{args[:1]}")
            return real(*args, **kwargs)
        if actor.crashed:  # a dead process makes no more calls, even from `finally` blocks
            raise SimulatedCrash(f"{actor.name} is dead")
        assert self.scheduler is not None
        if name == "delete":
            args = (list(args[0]),)
        actor.upcoming = (name, args)
        self.scheduler.point(actor)
        if self.active and self.faults.pause and self.scheduler.others_live(actor) and self.rng.random() < (
                self.faults.pause * _pause_weight(name, args)):
            self._pause(actor, name, args)
        if self.active and self.rng.random() < self.faults.latency:
            self.fired["latency"] += 1
            self.scheduler.point(actor)
        self.step += 1
        fault = self._decide(actor, name, args) if self.active else None
        outcome = "?"
        self._tls.depth = 1
        try:
            result = self._run(store, actor, name, real, args, kwargs, fault)
            outcome = _summary(result)
            return result
        except BaseException as exc:
            outcome = type(exc).__name__
            raise
        finally:
            self._tls.depth = 0
            extra, self._tls.extra = getattr(self._tls, "extra", ""), ""
            self.trace.append(f"{self.step} {actor.name} {name} {_args(args)} {fault or '-'}{extra} -> {outcome}")

    def _pause(self, actor: Actor, name: str, args: tuple[Any, ...]) -> None:
        """Stop ``actor`` before its call: the world clock jumps, the others run (see Faults)."""
        assert self.scheduler is not None
        jump = min(self.rng.randint(*PAUSE_JUMP_NS[self.rng.random() < 0.2]), PAUSE_BUDGET_NS - self.offset_ns)
        self.offset_ns += jump
        self.fired["pause"] += 1
        kind = self.rng.randrange(3)  # short, long, or until the others stop
        until = self.scheduler.switches + self.rng.randint(*((3, 30), (30, 300))[kind]) if kind < 2 else None
        self.trace.append(f"{self.step} {actor.name} pause before {name} {_args(args[:1])} "
                          f"+{jump / HOUR_NS:.1f}h until {until or 'the others stop'}")
        self.scheduler.pause(actor, until)
        self.scheduler.point(actor)

    def _decide(self, actor: Actor, name: str, args: tuple[Any, ...]) -> str | None:
        if self.script is not None:
            forced = self.script(self, actor, name, args)
            if forced is not None:
                return None if forced == "ok" else forced
        f, r = self.faults, self.rng
        if r.random() < f.crash:
            return r.choice(("crash-before", "crash-after"))
        if r.random() < f.error:
            return "error"
        if r.random() < f.lost:
            return "lost"
        if name in ("write", "create") and self.backend == "local" and r.random() < f.torn:
            return "torn"
        return None

    def _run(self, store: Store, actor: Actor, name: str, real: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any], fault: str | None) -> Any:
        if fault:
            self.fired[fault] += 1
        if fault == "crash-before":
            actor.crashed = True
            raise SimulatedCrash(f"{actor.name} crashed before {name}")
        if fault == "error":
            raise self.rng.choice((StorageError("simulated 503 SlowDown"), OSError(errno.EIO, "simulated 500"),
                                   TimeoutError("simulated timeout")))
        if fault == "torn":
            self._torn(store, args[0], args[1])
            if self.rng.random() < 0.5:
                actor.crashed = True
                raise SimulatedCrash(f"{actor.name} died while writing {args[0]}")
            raise OSError(errno.ENOSPC, "simulated: no space left on device")
        if fault == "crash-after" and name == "delete" and len(args[0]) > 1 and self.backend != "s3":
            # A local remove loop killed half-way (memory:// removes in reverse order).
            cut = self.rng.randrange(1, len(args[0]))
            self._delete(store, real, args[0][:cut] if self.backend == "local" else args[0][-cut:], actor)
            actor.crashed = True
            raise SimulatedCrash(f"{actor.name} crashed while deleting")
        result: Any = self._delete(store, real, args[0], actor) if name == "delete" else real(*args, **kwargs)
        if name in ("write", "create", "copy"):
            key = args[1] if name == "copy" else args[0]
            if name != "create" or result:
                self._written(store, key)
                if name != "copy" and "/cohortDate=" in key:
                    self.blobs[key] = args[1]
        elif name == "listdir":
            result = self._visible(args[0], [f"{args[0]}/{n}" for n in result], ".", strip=True)
        elif name == "listdir_times":
            shown = set(self._visible(args[0], [f"{args[0]}/{n}" for n in result], ".", strip=True))
            result = {n: self.mtimes.get(f"{args[0]}/{n}", t) for n, t in result.items() if n in shown}
        elif name == "find_times":
            shown = set(self._visible(args[0], list(result), "", strip=False))
            result = {k: self.mtimes.get(k, BASE_NS / 1e9) for k in result if k in shown}
        elif name == "store_now":
            result = self.store_clock()
        elif name == "find":
            suffix = args[1] if len(args) > 1 else kwargs.get("suffix", "")
            result = self._visible(args[0], result, suffix, strip=False)
        if fault == "crash-after":
            actor.crashed = True
            raise SimulatedCrash(f"{actor.name} crashed after {name}")
        if fault == "lost":
            raise TimeoutError(f"simulated: the answer to {name} was lost")
        return result

    # -- faults that need the real store ---------------------------------------------------
    def _raw_exists(self, store: Store, key: str) -> bool:
        return bool(store.fs.exists(store.abs(key)))

    def _torn(self, store: Store, key: str, data: bytes) -> None:
        path = f"{store.abs(key)}.{self.uuid_rng.getrandbits(128):032x}.tmp"  # Store's own temp name
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data[: self.rng.randrange(len(data))] if data else b"")
        self.note(key, "torn")

    def _delete(self, store: Store, real: Callable[..., Any], keys: list[str], actor: Actor) -> list[str]:
        # An operator's out-of-band delete (the console, a lifecycle rule) does happen.
        mode = self.faults.delete_mode if self.active and not actor.name.startswith("operator") else "none"
        skipped: list[str] = []
        if mode == "denied":
            skipped = list(keys)
        elif mode == "first_key":
            skipped = keys[:1]
        elif mode == "per_key":
            skipped = [k for k in keys if self.rng.random() < self.faults.delete_rate]
        elif mode == "stop" and keys and self.rng.random() < self.faults.delete_rate:
            skipped = keys[self.rng.randrange(len(keys)):]
        if skipped:
            self.fired[f"delete-{mode}"] += 1
            self._tls.extra = f" delete-{mode}:{len(skipped)}"
        todo = [k for k in keys if k not in skipped]
        failed: list[str] = real(todo) if todo else []
        result = [] if skipped else failed  # injected failures are silent, like the real ones
        for key in keys:
            if key in skipped:
                self.note(key, f"delete:{mode}")
            elif key in failed or (self.backend != "s3" and self._raw_exists(store, key)):
                if key not in failed:
                    self.fired["delete-native-stop"] += 1
                    self.note(key, "delete:native-stop")
            elif key not in self.gone:
                self.gone.add(key)
                self.note(key, "deleted")
                if self.born.pop(key, -1) <= self.step and self.active and self.faults.list_lag:
                    self.ghost[key] = self.step + self.rng.randint(0, self.faults.list_lag)
        return result

    def _written(self, store: Store, key: str) -> None:
        self.mtimes[key] = self.store_clock()
        self.gone.discard(key)
        self.ghost.pop(key, None)
        if key not in self.events or not any(e.startswith("written") for e in self.events[key]):
            self.note(key, "written")
        lag = self.faults.list_lag if self.active else 0
        if lag and key not in self.seen:
            self.seen.add(key)
            self.born[key] = self.step + self.rng.randint(0, lag)

    def _visible(self, rel_dir: str, keys: list[str], suffix: str, *, strip: bool) -> list[str]:
        """LIST lags: hide keys not yet born, show deleted keys that still linger (per key)."""
        self.seen.update(keys)
        out = {k for k in keys if self.born.get(k, -1) <= self.step}
        if len(out) < len(keys):
            self.fired["list-lag-hidden"] += len(keys) - len(out)
        for key, until in self.ghost.items():
            parent = key.rsplit("/", 1)[0]
            inside = parent == rel_dir if strip else key.startswith(rel_dir + "/") and key.endswith(suffix)
            if until >= self.step and inside and key not in out:
                out.add(key)
                self.fired["list-ghost"] += 1
                self.note(key, "list:ghost")
        return sorted(k.rsplit("/", 1)[1] for k in out) if strip else sorted(out)

    def settle(self) -> None:
        """Stop faults and make every LIST consistent (before the final check)."""
        self.active = False
        self.born.clear()
        self.ghost.clear()


def _pause_weight(name: str, args: tuple[Any, ...]) -> int:
    """How much likelier a pause is before this call: a commit's log ``create`` (its objects are
    written, its version not taken) and the writes of a long job (a spilled consolidation's bucket
    deltas, a compaction's outputs: what a sweep by age would take from under it)."""
    if name == "create" and "/_log/" in args[0]:
        return 8
    if name == "write" and ("/_data/" in args[0] or "/c-" in args[0]):
        return 4
    return 1


def _args(args: tuple[Any, ...]) -> str:
    parts = [a if isinstance(a, str) else f"[{','.join(map(str, a))}]" if isinstance(a, list | tuple)
             else "<bytes>" if isinstance(a, bytes) else type(a).__name__ for a in args]
    return " ".join(parts)


def _summary(result: Any) -> str:
    """A call's result for the trace. Byte counts are left out: Polars may order the rows of a
    group-by differently from run to run, which changes Parquet bytes but no value."""
    if isinstance(result, bytes):
        return "<bytes>"
    if isinstance(result, dict):
        return f"{{{','.join(f'{k}:{v is not None}' for k, v in result.items())}}}"
    if isinstance(result, list | tuple):
        return f"[{','.join(map(str, result))}]"
    return str(result)
