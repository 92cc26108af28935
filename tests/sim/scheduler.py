"""Deterministic interleaving of actors at Store-call granularity.

Each actor runs in its own thread, but only the holder of the baton makes progress: at every
storage call (:meth:`Scheduler.point`) the actor hands the baton back, and the scheduler picks the
next actor with its seeded RNG (uniformly, or PCT-style by random
priorities, or by a scenario's policy, which sees the call each waiting actor is about to make). Which actors are
waiting is then the same on every run, so the whole interleaving replays from the seed.

The pick runs on the thread that gives the baton back (which holds it, so no other thread
runs), and wakes only the chosen actor's thread, through that actor's own semaphore: a step costs
at most one thread switch, none when the same actor goes on. The main thread only starts the
run and watches for a hang.

A *paused* actor (:meth:`Scheduler.pause`, the ``pause`` fault) is not picked until its pause
ends: after a number of switches, or, for an open-ended pause, once no other actor is waiting
(every other one is done or paused too). When only paused actors wait, the one paused first wakes
(alone): so the pause that just began always lets the others run, and an actor paused long ago
does not hold back everyone that paused after it.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

_local = threading.local()
Policy = Callable[[list["Actor"]], "Actor | None"]  # forces the next actor; None lets the RNG pick


class SimulationHang(RuntimeError):
    """An actor ran for too long without reaching a storage call (a deadlock or a busy loop)."""


@dataclass(eq=False)
class Actor:
    """One simulated process: a name, a body run on its own thread, a clock skew."""

    index: int
    name: str
    body: Callable[[Actor], None]
    skew_ns: int = 0
    upcoming: tuple[str, tuple[object, ...]] = ("start", ())  # the storage call it waits to make
    crashed: bool = False
    done: bool = False
    resume_at: float = 0  # a paused actor is not picked before this many switches
    paused_at: int = 0
    notes: list[str] = field(default_factory=list)
    baton: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(0), repr=False)


def current_actor() -> Actor | None:
    """The actor whose thread is calling (None on the main thread and foreign threads)."""
    actor: Actor | None = getattr(_local, "actor", None)
    return actor


class Scheduler:
    """Hands the baton to one actor at a time; see the module docstring."""

    def __init__(self, rng: random.Random, *, policy: Policy | None = None, timeout_s: float = 120.0) -> None:
        self.rng = rng
        self.policy = policy
        # Half the seeds use PCT-style priorities: the highest-priority actor runs until one of a few
        # random change points demotes it, which reaches "one actor far ahead" interleavings more often.
        self.priorities: dict[int, float] | None = {} if rng.random() < 0.5 else None
        self.change_points = {rng.randrange(1, 300) for _ in range(rng.randint(1, 6))}
        self.timeout_s = timeout_s
        self.running = False
        self.switches = 0
        self._lock = threading.Lock()
        self._holder: Actor | None = None
        self._ready: list[Actor] = []
        self._actors: list[Actor] = []
        self._started = False
        self._all_ready = threading.Event()
        self._finished = threading.Event()
        self._error: str | None = None
        self._progress = time.monotonic()

    def point(self, actor: Actor) -> None:
        """Give the baton back and wait until the scheduler hands it to ``actor`` again."""
        with self._lock:
            self._ready.append(actor)
            if self._started:
                self._dispatch()
            elif len(self._ready) == len(self._actors):
                self._all_ready.set()
        actor.baton.acquire()

    def pause(self, actor: Actor, until: int | None) -> None:
        """Do not pick ``actor`` before switch ``until`` (None: until no other actor can run)."""
        actor.resume_at = float("inf") if until is None else until
        actor.paused_at = self.switches

    def others_live(self, actor: Actor) -> bool:
        """Whether an actor other than ``actor`` is not done yet (a pause lets it run)."""
        return any(not a.done and a is not actor for a in self._actors)

    def _dispatch(self) -> None:
        """Hand the baton to the next actor (the caller holds ``_lock`` and gave the baton back)."""
        self._holder = None
        if all(a.done for a in self._actors):
            self._finished.set()
            return
        if not self._ready:
            self._error = "live actors but none waiting for the baton"
            self._finished.set()
            return
        chosen = self._pick()
        self._holder = chosen
        self.switches += 1
        self._progress = time.monotonic()
        chosen.baton.release()

    def _thread(self, actor: Actor) -> None:
        _local.actor = actor
        try:
            self.point(actor)
            actor.body(actor)
        except BaseException as exc:  # bodies catch their own; this is a simulator bug
            actor.notes.append(f"actor body escaped {type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                actor.done = True
                self._dispatch()

    def _pick(self) -> Actor:
        ready = sorted(self._ready, key=lambda a: a.index)
        awake = [a for a in ready if a.resume_at <= self.switches]
        if not awake:  # only paused actors wait: the oldest pause ends now
            first = min(ready, key=lambda a: a.paused_at)
            first.resume_at = 0
            awake = [first]
        ready = awake
        chosen = self.policy(ready) if self.policy is not None else None
        if chosen is None and self.priorities is not None:
            for a in ready:
                self.priorities.setdefault(a.index, self.rng.random())
            chosen = max(ready, key=lambda a: self.priorities[a.index])  # type: ignore[index]
            if self.switches in self.change_points:
                self.priorities[chosen.index] = -self.switches
        if chosen is None:
            chosen = ready[self.rng.randrange(len(ready))]
        self._ready.remove(chosen)
        return chosen

    def run(self, actors: list[Actor]) -> None:
        """Run every actor to completion, one storage step at a time."""
        if not actors:
            return
        self._actors = list(actors)
        threads = [threading.Thread(target=self._thread, args=(a,), name=f"sim-{a.name}", daemon=True) for a in actors]
        self.running = True
        try:
            for t in threads:
                t.start()
            if not self._all_ready.wait(self.timeout_s):
                raise SimulationHang("actors did not start")
            with self._lock:
                self._started = True
                self._dispatch()
            while not self._finished.wait(1.0):
                if time.monotonic() - self._progress > self.timeout_s:
                    raise SimulationHang(f"{self._holder.name if self._holder else '?'} never yielded")
            if self._error:
                raise SimulationHang(self._error)
        finally:
            self.running = False
        for t in threads:
            t.join(self.timeout_s)
