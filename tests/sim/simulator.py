"""A deterministic simulation of writers, consolidators and maintenance jobs under storage faults.

``run_seed(seed)`` derives everything from the seed: the actors and what they do, the faults
(``profile`` picks one fault class, ``"swarm"`` a random mix, ``"none"`` interleavings only,
``"gc"`` pauses against compacting maintenance jobs) and the interleaving. Every actor has its own
``ec.connect`` to one root; they run one storage call at a time (:mod:`tests.sim.scheduler`) on a
simulated clock (:mod:`tests.sim.runtime`) through a fault-injecting store
(:mod:`tests.sim.faultstore`). Then faults stop, a clean connection checks, and every record is
checked against a model of the acknowledged writes.

Fault model (see :class:`~tests.sim.faultstore.Faults`):

* storage faults: latency (a reschedule), 503/500/timeouts, lost answers, silent delete failures
  (S3 per-key errors, denied deletes, a remove stopped half-way), torn local writes, LIST lag,
  crashes before or after a call;
* clocks: each actor's clock is off by up to 20 minutes or, in some seeds, by days (1.5 days
  either way);
* ``pause``: a process stops at a storage call (most often at a commit's log ``create``, after it
  wrote its deltas, compaction output or retention base) while the world clock, every machine's
  and the store's, jumps 1.25 to 36 hours (at most 3 days a run) and the others run on. Every age by
  every clock then exceeds every grace the library ever had (15 minutes, 1 hour). Knobs of the
  seed (:class:`Knobs`) make consolidation spill (``budget_rows`` 1 or 3: a delta per bucket is
  written before the log entry) or write every frame as an object before the log entry
  (``inline_rows`` 0), so there is something for a sweep to take;
* concurrent metadata changes: ``schema`` actors add attributes and manage a second numeric field
  (``points``: ``add_attribute`` then ``use_plugin``, then writes to it) on their own connection
  while the others write and use_plugin theirs; an actor whose schema went stale connects again;
* ``operator``: an actor deletes one object the committed manifest names, out of band.

What the checker expects, on a clean connection after the faults stop:

* every acknowledged catalog change (attribute, plugin) is in the catalog a fresh ``ec.connect``
  sees, which opens without error;
* two consolidations leave nothing pending, for every managed field;
* ``Resource.verify()`` reports exactly the objects the operator removed that the state still
  names, nothing else (no sweep removed a named object);
* after such a removal every history reader (``recalculate``, ``TransactionDataset.query``
  with the archive; ``compact`` and ``gc`` when they merge or move that object's partition)
  raises :class:`ecanalytics.MissingObjectError` and commits nothing (a compaction or retention
  of other partitions may commit, leaving the missing object named);
* every value: each transaction adds a distinct power of eight to its record and field (a ``sub``
  subtracts its negative), so the base-8 digits of a final value count how often each was
  applied (up to 7 times): 1 for an acknowledged write (also of the second field), 0 or 1 for one
  whose call raised, never 2. Values are compared after the readers ran, so a reader that
  committed without the missing object shows as a lost transaction. ``source`` carries the
  transaction's number, so a failure can be traced to the objects and faults involved.

``inject`` (:mod:`tests.sim.inject`) puts an old bug back into the library for one run, to show
the simulator finds it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import io
import logging
import random
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import polars as pl

import ecanalytics as ec
from ecanalytics.ledger import log as log_module
from ecanalytics.storage import paths as P
from tests.sim.faultstore import DELETE_MODES, Faults, Script, SimulatedCrash, World
from tests.sim.inject import injected
from tests.sim.runtime import simulated_runtime
from tests.sim.scheduler import Actor, Policy, Scheduler, SimulationHang

RESOURCE, FIELD, FIELD2 = "wallets", "balance", "points"
DATASET = P.transactions_dataset(RESOURCE, FIELD)
ATTRIBUTES = ("tier", "region", "note")  # what schema actors add (string|default:...)
SCHEMA = {"id": "string|required", "balance": "number|default:0"}
RECORDS = ("a", "b", "c")
BASE, BITS = 8, 17  # 17 base-8 digits (51 bits) stay exact in a float64
TYPED = (ec.EcError, OSError, TimeoutError)
PLUGIN: dict[str, Any] = {"auto_consolidate": False, "flush_interval": 3600.0, "consolidation_interval": 3600.0}
FOCUSED = ("latency", "error", "lost", "per_key", "first_key", "denied", "stop", "torn", "list_lag", "skew", "crash",
           "pause", "operator")
# ``gc``: fenced garbage collection under pauses: a plan of few writers, consolidators and two
# maintenance actors that compact, every seed with pauses (half with days of skew, half with
# storage errors), most with every frame written as an object before its log entry.
PROFILES = ("swarm", "none", *FOCUSED, "gc")
BUGS = {
    "bug1-s3-per-key-delete": ("delete:per_key", "delete:first_key"),
    "bug2-denied-delete": ("delete:denied",),
    "bug3-partial-delete": ("delete:stop",),
    "bug3-partial-delete-native-stop": ("delete:native-stop",),  # a real remove stopped at a missing key
    "list-lag-ghost-marker": ("list:ghost",),
}


# -- what a seed does --------------------------------------------------------------------------
@dataclass
class Tx:
    """One logical transaction: ``amount`` is 8**bit, unique within its record."""

    n: int
    record: str
    bit: int
    op: str
    days_back: int | None
    key: str | None = None
    attempts: int = 1
    status: str = "unsent"  # unsent | acked | maybe
    field: str = FIELD

    @property
    def amount(self) -> int:
        return int(BASE**self.bit)

    def settle(self, ok: bool) -> None:
        if ok:
            self.status = "acked"
        elif self.status != "acked":
            self.status = "maybe"


@dataclass
class ActorSpec:
    kind: str  # async | batch | sync | keyed | consolidator | maintenance | schema | operator
    ops: list[Any] = field(default_factory=list)
    batch_size: int = 100


@dataclass(frozen=True)
class Knobs:
    """Library settings a seed turns: ``budget_rows`` of every consolidator (small: consolidation
    spills and writes one delta per bucket before its log entry) and ``inline_rows`` (0: every
    delta, marks and ids frame is an object of its own, written before the log entry, instead of
    travelling inside it)."""

    budget_rows: int | None = None
    inline_rows: int | None = None

    def describe(self) -> str:
        return " ".join(f"{k}={v}" for k, v in vars(self).items() if v is not None)


def make_knobs(seed: int, profile: str = "swarm") -> Knobs:
    rng = random.Random(f"knobs-{seed}")
    if profile == "gc":
        return Knobs(rng.choice((None, 1, 3)), rng.choice((None, 0, 0)))
    return Knobs(rng.choice((None, None, 1, 3)), rng.choice((None, None, 0)))


def make_faults(profile: str, seed: int, backend: str) -> Faults:
    """The faults of a seed: one class (``profile``), a random mix (``swarm``) or none."""
    rng = random.Random(f"profile-{seed}")
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; use one of {PROFILES}")
    pick: Callable[[str], bool] = (lambda c: rng.random() < 0.35) if profile == "swarm" else profile.__eq__
    if profile == "gc":  # pauses; half the seeds with skew, half with storage errors (a job dies half-way)
        pick = {"pause", *(["skew"] if rng.random() < 0.5 else []), *(["error"] if rng.random() < 0.5 else [])}.__contains__
    delete_mode = "none"
    if profile == "swarm":
        delete_mode = rng.choice(("none", "none", *DELETE_MODES[1:]))
    elif profile in DELETE_MODES:
        delete_mode = profile
    return Faults(
        latency=rng.uniform(0.2, 0.5) if pick("latency") else 0.0,
        error=rng.uniform(0.02, 0.1) if pick("error") else 0.0,
        lost=rng.uniform(0.02, 0.08) if pick("lost") else 0.0,
        delete_mode=delete_mode,
        delete_rate=rng.uniform(0.2, 0.8),
        torn=rng.uniform(0.02, 0.1) if pick("torn") and backend == "local" else 0.0,
        list_lag=rng.randint(1, 20) if pick("list_lag") else 0,
        skew_s=rng.choice((1200.0, 1.5 * 86400)) if pick("skew") else 0.0,
        crash=rng.uniform(0.005, 0.03) if pick("crash") else 0.0,
        pause=rng.uniform(0.01, 0.05) * (2 if profile == "gc" else 1) if pick("pause") else 0.0,
        operator=(rng.random() < 0.5 and pick("operator")) if profile == "swarm" else pick("operator"),
    )


def make_plan(seed: int, profile: str = "swarm") -> tuple[int, list[ActorSpec]]:
    """(checkpoint interval, actor specs) of a seed (the ``gc`` profile draws its own kind of plan)."""
    rng = random.Random(f"plan-{seed}")
    gc = profile == "gc"
    used: dict[tuple[str, str], int] = {}
    count = 0

    def tx(keyed: bool, fld: str = FIELD) -> Tx:
        nonlocal count
        record = rng.choice([r for r in RECORDS if used.get((fld, r), 0) < BITS])
        used[fld, record] = used.get((fld, record), 0) + 1
        count += 1
        return Tx(count, record, used[fld, record] - 1, rng.choice(("add", "add", "sub")),
                  rng.choice((None, None, None, 0, 1, 2, 35)), f"key-{count}" if keyed else None,
                  rng.choice((1, 1, 2, 3)) if keyed else 1, field=fld)

    specs = []
    for _ in range(rng.randint(1, 2 if gc else 3)):
        kind = rng.choice(("async", "batch", "sync", "keyed"))
        spec = ActorSpec(kind, batch_size=rng.choice((2, 3, 100)))
        for _ in range(rng.randint(2, 7)):
            spec.ops.append(tx(kind == "keyed"))
            if kind == "batch" and rng.random() < 0.3:
                spec.ops.append("flush")
        if kind == "batch":
            spec.ops.append("flush")
        specs.append(spec)
    specs += [ActorSpec("consolidator", ["consolidate"] * rng.randint(1, 4))
              for _ in range(rng.choice((1, 1, 2) if gc else (0, 1, 1, 2, 2, 3)))]
    jobs = ("compact", "compact", "compact", "compact", "gc", "recalc") if gc else (
        "gc", "gc-delete", "compact", "compact", "recalc")
    if gc or rng.random() < 0.45:  # sometimes two at once: compactions race, one cleans up after the other
        for _ in range(2 if gc or rng.random() < 0.4 else 1):
            # Looking at the state first (a storage call each) lets the others write and commit, so
            # that compaction finds applied objects to merge.
            first = ["look"] * rng.randint(0, 8 if gc else 20) + (["consolidate"] if rng.random() < 0.5 and not gc else [])
            picked = [rng.choice(jobs) for _ in range(rng.randint(2, 5) if gc else rng.randint(1, 3))]
            specs.append(ActorSpec("maintenance", first + [x for job in picked for x in (
                ["consolidate", job] if job == "compact" and rng.random() < (0.3 if gc else 0.6) else [job])]))
    if not gc and rng.random() < 0.3:  # concurrent metadata changes: attributes, a plugin for a second field
        attrs = rng.sample(ATTRIBUTES, rng.randint(1, 2))
        ops: list[Any] = [f"attr:{a}" for a in attrs] + ["plugin2"]
        rng.shuffle(ops)
        ops += [tx(False, FIELD2) for _ in range(rng.randint(1, 4))] + ["consolidate"] * rng.randint(0, 2)
        specs.append(ActorSpec("schema", ops))
        if rng.random() < 0.3:
            specs.append(ActorSpec("schema", [f"attr:{a}" for a in ATTRIBUTES if a not in attrs][:1]))
    return rng.choice((2, 3, 5, 10)), specs


def operator_spec(seed: int) -> ActorSpec:
    """The ``operator`` fault's actor: looks at the state a few times, then deletes one object
    the manifest names (its choice is seeded too)."""
    rng = random.Random(f"operator-{seed}")
    return ActorSpec("operator", ["look"] * rng.randint(1, 12) + [f"remove:{rng.random()}"])


# -- one run -----------------------------------------------------------------------------------
@dataclass
class SimResult:
    """The outcome of one seed; ``replay`` is the command that reruns it exactly."""

    seed: int
    backend: str
    profile: str
    problems: list[str]
    tags: set[str]
    fired: dict[str, int]
    digest: str
    steps: int
    faults: str
    trace: list[str] = field(default_factory=list)
    scenario: str | None = None
    inject: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def replay(self) -> str:
        what = f"--scenario {self.scenario}" if self.scenario else f"--seed {self.seed} --profile {self.profile}"
        return f"python -m tests.sim {what} --backend {self.backend}" + (f" --inject {self.inject}" if self.inject else "")

    def summary(self) -> str:
        what = f"scenario {self.scenario}" if self.scenario else f"seed {self.seed}"
        head = f"{what} [{self.backend}/{self.profile}{'/inject=' + self.inject if self.inject else ''}] " \
               f"{'ok' if self.ok else 'FAILED'}"
        body = "".join(f"\n  - {p}" for p in self.problems[:8])
        tags = f"\n  tags: {sorted(self.tags)}" if self.tags else ""
        return f"{head} steps={self.steps} digest={self.digest} faults: {self.faults or 'none'}{body}{tags}" + (
            f"\n  replay: {self.replay}" if not self.ok else "")


@dataclass
class Run:
    """Everything one seed's actors share."""

    uri: str
    endpoint: str | None
    checkpoint_interval: int
    world: World
    knobs: Knobs = field(default_factory=Knobs)
    problems: list[str] = field(default_factory=list)
    dbs: list[ec.Database] = field(default_factory=list)
    txs: list[Tx] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # objects the operator deleted (or tried to)
    catalog: list[tuple[str, str]] = field(default_factory=list)  # acknowledged catalog changes
    errors: dict[int, BaseException] = field(default_factory=dict)  # each actor's last typed error

    def connect(self) -> ec.Database:
        db = ec.connect(self.uri, endpoint_url=self.endpoint, checkpoint_interval=self.checkpoint_interval)
        self.dbs.append(db)
        self.tune(db)
        return db

    def tune(self, db: ec.Database) -> None:
        """Apply the seed's knobs to every consolidator of ``db``."""
        if self.knobs.budget_rows is not None:
            for res in map(db.resource, db.resource_names()):
                for plugin in res.plugins.values():
                    plugin.consolidator.budget_rows = self.knobs.budget_rows

    def attempt(self, actor: Actor, what: str, fn: Callable[[], object]) -> bool:
        """Run one library call; True if it returned. Typed errors are expected, others are bugs."""
        self.errors.pop(actor.index, None)
        try:
            fn()
            return True
        except SimulatedCrash:
            raise
        except TYPED as exc:
            actor.notes.append(f"{what}: {type(exc).__name__}")
            self.errors[actor.index] = exc
        except Exception as exc:
            self.problems.append(f"untyped error from {actor.name} {what}: {type(exc).__name__}: {exc} "
                                 f"{traceback.format_exc(limit=-3)!r}")
        return False


def _send(res: ec.Resource, tx: Tx, world: World) -> object:
    """One write call: ``add(record, field, 8**bit)`` or ``sub(record, field, -8**bit)``, dated ``days_back``."""
    ts = None if tx.days_back is None else (
        dt.datetime.fromtimestamp(world.now_ns() / 1e9, dt.UTC) - dt.timedelta(days=tx.days_back))
    amount = tx.amount if tx.op == "add" else -tx.amount
    return getattr(res, tx.op)(tx.record, tx.field, amount, id=tx.key, timestamp=ts, source=f"t{tx.n}")


def _flushed(res: ec.Resource) -> bool:
    """Whether the writer holds nothing unwritten: its buffer and the objects of a failed flush
    (whose retry is pending) are empty. Asked of the plugin, not guessed from counts."""
    plugin = res.plugin(FIELD)
    return not plugin._buffer and not plugin._unsure


def _acknowledge(txs: list[Tx]) -> list[Tx]:
    for tx in txs:
        tx.settle(True)
    return []


def _plugin(fld: str, **options: Any) -> ec.EventualConsistencyPlugin:
    return ec.EventualConsistencyPlugin(resource=RESOURCE, field=fld, **PLUGIN, **options)


def _resource(db: ec.Database) -> ec.Resource:
    res = db.resources[RESOURCE]
    assert isinstance(res, ec.Resource)
    return res


def _body(run: Run, spec: ActorSpec) -> Callable[[Actor], None]:
    """The code an actor runs: open a connection, then the spec's operations."""

    def body(actor: Actor) -> None:
        sent: list[Tx] = []  # in flight or buffered, not acknowledged yet
        try:
            db = run.connect()
            options: dict[str, Any] = {"mode": "sync"} if spec.kind == "sync" else {
                "batch_transactions": True, "batch_size": spec.batch_size} if spec.kind == "batch" else {}
            if spec.kind not in ("schema", "operator"):
                if not any(run.attempt(actor, "use_plugin", lambda: db.use_plugin(_plugin(FIELD, **options)))
                           for _ in range(3)):
                    return  # never configured as planned: writing anyway would not be the planned kind
                run.tune(db)
            res = _resource(db)
            second = False  # this schema actor manages FIELD2

            def retry_stale(what: str, fn: Callable[[ec.Resource], object]) -> None:
                """Run ``fn``; after a StaleSchemaError (another process added an attribute), connect
                again, as a restarted process would, and run it once more."""
                nonlocal db, res
                if run.attempt(actor, what, lambda: fn(res)):
                    return
                if isinstance(run.errors.get(actor.index), ec.StaleSchemaError):
                    abandon(db)
                    db = run.connect()
                    res = _resource(db)
                    run.attempt(actor, f"{what} (connected again)", lambda: fn(res))

            for op in spec.ops:
                if isinstance(op, Tx):
                    if op.field != FIELD and not second:
                        continue  # its plugin was never acknowledged: not sent
                    run.txs.append(op)
                    sent.append(op)
                    for _ in range(op.attempts):
                        ok = run.attempt(actor, f"{op.op} t{op.n}", functools.partial(_send, res, op, run.world))
                        if spec.kind != "batch":
                            op.settle(ok)
                        elif ok and _flushed(res):  # this write flushed everything it held
                            sent = _acknowledge(sent)
                    if spec.kind != "batch":
                        sent.remove(op)
                elif op == "flush":
                    if run.attempt(actor, "flush", db.flush):
                        sent = _acknowledge(sent)
                elif op == "consolidate":
                    retry_stale("consolidate", lambda r: db.consolidate())
                elif op.startswith("attr:"):
                    name = op.split(":", 1)[1]
                    if run.attempt(actor, op, functools.partial(res.add_attribute, name, f"string|default:{name}-default")):
                        run.catalog.append(("attribute", name))
                elif op == "plugin2":
                    def manage(r: ec.Resource) -> None:
                        r.add_attribute(FIELD2, "number|default:0")
                        db.use_plugin(_plugin(FIELD2))
                    if run.attempt(actor, op, lambda: manage(res)):
                        run.tune(db)
                        run.catalog += [("attribute", FIELD2), ("plugin", FIELD2)]
                        second = True
                elif op == "look":  # a storage call or two, so that later work happens later
                    run.attempt(actor, op, lambda: res.ledger.state())
                elif op.startswith("remove:"):
                    def remove(r: ec.Resource, at: float) -> None:
                        keys = r.ledger.state().applied_objects(FIELD)
                        if keys:
                            key = keys[int(at * len(keys))]
                            run.removed.append(key)
                            r.ledger.store.delete([key])
                    run.attempt(actor, "remove", functools.partial(remove, res, float(op.split(":", 1)[1])))
                else:
                    jobs: dict[str, Callable[[ec.Resource], object]] = {
                        "gc": lambda r: r.gc(30, field=FIELD), "gc-delete": lambda r: r.gc(30, field=FIELD, archive=False),
                        "compact": lambda r: r.compact(FIELD), "recalc": lambda r: r.recalculate(field=FIELD)}
                    retry_stale(op, jobs[op])
        except SimulatedCrash:
            actor.notes.append("crashed")
        except TYPED as exc:
            actor.notes.append(f"gave up: {type(exc).__name__}: {exc}")
        except Exception as exc:
            run.problems.append(f"untyped error in {actor.name}: {type(exc).__name__}: {exc}")
        for t in sent:
            t.settle(False)  # buffered or in flight when the actor stopped: maybe durable

    return body


def abandon(db: ec.Database) -> None:
    """Drop a connection like a killed process would: no flush, no close, no exit hook."""
    for res in list(map(db.resource, db.resource_names())):
        for plugin in res.plugins.values():
            plugin._stop.set()
    db._closed = True
    with contextlib.suppress(AttributeError, ValueError):
        threading._threading_atexits.remove(db._atexit)  # type: ignore[attr-defined]


@contextlib.contextmanager
def _root(backend: str, seed: int, uri: str | None) -> Iterator[str]:
    if uri is not None:
        yield uri
    elif backend == "memory":
        fs, path = fsspec.filesystem("memory"), f"/sim-{seed}"
        with contextlib.suppress(FileNotFoundError):
            fs.rm(path, recursive=True)
        try:
            yield f"memory://sim-{seed}"
        finally:
            with contextlib.suppress(FileNotFoundError):
                fs.rm(path, recursive=True)
            fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not d.startswith(path)]
    elif backend == "local":
        with tempfile.TemporaryDirectory(prefix=f"ec-sim-{seed}-") as tmp:
            yield f"{tmp}/root"
    else:
        raise ValueError(f"backend {backend!r} needs uri= (and endpoint_url= for S3)")


@contextlib.contextmanager
def _knobs(knobs: Knobs) -> Iterator[None]:
    """Set the library constants of ``knobs`` for one run (``budget_rows`` is set per consolidator
    by :meth:`Run.tune`)."""
    saved = log_module.INLINE_ROWS
    if knobs.inline_rows is not None:
        log_module.INLINE_ROWS = knobs.inline_rows
    try:
        yield
    finally:
        log_module.INLINE_ROWS = saved


def run_seed(seed: int, backend: str = "memory", *, profile: str = "swarm", uri: str | None = None,
             endpoint_url: str | None = None, trace: bool = False, policy: Policy | None = None,
             script: Script | None = None, plan: tuple[int, list[ActorSpec]] | None = None,
             faults: Faults | None = None, knobs: Knobs | None = None, inject: str | None = None) -> SimResult:
    """Simulate one seed and check it; see the module docstring. ``plan``, ``faults``, ``knobs``,
    ``policy`` (which actor runs next) and ``script`` (forced fault decisions) pin a scenario.
    ``inject`` re-injects an old bug (:data:`tests.sim.inject.INJECTIONS`) for this run."""
    faults = faults or make_faults(profile, seed, backend)
    interval, specs = plan or make_plan(seed, profile)
    knobs = knobs or (make_knobs(seed, profile) if plan is None else Knobs())
    if plan is None and faults.operator:
        specs = [*specs, operator_spec(seed)]
    world = World(seed, faults, backend, script=script)
    world.scheduler = Scheduler(random.Random(f"schedule-{seed}"), policy=policy)
    skews = random.Random(f"skew-{seed}")
    with _root(backend, seed, uri) as root, simulated_runtime(world), _knobs(knobs), injected(inject):
        run = Run(root, endpoint_url, interval, world, knobs)
        setup = run.connect()
        setup.use_plugin(_plugin(FIELD))
        setup.create_resource(RESOURCE, SCHEMA)
        actors = [Actor(i, f"{s.kind}{i}", _body(run, s), int(skews.uniform(-1, 1) * faults.skew_s * 1e9))
                  for i, s in enumerate(specs)]
        try:
            world.scheduler.run(actors)
        except SimulationHang as exc:
            run.problems.append(f"hang: {exc}")
        run.problems += [f"{a.name}: {n}" for a in actors for n in a.notes if n.startswith("actor body escaped")]
        run.problems += [f"storage call from a non-actor thread: {c}" for c in world.foreign[:3]]
        tags = check(run) if not any(p.startswith("hang") for p in run.problems) else {"hang"}
        for db in run.dbs:
            abandon(db)
    described = " ".join(x for x in (faults.describe(), knobs.describe()) if x)
    return SimResult(seed, backend, profile, run.problems, tags, dict(world.fired), world.digest(), world.step,
                     described, world.trace if trace else [], inject=inject)


def run_job(job: tuple[int, str, str, str | None]) -> SimResult:
    """``run_seed(seed, backend, profile=, inject=)`` in a worker process (``--jobs``)."""
    logging.disable(logging.WARNING)  # the library logs the faults we inject
    seed, backend, profile, inject = job
    return run_seed(seed, backend, profile=profile, inject=inject)


# -- checking ----------------------------------------------------------------------------------
def digits(value: float) -> list[int]:
    """Base-8 digits of a non-negative integral value, least significant first."""
    n, out = int(value), []
    while n:
        n, d = divmod(n, BASE)
        out.append(d)
    return out


def check(run: Run) -> set[str]:
    """Stop faults, then on a clean connection: check the catalog, consolidate twice, check the
    stored objects (``verify``) and, after an operator's delete, that every history reader raises
    :class:`ecanalytics.MissingObjectError` and commits nothing; compare every value with the
    model; tag failures."""
    run.world.settle()
    tags: set[str] = set()
    try:
        db = run.connect()
        res = db.resources[RESOURCE]
        assert isinstance(res, ec.Resource)
    except Exception as exc:
        run.problems.append(f"a fresh connect failed: {type(exc).__name__}: {exc}")
        return {"connect-failed"}
    for kind, name in run.catalog:  # every acknowledged catalog change is in the catalog
        if name not in (res.schema.attributes if kind == "attribute" else res.plugins):
            run.problems.append(f"the acknowledged {kind} {name!r} is not in the catalog a fresh connect sees "
                                f"(attributes {sorted(res.schema.attributes)}, plugins {sorted(res.plugins)})")
            tags.add("catalog-change-lost")
    fields = sorted({t.field for t in run.txs} | {FIELD})
    try:
        db.consolidate()
        db.consolidate()
        left = {f: res.plugin(f).pending().height for f in fields if f in res.plugins}
    except Exception as exc:
        run.problems.append(f"clean consolidation failed: {type(exc).__name__}: {exc}")
        return tags | {"clean-consolidation-failed"}
    for f, n in left.items():
        if n:
            run.problems.append(f"{n} transaction(s) of {f} still pending after two clean consolidations")
    tags |= check_objects(run, db, res)
    try:
        table = res.to_polars()
    except Exception as exc:
        run.problems.append(f"reading the records failed: {type(exc).__name__}: {exc}")
        return tags | {"records-unreadable"}
    doubled: list[Tx | None] = []
    lost: list[Tx | None] = []
    for fld in fields:
        by_bit = {(t.record, t.bit): t for t in run.txs if t.field == fld}
        column = table[fld].to_list() if fld in table.columns else [None] * table.height
        values = {i: v or 0.0 for i, v in zip(table["id"].to_list(), column, strict=True)}
        # After a delete-mode retention the base stands at its cut (30 days back) like a set: a write
        # dated before the cut and applied after that commit has no effect, by design. Those writes may
        # show 0 or 1 times, never 2. That holds after any delete-mode retention of the field, also
        # one that a later archive-mode retention followed (the write may have been applied between).
        deleted = any(e.retention is not None and e.retention.mode == "delete" and e.field == fld
                      for e in res.ledger.entries(("retention",)))
        before_cut = {id(t) for t in run.txs if deleted and t.days_back is not None and t.days_back >= 29}
        for record in sorted(set(values) | {t.record for t in run.txs if t.field == fld}):
            value = values.get(record, 0.0)
            if value < 0 or value != int(value):
                run.problems.append(f"{record}.{fld} = {value!r} is not a sum of distinct transactions")
                continue
            counts = digits(value)
            for bit in range(max(len(counts), BITS)):
                c = counts[bit] if bit < len(counts) else 0
                tx = by_bit.get((record, bit))
                maybe = tx is not None and (tx.status == "maybe" or (tx.status == "acked" and id(tx) in before_cut))
                allowed = {0, 1} if maybe else {1} if tx and tx.status == "acked" else {0}
                if c not in allowed:
                    what = f"t{tx.n} ({tx.status}, {tx.op}, key={tx.key})" if tx else f"unknown bit {bit}"
                    run.problems.append(f"{record}.{fld}: {what} applied {c} times (value {value:.0f})")
                    (doubled if c > 1 else lost).append(tx)
    if not run.problems:
        return set()
    return tags | triage(run, db, [t for t in doubled if t], [t for t in lost if t])


def check_objects(run: Run, db: ec.Database, res: ec.Resource) -> set[str]:
    """Every object the state names exists, except the operator's; with one of those missing,
    every history reader raises MissingObjectError and commits nothing."""
    store = res.ledger.store
    st = res.ledger.state()
    named = set(st.applied_objects(FIELD))
    gone = {k for k in run.removed if k in named and not store.exists(k)}
    tags: set[str] = set()
    missing = {p.key for p in res.verify()}
    expected = {store.url(k) for k in gone}
    if missing - expected:
        run.problems.append(f"objects the committed state names are missing, and no operator removed them: "
                            f"{sorted(missing - expected)[:4]}")
        tags.add("named-object-missing")
    if expected - missing:
        run.problems.append(f"verify() does not report the removed object(s) {sorted(expected - missing)}")
        tags.add("verify-missed-removed-object")
    if not gone:
        return tags
    dataset = db.resources[DATASET]
    assert isinstance(dataset, ec.TransactionDataset)
    readers: dict[str, Callable[[], object]] = {
        "recalculate": lambda: res.recalculate(field=FIELD),
        "transactions.query": lambda: dataset.query(include_archived=True),
        "compact": lambda: res.compact(FIELD), "gc": lambda: res.gc(30, field=FIELD)}
    for name, fn in readers.items():
        version = res.ledger.latest_version()
        try:
            fn()
            if name not in ("compact", "gc"):
                run.problems.append(f"{name}() returned although the applied object(s) {sorted(gone)} are missing")
                tags.add(f"reader-ignored-missing-object-{name}")
        except ec.MissingObjectError:
            pass
        except Exception as exc:
            run.problems.append(f"{name}() raised {type(exc).__name__} ({exc}), not MissingObjectError")
            tags.add(f"reader-wrong-error-{name}")
        # Compaction and retention read only the partitions they merge or move: they may commit,
        # but a missing object stays named (never merged, archived or dropped).
        after = res.ledger.state()
        if after.version != version and (name not in ("compact", "gc") or not gone <= set(after.applied_objects(FIELD))):
            run.problems.append(f"{name}() committed v{after.version} although the applied object(s) "
                                f"{sorted(gone)} are missing")
            tags.add(f"committed-with-missing-object-{name}")
    return tags


def _sources(blob: bytes) -> set[str]:
    with contextlib.suppress(Exception):
        return set(pl.read_parquet(io.BytesIO(blob))["source"].to_list())
    return set()


def triage(run: Run, db: ec.Database, doubled: list[Tx], lost: list[Tx]) -> set[str]:
    """Name the failure by the faults that touched the objects and markers involved."""
    res = db.resources[RESOURCE]
    assert isinstance(res, ec.Resource)
    applied: dict[str, list[int]] = {}  # object -> versions of the commits that applied it
    for entry in res.ledger.entries(("consolidate",)):
        # The objects a consolidation applied join the manifest in its entry (the consumed set
        # travels as its change, and also carries keys consumed before).
        for key in entry.manifest.add if entry.manifest else ():
            applied.setdefault(key, []).append(entry.version)
    world, tags = run.world, set()
    holders = {key: _sources(blob) for key, blob in world.blobs.items() if "/c-" not in key}  # not compactions

    def marker(key: str) -> str:
        day, name = key.split("cohortDate=", 1)[1].split("/", 1)
        return P.inbox_marker(DATASET, day, name.removesuffix(".parquet"))

    by_source = {f"t{t.n}": t for t in run.txs}
    for key in (k for k, versions in applied.items() if len(versions) > 1):  # an object applied twice: its marker survived
        events = " ".join(world.events.get(marker(key), []))
        tags |= {bug for bug, marks in BUGS.items() if any(m in events for m in marks)} or {
            f"double-unclassified: {events}"}
    for source, tx in by_source.items():  # applied from two objects by two commits: it was written twice
        commits = {applied[k][0] for k, s in holders.items() if source in s and k in applied}
        if len(commits) > 1 and tx.key is None:
            tags.add("bug4-flush-rewrite")
        elif len(commits) > 1 and tx in doubled:
            tags.add("keyed-retry-applied-twice")
    entries = res.ledger.entries()
    for tx in doubled:  # counted by a recalculation that took it for applied, then applied for real
        first = min((applied[k][0] for k, s in holders.items() if f"t{tx.n}" in s and k in applied), default=0)
        if any(e.kind == "recalculate" and e.version < first for e in entries):
            tags.add("double-recalculate-counted-a-pending-object" + ("-list-lag" if world.faults.list_lag else ""))
    if doubled and not tags:
        tags.add("double-unclassified")
    taken = {k: e.kind for e in entries for k in
             ((e.retention.archived if e.retention else ()) + (e.compaction.replaced if e.compaction else ()))}
    for tx in lost:
        keys = [k for k, s in holders.items() if f"t{tx.n}" in s]
        if not keys:
            tags.add("lost-never-written")
        for key in keys:
            if len(applied.get(key, [])) > 1:
                continue  # applied several times: the digits carried, the double is tagged above
            if key in applied:  # applied, then undone by a later maintenance commit
                later = sorted({e.kind for e in entries if e.version > applied[key][0]} - {"consolidate"})
                tags.add(f"lost-after-apply (later commits: {', '.join(later) or 'none'})")
            elif any(e.startswith("deleted") for e in world.events.get(marker(key), [])):
                tags.add("lost-marker-deleted-as-orphan" + ("-clock-skew" if world.faults.skew_s else ""))
            elif key in taken:  # a maintenance job took an object it wrongly thought applied
                tags.add(f"lost-pending-object-taken-by-{taken[key]}" + ("-list-lag" if world.faults.list_lag else ""))
            else:
                tags.add(f"lost-unclassified: {world.events.get(key, [])}")
    return tags or {"unclassified"}


# -- focused scenarios: each known bug as a small forced schedule -------------------------------
Until = Callable[[Actor], bool]


def sequence(*steps: tuple[str, Until | None]) -> Policy:
    """A policy that runs each named actor until ``until(actor)`` holds (None: until it is done)."""
    queue = list(steps)

    def policy(ready: list[Actor]) -> Actor | None:
        while queue:
            name, until = queue[0]
            actor = next((a for a in ready if a.name == name), None)
            if actor is not None and (until is None or not until(actor)):
                return actor
            queue.pop(0)
        return None

    return policy


def deleting_markers(actor: Actor) -> bool:
    """The actor is about to delete inbox markers."""
    name, args = actor.upcoming
    return name == "delete" and any("/_inbox/" in k for k in args[0])  # type: ignore[attr-defined]


def _txs(*spec: tuple[str, int | None]) -> list[Tx]:
    bits: dict[str, int] = {}
    out = []
    for n, (record, days) in enumerate(spec, 1):
        bits[record] = bits.get(record, -1) + 1
        out.append(Tx(n, record, bits[record], "add", days))
    return out


def scenario(name: str) -> dict[str, Any]:
    """``run_seed`` arguments that pin one known bug (see :data:`SCENARIOS`)."""
    if name in ("bug1", "bug2"):  # one connection: add, consolidate, ... with deletes that fail silently
        t = _txs(*[("a", None)] * (4 if name == "bug1" else 6))
        ops: list[Any] = [t[0], t[1], "consolidate", t[2], "consolidate", t[3], "consolidate"] if name == "bug1" else [
            x for tx in t for x in (tx, "consolidate")]
        return {"plan": (10, [ActorSpec("async", ops)]),
                "faults": Faults(delete_mode="first_key" if name == "bug1" else "denied")}
    if name == "bug3":  # two consolidators; a post-commit marker delete is killed half-way
        t = _txs(("a", None), ("a", None), ("a", None))
        specs = [ActorSpec("async", t[:2]), ActorSpec("async", t[2:]), ActorSpec("consolidator", ["consolidate"]),
                 ActorSpec("consolidator", ["consolidate", "consolidate"])]
        kill = "crash-after"  # with 2 keys, the first (local) or the last (memory://) is removed, then death

        def script(world: World, actor: Actor, call: str, args: tuple[Any, ...]) -> str | None:
            return kill if actor.name == "consolidator2" and deleting_markers(actor) else None

        policy = sequence(("async0", None), ("consolidator2", deleting_markers), ("async1", None),
                          ("consolidator3", deleting_markers), ("consolidator2", None), ("consolidator3", None))
        return {"plan": (10, specs), "faults": Faults(), "policy": policy, "script": script}
    if name == "bug4":  # a two-day flush fails on the second day; a consolidation runs before the retry
        t = _txs(("a", None), ("a", 1))
        specs = [ActorSpec("batch", [t[0], t[1], "flush", "flush"]), ActorSpec("consolidator", ["consolidate"]),
                 ActorSpec("consolidator", ["consolidate"])]
        failed: list[bool] = []
        days: list[str] = []

        def fail_second_day(world: World, actor: Actor, call: str, args: tuple[Any, ...]) -> str | None:
            if actor.name == "batch0" and call == "write" and "/_inbox/" in args[0] and not failed:
                days.append(args[0].rsplit("/", 1)[1][:10])
                if days[-1] != days[0]:
                    failed.append(True)
                    return "error"
            return None

        policy = sequence(("batch0", lambda a: bool(failed) and a.upcoming[0] == "write"), ("consolidator1", None),
                          ("batch0", None), ("consolidator2", None))
        return {"plan": (10, specs), "faults": Faults(), "policy": policy, "script": fail_second_day}
    raise ValueError(f"unknown scenario {name!r}; use one of {SCENARIOS}")


SCENARIOS = ("bug1", "bug2", "bug3", "bug4")


def run_scenario(name: str, backend: str = "memory", **kwargs: Any) -> SimResult:
    """Run one focused scenario of :func:`scenario` (``kwargs`` as for :func:`run_seed`)."""
    result = run_seed(0, backend, profile="none", **scenario(name), **kwargs)
    result.scenario = name
    return result
