"""Consolidation on a Dask cluster, with the same single commit as in one process.

:meth:`Consolidator.run` plans on the driver (one LIST of the inbox, the state version) and hands
the fold to a :class:`DaskEngine`, which runs two kinds of tasks on the workers:

1. *partition* (one per :data:`PARTITION_OBJECTS` pending objects): read the objects straight from the
   store and split the rows by bucket. The rows stay in the worker's memory as the task's result;
   small tasks pick what others need out of it, on the same worker. When the field folds into
   per-record states and the rows touch at most :data:`PARTIAL_MAX_SHARE` as many records as
   there are rows, the task also reduces its rows to per-bucket *partial states*
   (:func:`~ecanalytics.consolidation.states.partial_states`), which grow with the records, not
   the rows;
2. *fold* (one per bucket): merge the bucket's partial states from every partition task, read the
   bucket's state at the planned version and write the bucket's delta
   (:meth:`Consolidator.fold_partials`). Without a ``set`` among the bucket's rows that is one
   round. With one, or where one round cannot be exact (rows dated at or before a record's
   applied ones), it is two: a *thresholds* task sends each record's threshold to one task per
   partition, run where its rows are, which answers with per-record aggregates of the rows after
   it (:func:`~ecanalytics.consolidation.states.after_threshold`). A field that does not fold into
   states, or a bucket whose value would not be finite, takes the bucket's rows instead (Dask
   moves them between workers, spilling to the workers' local disk under memory pressure as it
   does for any result) and runs :meth:`Consolidator.fold_unit`.

Rows move between tasks through Dask's own data movement (a piece that crosses to another worker
as an Arrow IPC stream, :class:`Moved`; the few-valued string columns as categories until the
fold task), not through the store: the store sees the reads of the pending objects and of the
state, and the deltas' writes, as in one process (earlier versions wrote a run per bucket per
partition under ``{resource}/_work/`` and read and deleted it again: three requests per run). If
a worker dies, Dask recomputes the partition results it held from the objects, which are
immutable.

Workers never commit. The driver writes one log entry naming every consumed object and every
delta through the usual create-only commit; a driver that loses the race drops the workers'
output and plans again. Deltas are named by the run's token and the bucket, so a fold task that
Dask reruns after a worker died rewrites the same objects. What a killed or outraced driver
leaves (deltas that no log entry names, and runs under ``_work/`` from earlier versions) is
removed by :func:`sweep`, which every cluster run (runs) or compaction (deltas) calls, once the
version those objects were written for is taken by another commit (never by age: see
:func:`sweep`).

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
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl
import pyarrow as pa

from ecanalytics import _runtime
from ecanalytics.consolidation.consolidator import BucketOutput, Consolidator, FoldOutcome
from ecanalytics.consolidation.field import Field
from ecanalytics.consolidation.reducers import Reducer
from ecanalytics.consolidation.states import Partial, after_threshold, partial_states
from ecanalytics.errors import ConfigurationError
from ecanalytics.ledger.buckets import split
from ecanalytics.ledger.keys import generated
from ecanalytics.ledger.log import Ledger
from ecanalytics.ledger.schema import Schema
from ecanalytics.ledger.state import State
from ecanalytics.ledger.transactions import pending_schema, read_objects
from ecanalytics.storage import StorageConfig, Store
from ecanalytics.storage import paths as P
from ecanalytics.types import OPERATIONS

# Pending objects per partition task: enough tasks to spread the reads over the workers, few
# enough that tiny objects do not make a task each (the LIST gives no object sizes).
PARTITION_OBJECTS = 16
# Partial states only where a partition task's records are at most this share of its rows: past
# it they would not shrink what moves (10^8 rows over 10^7 records touch nearly a record a row)
# and the workers would hold them beside the rows they keep for a second round.
PARTIAL_MAX_SHARE = 0.5
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
        _register_transport()  # every task starts here
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
    """What the driver learns from a partition task: the keys read and missing, their sizes, the
    buckets it has rows of (the rows themselves stay on the worker)."""

    read: list[str]
    missing: list[str]
    sizes: dict[str, int]
    buckets: tuple[int, ...]
    worker: str
    keyed: pl.DataFrame  # rows with caller-supplied keys: the driver resolves them for the whole field
    stated: tuple[int, ...] = ()  # the buckets with a partial state
    with_sets: tuple[int, ...] = ()  # ... of which these have a ``set`` among their rows (two rounds)


# A partition task's result: summary, rows by bucket, partial states by bucket.
Split = tuple[Partitioned, dict[int, pl.DataFrame], dict[int, Partial]]


@dataclass(frozen=True)
class Moved:
    """One bucket's rows of one partition task, on their way to the bucket's fold task. Held on
    the worker as the Polars frame itself (a fold task on the same worker takes it as is); sent to
    another worker, or spilled by Dask, as an Arrow IPC stream (:func:`_register_transport`), which
    a 10^6-row piece turns into bytes and back in 0.07 s where pickling the frame takes 0.21 s."""

    frame: pl.DataFrame


def _to_wire(moved: Moved) -> tuple[dict[str, Any], list[Any]]:
    table = moved.frame.to_arrow()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return {}, [sink.getvalue()]


def _from_wire(_header: dict[str, Any], frames: list[Any]) -> Moved:
    frame = pl.from_arrow(pa.ipc.open_stream(frames[0]).read_all())
    assert isinstance(frame, pl.DataFrame)
    return Moved(frame)


def _register_transport() -> None:
    """Teach Dask what a Polars frame weighs (``estimated_size``: its default ``sizeof`` counts 56
    bytes for any frame, so the scheduler would see a partition task's rows as weightless, ship
    them to wherever a small task that takes them runs, and never spill them), and how a
    :class:`Moved` travels. Runs when this module is imported in a process that has Dask (every
    worker: unpickling a task or a :class:`Moved` imports it), and at the start of every task and
    cluster run."""
    global _REGISTERED
    if not _REGISTERED:
        from dask.sizeof import sizeof
        from distributed.protocol.serialize import dask_deserialize, dask_serialize

        sizeof.register(pl.DataFrame)(lambda frame: int(frame.estimated_size()))  # type: ignore[no-untyped-call]
        sizeof.register(Moved)(lambda moved: int(moved.frame.estimated_size()))  # type: ignore[no-untyped-call]
        dask_serialize.register(Moved)(_to_wire)  # type: ignore[no-untyped-call]
        dask_deserialize.register(Moved)(_from_wire)  # type: ignore[no-untyped-call]
        _REGISTERED = True


_REGISTERED = False
if "distributed" in sys.modules:
    _register_transport()


def _worker() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return "local"


# Rows as they wait on a worker and move between workers: the few-valued string columns as
# categories (1-4 bytes a row instead of a 16-byte string view each), so that a 10^8-row run
# holds and ships about a third less; the general fold (or :func:`bucket_frame`) restores the
# strings. ``source`` only where it has few values: a category's strings live in a map of the
# process's own, which Polars' ``estimated_size`` (what Dask weighs) does not count, and a source
# per row (a request id) would hold more that way than as strings.
_OPERATION = pl.Enum(list(OPERATIONS))
FEW_SOURCES = 1024  # distinct sources (approximate count) up to which they wait as a category


_STRINGS = {c: pl.String() for c in ("operation", "field", "source")}  # what :func:`_slim` may change


def _slim(rows: pl.DataFrame) -> pl.DataFrame:
    few = int(rows.select(pl.col("source").approx_n_unique()).item()) <= FEW_SOURCES
    return rows.with_columns(pl.col("operation").cast(_OPERATION),
                             pl.col("field", *(["source"] if few else [])).cast(pl.Categorical()))


def partition_task(spec: FieldSpec, keys: list[str], start: int, hidden: pl.DataFrame | None = None) -> Split:
    """Read ``keys`` (indexes from ``start`` in the planned order) and split their rows by bucket.

    For a consolidation (``hidden`` None) rows with caller-supplied keys are returned instead, for
    the driver to resolve for the whole field, and each bucket's rows are also reduced to a
    partial state where the field merges and they hold no ``set``. For a rebuild of the history,
    ``hidden`` (the field's hidden rows among ``keys``) is left out and every other row goes to
    the runs."""
    c = spec.consolidator()
    sizes: dict[str, int] = {}
    rows, read, missing = read_objects(c.store, keys, value_dtype=c.dtype, field=c.field, start=start, sizes=sizes)
    if hidden is not None:
        index = {k: start + i for i, k in enumerate(keys)}
        gone = hidden.select(pl.col("key").replace_strict(index, return_dtype=pl.UInt32).alias("_object"), "row")
        rows = rows.join(gone, left_on=["_object", "_row"], right_on=["_object", "row"], how="anti")
    aside = rows.clear() if hidden is not None else rows.filter(~generated())
    rows = _slim(rows if hidden is not None else rows.filter(generated()))  # before the split: it copies less
    runs = split(rows, "originalId", spec.buckets)
    reducer = c.mergeable() if hidden is None else None
    partials: dict[int, Partial] = {}
    if (reducer is not None and rows.height  # one reduction of all the rows, then split by bucket
            and int(rows.select(pl.col("originalId").approx_n_unique()).item()) <= PARTIAL_MAX_SHARE * rows.height):
        whole = partial_states(rows, reducer.name)
        states, tops, sets = (split(f, "originalId", spec.buckets) for f in whole)
        no_sets = whole[2].clear()
        partials = {k: (states[k], tops[k], sets.get(k, no_sets)) for k in runs}
    summary = Partitioned(read, missing, sizes, tuple(sorted(runs)), _worker(), aside, tuple(sorted(partials)),
                          tuple(sorted(k for k, p in partials.items() if p[2].height)))
    return summary, runs, partials



def _summary(result: Split) -> Partitioned:
    return result[0]


def _bucket_rows(result: Split, k: int) -> Moved:
    _register_transport()
    return Moved(result[1][k])


def _bucket_partial(result: Split, k: int) -> Partial:
    _register_transport()
    return result[2][k]


def _bucket_after(result: Split, k: int, table: pl.DataFrame | None, reducer: str) -> tuple[pl.DataFrame, int] | None:
    """The second round of bucket ``k``'s partial states, on the worker that holds its rows."""
    _register_transport()
    if table is None:
        return None
    return after_threshold(result[1][k].cast(_STRINGS), table, reducer)  # type: ignore[arg-type]


@dataclass
class Shuffled:
    """The partition tasks of one run: their summaries (in planned order) and their results, which
    hold the rows on the workers while the driver keeps these futures."""

    client: Any
    run: str
    starts: list[int]
    results: list[Any]
    summaries: list[Partitioned]

    def buckets(self) -> list[int]:
        """The buckets with rows."""
        return sorted({k for p in self.summaries for k in p.buckets})

    def stated(self, k: int) -> bool:
        """Whether every partition with rows of bucket ``k`` reduced them to a partial state."""
        return all(k in p.stated for p in self.summaries if k in p.buckets)

    def with_sets(self, k: int) -> bool:
        """Whether a ``set`` is among bucket ``k``'s rows (its partial states need two rounds)."""
        return any(k in p.with_sets for p in self.summaries)

    def _picks(self, pick: Callable[..., Any], k: int, tag: str, *args: Any) -> list[Any]:
        # Picked on the worker that holds the result, then moved by Dask; in planned order, so a
        # bucket's rows keep the order of the objects. (A key submitted again is the same future.)
        return [self.client.submit(pick, r, k, *args, key=f"ec-partition-{self.run}-{start}-{tag}{k}", pure=False)
                for r, p, start in zip(self.results, self.summaries, self.starts, strict=True) if k in p.buckets]

    def rows(self, k: int) -> list[Any]:
        """The futures of bucket ``k``'s rows, one per partition that has some."""
        return self._picks(_bucket_rows, k, "b")

    def partials(self, k: int) -> list[Any]:
        """The futures of bucket ``k``'s partial states (when :meth:`stated`)."""
        return self._picks(_bucket_partial, k, "s")

    def after(self, k: int, table: Any, reducer: str) -> list[Any]:
        """The futures of the second round of bucket ``k``'s partial states against ``table``
        (a future of :func:`thresholds_task`), one per partition, computed where its rows are."""
        return self._picks(_bucket_after, k, "a", table, reducer)


def shuffle(client: Any, spec: FieldSpec, chunks: list[tuple[list[str], int]], run: str,
            hidden: pl.DataFrame | None = None) -> Shuffled:
    """Run the partition tasks of ``chunks`` (keys, first index) and wait for their summaries.
    ``hidden`` (a rebuild of the history) is the field's hidden rows, left out. The rows stay on
    the workers until the tasks that take them run."""
    results = [client.submit(partition_task, spec, keys, start,
                             None if hidden is None else hidden.filter(pl.col("key").is_in(keys)),
                             key=f"ec-partition-{run}-{start}", pure=False) for keys, start in chunks]
    summaries: list[Partitioned] = client.gather(
        [client.submit(_summary, r, key=f"ec-partition-{run}-{start}-summary", pure=False)
         for r, (_keys, start) in zip(results, chunks, strict=True)])
    return Shuffled(client, run, [start for _keys, start in chunks], results, summaries)


def bucket_frame(pieces: list[Moved], dtype: pl.DataType, *, restore: bool = True) -> pl.DataFrame:
    """One bucket's rows from its partitions' pieces (in planned order), with the transaction
    columns' own types again; with ``restore`` False, ``operation``, ``field`` and ``source`` stay
    as they travelled (:func:`_slim`), ``source`` as strings only where pieces differ in it."""
    schema = pending_schema(dtype)
    if not pieces:
        return pl.DataFrame(schema=schema)
    if not restore:
        frames = [p.frame for p in pieces]
        if len({f.schema["source"] for f in frames}) > 1:  # some partitions had many sources
            frames = [f.with_columns(pl.col("source").cast(pl.String)) for f in frames]
        return pl.concat(frames, how="vertical")
    # Each piece on its own: pieces of different partitions may differ in ``source``'s type.
    return pl.concat([p.frame.cast(schema) for p in pieces], how="vertical")  # type: ignore[arg-type]


def fold_task(spec: FieldSpec, version: int, k: int, frames: list[Moved], keyed: pl.DataFrame,
              token: str) -> tuple[BucketOutput, str]:
    """Fold bucket ``k`` (its rows from each partition, in planned order, and its resolved
    ``keyed`` rows) against the state at ``version``. The rows stay as they travelled: the
    per-record states read the operation as it is and neither ``field`` nor ``source`` (casting
    them back took 0.16-0.21 s of each 6x10^6-row bucket at 10^8 rows), and the general fold,
    where a field takes it, casts them back itself (:meth:`Consolidator.fold_bucket`)."""
    c = spec.consolidator()
    st = spec.state(c, version)
    return c.fold_unit(st, k, bucket_frame(frames, c.dtype, restore=False), keyed, version + 1, token), _worker()


def fold_partials_task(spec: FieldSpec, version: int, k: int, partials: list[Partial], keyed: pl.DataFrame,
                       token: str, after: list[tuple[pl.DataFrame, int] | None] | None = None,
                       ) -> tuple[BucketOutput | None, str]:
    """Fold bucket ``k`` from its partial states (and its resolved ``keyed`` rows) against the
    state at ``version``, in one round or (``after``) two; None when they cannot give the exact
    result (the driver then tries two rounds, then :func:`fold_task` with the bucket's rows)."""
    c = spec.consolidator()
    st = spec.state(c, version)
    return c.fold_partials(st, k, partials, keyed, version + 1, token, after), _worker()


def thresholds_task(spec: FieldSpec, version: int, k: int, partials: list[Partial],
                    keyed: pl.DataFrame) -> pl.DataFrame | None:
    """The first round of bucket ``k``'s partial states: its thresholds
    (:meth:`Consolidator.partial_thresholds`)."""
    c = spec.consolidator()
    return c.partial_thresholds(spec.state(c, version), k, partials, keyed)


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
        _register_transport()
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
        run = f"v{version}-{_runtime.token(12)}"
        started = time.perf_counter()
        chunks = [(candidates[i:i + PARTITION_OBJECTS], i) for i in range(0, len(candidates), PARTITION_OBJECTS)]
        shuffled = shuffle(client, spec, chunks, run)
        parts = shuffled.summaries
        partition_s = time.perf_counter() - started
        workers = set()
        for p in parts:
            out.read += p.read
            out.missing += p.missing
            out.sizes.update(p.sizes)
            workers.add(p.worker)
        schema = pending_schema(c.dtype)
        keyed = pl.concat([p.keyed.cast(schema) for p in parts], how="vertical") if parts else pl.DataFrame(schema=schema)  # type: ignore[arg-type]
        resolved = c.resolve(st, keyed, held)  # the one key rule, for the whole field at once
        out.take(resolved)
        held_by = split(resolved.kept, "originalId", st.n_buckets)
        buckets = sorted(set(shuffled.buckets()) | set(held_by))
        if not buckets:  # only empty objects: still one fold, so the commit has its columns
            buckets = [0]
        folded_at = time.perf_counter()

        # A bucket folds from partial states in one round where no ``set`` is among its rows, in
        # two where one is (or where one round cannot be exact), else (a field that does not merge
        # into states, or no exact result) from its rows.
        which: dict[str, tuple[int, int]] = {}  # a fold future's key -> (bucket, rounds; 0: rows)

        def fold(k: int, rounds: int) -> Any:
            keyed_k = held_by.get(k, resolved.kept.clear())
            if rounds == 0:
                future = client.submit(fold_task, spec, st.version, k, shuffled.rows(k), keyed_k, token,
                                       key=f"ec-fold-{run}-{k}", pure=False)
            elif rounds == 1:
                future = client.submit(fold_partials_task, spec, st.version, k, shuffled.partials(k), keyed_k, token,
                                       key=f"ec-fold-{run}-s{k}", pure=False)
            else:
                partials = shuffled.partials(k)
                table = client.submit(thresholds_task, spec, st.version, k, partials, keyed_k,
                                      key=f"ec-thresholds-{run}-{k}", pure=False)
                future = client.submit(fold_partials_task, spec, st.version, k, partials, keyed_k, token,
                                       shuffled.after(k, table, spec.reducer.name), key=f"ec-fold-{run}-t{k}", pure=False)
            which[future.key] = (k, rounds)
            return future

        mergeable, with_rows = c.mergeable() is not None, set(shuffled.buckets())

        def first(k: int) -> int:
            keyed_k = held_by.get(k)
            if not mergeable or not shuffled.stated(k) or (keyed_k is None and k not in with_rows):
                return 0  # (the last: only empty objects, folded for the commit's columns)
            sets = shuffled.with_sets(k) or (keyed_k is not None and bool((keyed_k["operation"] == "set").any()))
            return 2 if sets else 1

        futures = as_completed([fold(k, first(k)) for k in buckets])  # type: ignore[no-untyped-call]
        outputs: list[BucketOutput] = []
        rounds_done = {1: 0, 2: 0}
        for future in futures:
            unit, worker = future.result()
            workers.add(worker)
            k, rounds = which[future.key]
            if unit is None:  # not exact this way: two rounds, then the bucket's rows
                futures.add(fold(k, 2 if rounds == 1 else 0))  # type: ignore[no-untyped-call]
                continue
            if rounds:
                rounds_done[rounds] += 1
            outputs.append(unit)
            if self.progress is not None:
                self.progress(len(outputs), len(buckets))
        for unit in sorted(outputs, key=lambda u: u.bucket):
            out.add(unit)
        out.spilled = True
        out.stats = {"engine": "dask", "tasks": len(chunks) + len(buckets), "partitionTasks": len(chunks),
                     "bucketPieces": sum(len(p.buckets) for p in parts), "stateBuckets": rounds_done[1] + rounds_done[2],
                     "twoRoundBuckets": rounds_done[2],
                     "foldTasks": len(buckets), "workers": sorted(workers),
                     "phases": {"partitionS": round(partition_s, 3), "foldS": round(time.perf_counter() - folded_at, 3)}}
        return out
