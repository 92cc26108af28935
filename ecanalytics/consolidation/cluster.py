"""Consolidation on a Dask cluster, with the same single commit as in one process.

:meth:`Consolidator.run` plans on the driver (one LIST of the inbox, the state version) and hands
the fold to a :class:`DaskEngine`, which runs two kinds of tasks on the workers:

1. *partition* (one per :data:`PARTITION_OBJECTS` pending objects): read the objects straight from the
   store, split the rows by bucket and write one run per bucket under
   ``{resource}/_work/{token}/``;
2. *fold* (one per bucket): read the bucket's runs and the bucket's state at the planned version,
   and run :meth:`Consolidator.fold_unit`, which writes the bucket's delta.

Workers never commit. The driver writes one log entry naming every consumed object and every
delta through the usual create-only commit; a driver that loses the race drops the workers'
output and plans again. Task outputs are named by the run's token, the bucket and the object
index, so a task that Dask reruns after a worker died rewrites the same objects. What a killed
or outraced driver leaves (runs, deltas that no log entry names) is removed by :func:`sweep`,
which every cluster run (runs) or compaction (deltas) calls, once the version those objects were
written for is taken by another commit (never by age: see :func:`sweep`).

Workers get no credentials from the driver: a task carries the root's URI and endpoint and the
field's definition (:class:`FieldSpec`), never a key, a secret or a token, so nothing secret
reaches the graph, the scheduler's logs or the dashboard. Workers take credentials from their own
environment (an IAM role, ``AWS_*`` variables, a profile), as s3fs does. A custom Python reducer
travels pickled with the spec (cloudpickle), so it must be importable or defined in the driver's
``__main__``. ``memory://`` roots live inside one process: use them with threads
(``LocalCluster(processes=False)``), not worker processes.

Dask is optional (``pip install "ecanalytics[dask]"``); this module imports it only when a run
starts, so ``import ecanalytics`` never does.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from ecanalytics import _runtime
from ecanalytics.consolidation.consolidator import BucketOutput, Consolidator, FoldOutcome
from ecanalytics.consolidation.field import Field
from ecanalytics.consolidation.reducers import Reducer
from ecanalytics.errors import ConfigurationError
from ecanalytics.ledger.buckets import split
from ecanalytics.ledger.keys import generated
from ecanalytics.ledger.log import Ledger
from ecanalytics.ledger.schema import Schema
from ecanalytics.ledger.state import State
from ecanalytics.ledger.transactions import pending_schema, read_objects
from ecanalytics.storage import StorageConfig, Store
from ecanalytics.storage import paths as P

# Pending objects per partition task: enough tasks to spread the reads over the workers, few
# enough that tiny objects do not make a task each (the LIST gives no object sizes).
PARTITION_OBJECTS = 16
Progress = Callable[[int, int], None]  # (buckets done, buckets in all)


@dataclass(frozen=True)
class FieldSpec:
    """What a worker needs to rebuild a field's consolidator: names and definitions, never
    credentials (the storage config is stripped of key, secret and token)."""

    config: StorageConfig
    resource: str
    attributes: dict[str, str]
    buckets: int
    field: str
    reducer: Reducer
    default: Any
    dtype: pl.DataType
    tz: str

    @classmethod
    def of(cls, c: Field) -> FieldSpec:
        config = dataclasses.replace(c.store.config, key=None, secret=None, token=None)
        return cls(config, c.ledger.resource, c.ledger.schema.to_spec(), c.ledger.buckets, c.field, c.reducer(),
                   c.default, c.dtype, c.tz)

    def consolidator(self) -> Consolidator:
        """The field's consolidator in this (worker) process; stores are shared per root."""
        key = (self.config.uri, self.config.endpoint_url)
        with _LOCK:
            store = _STORES.get(key)
            if store is None:
                store = _STORES[key] = Store(self.config)
        ledger = Ledger(store, self.resource, Schema.parse(self.attributes), buckets=self.buckets)
        reducer = self.reducer
        return Consolidator(ledger, self.field, lambda: reducer, self.default, self.dtype, self.tz)

    def state(self, c: Consolidator, version: int) -> State:
        """The state at exactly ``version`` (cached per process: every bucket task of a run asks)."""
        key = (self.config.uri, self.resource, version)
        with _LOCK:
            st = _STATES.get(key)
        if st is None:
            st = c.ledger.state_at(version)
            if st.version != version:
                raise ConfigurationError(f"{self.resource} has no version {version}; the planning driver saw it.")
            with _LOCK:
                if len(_STATES) >= 4:
                    _STATES.pop(next(iter(_STATES)))
                _STATES[key] = st
        return st


_LOCK = threading.Lock()
_STORES: dict[tuple[str, str | None], Store] = {}
_STATES: dict[tuple[str, str, int], State] = {}


@dataclass(frozen=True)
class Partitioned:
    """What a partition task returns: the keys read and missing, their sizes, one run per bucket."""

    read: list[str]
    missing: list[str]
    sizes: dict[str, int]
    runs: dict[int, str]
    worker: str
    keyed: pl.DataFrame  # rows with caller-supplied keys: the driver resolves them for the whole field


def _worker() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


def partition_task(spec: FieldSpec, keys: list[str], start: int, token: str,
                   hidden: pl.DataFrame | None = None) -> Partitioned:
    """Read ``keys`` (indexes from ``start`` in the planned order) and write one run per bucket.

    For a consolidation (``hidden`` None) rows with caller-supplied keys are returned instead, for
    the driver to resolve for the whole field. For a rebuild of the history, ``hidden`` (the
    field's hidden rows among ``keys``) is left out and every other row goes to the runs."""
    c = spec.consolidator()
    sizes: dict[str, int] = {}
    rows, read, missing = read_objects(c.store, keys, value_dtype=c.dtype, field=c.field, start=start, sizes=sizes)
    if hidden is not None:
        index = {k: start + i for i, k in enumerate(keys)}
        gone = hidden.select(pl.col("key").replace_strict(index, return_dtype=pl.UInt32).alias("_object"), "row")
        rows = rows.join(gone, left_on=["_object", "_row"], right_on=["_object", "row"], how="anti")
    aside = rows.clear() if hidden is not None else rows.filter(~generated())
    runs = {}
    for k, part in split(rows if hidden is not None else rows.filter(generated()), "originalId", spec.buckets).items():
        rel = P.work_file(spec.resource, token, f"b{k:05d}-m{start:09d}")
        c.store.write_parquet(rel, part)
        runs[k] = rel
    return Partitioned(read, missing, sizes, runs, _worker(), aside)


def fold_task(spec: FieldSpec, version: int, k: int, runs: list[str], keyed: pl.DataFrame,
              token: str) -> tuple[BucketOutput, str]:
    """Fold bucket ``k`` (its runs, in planned order, and its resolved ``keyed`` rows) against the
    state at ``version``."""
    c = spec.consolidator()
    st = spec.state(c, version)
    frames = [c.store.read_parquet(rel) for rel in runs]
    schema = pending_schema(c.dtype)
    rows = pl.concat(frames, how="vertical").cast(schema) if frames else pl.DataFrame(schema=schema)  # type: ignore[arg-type]
    return c.fold_unit(st, k, rows, keyed, version + 1, token), _worker()


def sweep(ledger: Ledger, *, deltas: bool = True) -> int:
    """Remove what killed or outraced drivers left: runs under ``_work/`` and (``deltas``) bucket
    deltas that no log entry names. Returns how many objects went.

    Fenced by versions, never by age: every such object is named with the version its commit
    would create, and a commit can only create that version. So an object is an orphan exactly
    when its version is taken (its log entry exists) and that entry does not name it; an object
    of a version nobody took yet is kept, however old, because its writer (maybe paused for days)
    may still commit it. Looking for deltas lists ``_data/`` and reads the entry of each version
    found there, so cluster runs sweep ``_work/`` only and
    :func:`~ecanalytics.maintenance.compact` sweeps both."""
    store = ledger.store
    latest = ledger.latest_version()
    old: list[str] = []
    for rel in store.find(P.work_dir(ledger.resource)):
        version = P.work_run_version(rel)
        if version is not None and version <= latest:
            old.append(rel)  # that version is taken: this run's driver can no longer commit it
    named: dict[int, frozenset[str] | None] = {}  # version -> what its entry names (one GET a version)
    for rel in store.find(P.data_dir(ledger.resource)) if deltas else []:
        version = P.data_file_version(rel)
        if version is None or version > latest or not P.is_commit_part(rel):
            continue
        if version not in named:
            entry = ledger.read_entry(version)
            named[version] = entry.parts() if entry is not None else None
        parts = named[version]
        if parts is not None and rel not in parts:
            old.append(rel)  # written for a version another commit won
    store.delete(sorted(old))
    return len(old)


class DaskEngine:
    """A fold engine for :meth:`Consolidator.run` that runs the per-bucket work on a Dask cluster
    (see the module docstring). ``progress`` is called with (buckets done, buckets in all)."""

    def __init__(self, client: Any, c: Consolidator, progress: Progress | None = None) -> None:
        try:
            import distributed  # noqa: F401 - fail now, with the fix, not in the middle of a run
        except ImportError as exc:
            raise ConfigurationError('Consolidating on a Dask cluster needs Dask: pip install "ecanalytics[dask]".') from exc
        self.client = client
        self.consolidator = c
        self.spec = FieldSpec.of(c)
        self.progress = progress
        sweep(c.ledger, deltas=False)

    def __call__(self, st: State, candidates: list[str], held: pl.DataFrame, version: int, token: str) -> FoldOutcome:
        from distributed import as_completed

        c, spec, client = self.consolidator, self.spec, self.client
        if st.n_buckets != spec.buckets:
            spec = dataclasses.replace(spec, buckets=st.n_buckets)
        out = FoldOutcome()
        run = P.work_run(version, _runtime.token(12))  # fenced: swept once ``version`` is taken
        started = time.perf_counter()
        chunks = [(candidates[i:i + PARTITION_OBJECTS], i) for i in range(0, len(candidates), PARTITION_OBJECTS)]
        futures = [client.submit(partition_task, spec, keys, start, run, key=f"ec-partition-{run}-{start}", pure=False)
                   for keys, start in chunks]
        parts: list[Partitioned] = client.gather(futures)
        partition_s = time.perf_counter() - started
        runs: dict[int, list[str]] = {}
        workers = set()
        for p in parts:  # planned order: a bucket's rows keep the order of the objects
            out.read += p.read
            out.missing += p.missing
            out.sizes.update(p.sizes)
            workers.add(p.worker)
            for k, rel in p.runs.items():
                runs.setdefault(k, []).append(rel)
        schema = pending_schema(c.dtype)
        keyed = pl.concat([p.keyed.cast(schema) for p in parts], how="vertical") if parts else pl.DataFrame(schema=schema)  # type: ignore[arg-type]
        resolved = c.resolve(st, keyed, held)  # the one key rule, for the whole field at once
        out.take(resolved)
        held_by = split(resolved.kept, "originalId", st.n_buckets)
        buckets = sorted(set(runs) | set(held_by))
        if not buckets:  # only empty objects: still one fold, so the commit has its columns
            buckets = [0]
        folded_at = time.perf_counter()
        futures = [client.submit(fold_task, spec, st.version, k, runs.get(k, []), held_by.get(k, resolved.kept.clear()), token,
                                 key=f"ec-fold-{run}-{k}", pure=False) for k in buckets]
        outputs: list[BucketOutput] = []
        for done, future in enumerate(as_completed(futures), 1):  # type: ignore[no-untyped-call]
            unit, worker = future.result()
            outputs.append(unit)
            workers.add(worker)
            if self.progress is not None:
                self.progress(done, len(buckets))
        for unit in sorted(outputs, key=lambda u: u.bucket):
            out.add(unit)
        c.store.delete(sorted({rel for rels in runs.values() for rel in rels}))
        out.spilled = True
        out.stats = {"engine": "dask", "tasks": len(chunks) + len(buckets), "partitionTasks": len(chunks),
                     "foldTasks": len(buckets), "workers": sorted(workers),
                     "phases": {"partitionS": round(partition_s, 3), "foldS": round(time.perf_counter() - folded_at, 3)}}
        return out
