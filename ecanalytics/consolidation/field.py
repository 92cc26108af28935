"""A managed field's core: what it is and what it holds, read from its resource's state.

:class:`Field` knows the field's dataset, value type, cohort zone, default and reducer, and reads
what a state holds for it: pending objects and rows, held rows, key conflicts, the history of
applied transactions, the base a rebuild starts from, and the one scan plan every reader uses.
Maintenance (recalculation, retention, compaction) and analytics (the SQL views) take a
``Field``; :class:`~ecanalytics.consolidation.consolidator.Consolidator` adds the fold and the
commit on top of it.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

from ecanalytics import _runtime
from ecanalytics.consolidation.reducers import Reducer
from ecanalytics.consolidation.runs import Runs
from ecanalytics.ledger import keys, scan
from ecanalytics.ledger.keys import Resolved
from ecanalytics.ledger.log import Ledger
from ecanalytics.ledger.scan import ScanPlan
from ecanalytics.ledger.state import State
from ecanalytics.ledger.transactions import TX_SCHEMA, Inbox, held_rows, read_history, read_objects
from ecanalytics.storage import paths as P

log = logging.getLogger(__name__)
# A history read for some records takes the applied objects in chunks of at most this many
# objects and stored bytes (an object bigger than that is a chunk alone; an object of unknown size
# counts as 1 MiB), each cut to their rows before the next is kept: about 100 MB decoded (an
# object of 10^5 transactions takes about 1.3 MB stored and 6 MB decoded).
HISTORY_CHUNK_OBJECTS = 64  # (s3fs fetches a chunk's objects concurrently: small ones need many)
HISTORY_CHUNK_BYTES = 16 << 20
_UNKNOWN_SIZE = 1 << 20


@dataclass(frozen=True)
class Pending:
    """The pending transactions of a field at one state, ready to reduce."""

    rows: pl.DataFrame  # new rows and held rows, deduplicated, with ``_object``
    objects: frozenset[str]  # objects read now: consumed by this commit
    markers: dict[str, str]  # their inbox markers
    carried: frozenset[str]  # consumed keys whose marker the LIST still shows (or never showed): they stay consumed
    stale_markers: tuple[str, ...]  # the listed markers of those keys
    unlisted: frozenset[str]  # consumed keys no LIST has shown yet
    duplicates: int
    unapplied: frozenset[str]  # every listed, unconsumed key (read or not): not in applied history
    conflicts: pl.DataFrame  # reused keys that are not applied (ledger.keys.CONFLICT_SCHEMA)


class Field:
    """One managed field of one resource: its identity and its read model (see the module docstring)."""

    def __init__(self, ledger: Ledger, field: str, reducer: Callable[[], Reducer], default: Any,
                 dtype: pl.DataType | None = None, tz: str = "UTC") -> None:
        self.dtype: pl.DataType = dtype or pl.Float64()
        self.ledger = ledger
        self.store = ledger.store
        self.field = field
        self.tz = tz
        self.dataset = P.transactions_dataset(ledger.resource, field)
        self._reducer_of = reducer
        self.default = default
        self._warned_denied = False

    def reducer(self) -> Reducer:
        """The field's reducer (a named reducer this process was not given raises the error that
        says how to supply it)."""
        return self._reducer_of()

    # -- what is pending -------------------------------------------------------------------
    def pending_objects(self, st: State) -> set[str]:
        """Keys of the objects still pending at ``st``: inbox markers not consumed by the field's
        latest commit. One LIST; what readers use to derive ``applied``."""
        return set(Inbox.scan(self.store, self.dataset).markers) - st.consumed.get(self.field, frozenset())

    def held_frame(self, st: State) -> pl.DataFrame:
        """The rows held back at ``st`` (transaction columns plus ``_reason``)."""
        held = st.held.get(self.field)
        return held if held is not None else pl.DataFrame(schema=self._held_schema)

    def conflicts_frame(self, st: State) -> pl.DataFrame:
        """The latest key conflicts kept at ``st`` (:data:`ecanalytics.ledger.keys.CONFLICT_SCHEMA`,
        oldest first, at most :data:`ecanalytics.ledger.log.MAX_CONFLICTS`): reused keys not applied."""
        found = st.conflicts.get(self.field)
        return found if found is not None else pl.DataFrame(schema=keys.CONFLICT_SCHEMA)

    def stale_markers(self, st: State) -> tuple[str, ...]:
        """The inbox markers of objects ``st`` already consumed that a LIST still shows (deletes
        that have not happened, or not yet): one LIST, nothing read, nothing deleted."""
        return self._scan(st, cleanup=False)[2]

    @property
    def _held_schema(self) -> dict[str, pl.DataType]:
        return {**TX_SCHEMA, "value": self.dtype, "_reason": pl.String()}

    def _delete_markers(self, markers: list[str]) -> None:
        if not markers:
            return
        failed = self.store.delete(markers)
        if self.store.delete_denied and not self._warned_denied:
            self._warned_denied = True
            log.warning(
                "The store refuses deletes for %s (AccessDenied): consumed markers stay, so every consolidation "
                "lists and carries them. Exactly once still holds; grant s3:DeleteObject on the _inbox/ prefix "
                "to keep consolidation cheap (see the README, 'Guarantees').", self.dataset)
        elif failed:
            log.info("%d marker delete(s) of %s failed; they are retried on the next run.", len(failed), self.dataset)

    def _scan(self, st: State, *, cleanup: bool) -> tuple[Inbox, frozenset[str], tuple[str, ...], frozenset[str], list[str]]:
        """One LIST of the inbox: (the inbox, the consumed keys carried, their stale markers, the
        consumed keys no LIST has shown yet, the candidate keys to read, sorted)."""
        inbox = Inbox.scan(self.store, self.dataset)
        consumed = st.consumed.get(self.field, frozenset())
        listed = frozenset(k for k in consumed if k in inbox.markers)
        # A consumed key that no LIST has shown yet stays consumed whether or not this one shows it.
        unlisted = st.unlisted.get(self.field, frozenset()) - listed
        carried = listed | (unlisted & consumed)
        stale = tuple(inbox.markers[k] for k in sorted(listed))
        if cleanup:
            self._delete_markers(list(stale))
        candidates = sorted(k for k in inbox.markers if k not in consumed)
        return inbox, carried, stale, unlisted & consumed, candidates

    def pending(self, st: State, *, cleanup: bool) -> Pending:
        """Pending rows at ``st``, all in memory. With ``cleanup``, markers of consumed and orphaned objects are removed."""
        inbox, carried, stale, unlisted, candidates = self._scan(st, cleanup=cleanup)
        rows, read, _missing = read_objects(self.store, candidates, value_dtype=self.dtype, field=self.field)
        resolved = self.resolve(st, rows, self.held_frame(st))
        return Pending(resolved.kept, frozenset(read), {k: inbox.markers[k] for k in read}, carried, stale,
                       unlisted, resolved.retries + resolved.conflicts.height, frozenset(candidates),
                       resolved.conflicts)

    def resolve(self, st: State, rows: pl.DataFrame, held: pl.DataFrame) -> Resolved:
        """``rows`` (with ``_object``) plus the ``held`` ones, under the one key rule
        (:mod:`ecanalytics.ledger.keys`): one row per id, the applied or earliest occurrence of a
        caller-supplied key counting, whatever the bucket layout, memory budget or engine."""
        if held.height:
            rows = pl.concat([rows, held_rows(held, self.dtype).select(rows.columns).cast(rows.schema)], how="vertical")  # type: ignore[arg-type]
        return keys.resolve(rows, st.applied_keys(self.field))

    # -- history (only for late data) ------------------------------------------------------
    def _retention(self, st: State) -> tuple[str | None, bool]:
        """(the retention cut, whether the archive still holds what came before it)."""
        retention = st.retention.get(self.field)
        if retention is None:
            return None, True
        return retention.cut, retention.complete

    def deleted_before(self, st: State) -> dt.datetime | None:
        """After a ``delete``-mode retention, the instant of its cut (the cut day's start in the
        field's zone): the retention base stands there like a ``set``, so a transaction dated
        before it that arrives later has no effect, in consolidation and in every rebuild alike."""
        cut, archived = self._retention(st)
        return None if cut is None or archived else self.day_start(cut)

    def day_start(self, day: str) -> dt.datetime:
        """The start of cohort day ``day`` (ISO) in the field's zone, in UTC."""
        return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), ZoneInfo(self.tz)).astimezone(dt.UTC)

    def fits(self, column: str = "value") -> pl.Expr:
        """True where ``column`` holds a value of the field: not null for a decimal (a fold past
        its precision is null), finite for a number."""
        value = pl.col(column)
        return (value.is_not_null() if isinstance(self.dtype, pl.Decimal) else value.is_finite()).fill_null(False)

    def history(self, st: State, unapplied: frozenset[str] = frozenset(), *, since: dt.date | None = None,
                ids: pl.Series | None = None, pending_too: bool = False) -> pl.DataFrame:
        """Applied transactions of ``ids`` (or all), from cohort day ``since`` on, read from the
        objects the manifest names (no LIST of the history; ``since`` prunes by cohort day);
        ``unapplied`` names objects to leave out (``pending_too``: add the pending objects, one
        LIST of the inbox, for event-time travel). After an ``archive``-mode retention the
        manifest names the archived copies, so the history stays complete; after a
        ``delete``-mode retention, days before the cut are gone and :meth:`base` stands for them."""
        names = [k for k in st.applied_objects(self.field, since=since.isoformat() if since else None)
                 if k not in unapplied]
        rows = self._read_history(st, names, ids)
        if pending_too:  # what the next consolidation will count, as every reader sees it
            rows = pl.concat([rows, self.scan(st).read_pending(self.store, self.dtype)], how="vertical")
        if ids is not None:
            rows = rows.filter(pl.col("originalId").is_in(ids.implode()))
        return self.history_rows(st, rows)

    def scan(self, st: State, *, days: Collection[str] | None = None, months: Collection[str] | None = None,
             archived: bool = True) -> ScanPlan:
        """The one scan plan of this field's transaction dataset at ``st`` (one LIST of the inbox;
        see :mod:`ecanalytics.ledger.scan`): what every reader of the dataset reads."""
        inbox = Inbox.scan(self.store, self.dataset)
        pending = set(inbox.markers) - st.consumed.get(self.field, frozenset())
        return scan.plan(st, self.dataset, self.field, pending, auto=inbox.auto, days=days, months=months,
                         archived=archived, held=self.held_frame(st))

    def _read_history(self, st: State, names: list[str], ids: pl.Series | None = None) -> pl.DataFrame:
        """:func:`read_history` of ``names``; with ``ids``, chunk by chunk (:meth:`history_frames`),
        each cut to the rows of ``ids``, so that memory holds two chunks and the rows wanted, not
        the whole history since the day asked."""
        if ids is None:
            return read_history(self.store, names, self.dtype)
        wanted = pl.col("originalId").is_in(ids.implode())
        frames = [frame.filter(wanted) for frame in self.history_frames(st, names)]
        return pl.concat(frames, how="vertical") if frames else read_history(self.store, [], self.dtype)

    def history_frames(self, st: State, names: list[str]) -> Iterator[pl.DataFrame]:
        """:func:`read_history` of the applied objects ``names``, in chunks of at most
        :data:`HISTORY_CHUNK_OBJECTS` objects and :data:`HISTORY_CHUNK_BYTES` stored bytes (the
        manifest's sizes), the next chunk read while the caller takes this one."""
        manifest = st.manifest_of(self.field)
        sizes = dict(zip(manifest["key"].to_list(), manifest["size"].to_list(), strict=True))
        chunks: list[list[str]] = []
        held = 0
        for key in names:
            size = sizes.get(key) or _UNKNOWN_SIZE
            if not chunks or len(chunks[-1]) >= HISTORY_CHUNK_OBJECTS or held + size > HISTORY_CHUNK_BYTES:
                chunks.append([])
                held = 0
            chunks[-1].append(key)
            held += size
        yield from _runtime.ahead(lambda chunk: read_history(self.store, chunk, self.dtype), chunks)

    @property
    def base_schema(self) -> dict[str, pl.DataType]:
        """The columns of :meth:`base`."""
        return {"originalId": pl.String(), "current": self.dtype}

    def shared_history(self, st: State, unapplied: frozenset[str], budget_rows: int) -> SharedHistory:
        """A :class:`SharedHistory` of this field at ``st`` (use it as a context manager)."""
        return SharedHistory(self, st, unapplied, budget_rows)

    def history_rows(self, st: State, rows: pl.DataFrame, *, hidden: bool = True) -> pl.DataFrame:
        """Transaction rows read from applied objects, as history: without what a ``delete``-mode
        retention cut off or what is held, and without the occurrences of keys that did not count
        when they were consolidated (:func:`ecanalytics.ledger.keys.hide`): one row per id."""
        if (deleted := self.deleted_before(st)) is not None:
            rows = rows.filter(pl.col("timestamp") >= deleted)
        held = self.held_frame(st)
        if held.height:
            rows = rows.filter(~pl.col("id").is_in(held["id"].implode()))
        return (keys.hide(rows, st.hidden_of(self.field)) if hidden else rows).sort(["timestamp", "id", "_object"])

    def base(self, st: State, *, retention_base: bool = False) -> pl.DataFrame:
        """``originalId, current``: where a rebuild from :meth:`history` starts: the value each
        record was last inserted with; after a ``delete``-mode retention run, the retention base
        (everything before its cut, folded) for the records it has. Reads every log entry up to
        ``st``'s version (and keeps its ``insert`` entries): a maintenance read. ``retention_base``
        uses the retention base in ``archive`` mode too, for readers of the live history only
        (the SQL views)."""
        frames = []
        for entry in self.ledger.entries(("insert",), upto=st.version):
            delta = self.ledger.read_delta(entry)
            if delta is not None:
                frames.append(delta.select(pl.col("id").alias("originalId"), pl.col(self.field).alias("current")))
        schema = self.base_schema
        inserted = (pl.concat(frames).unique("originalId", keep="last", maintain_order=True).drop_nulls("current")
                    if frames else pl.DataFrame(schema=schema))
        cut, archived = self._retention(st)
        if cut is None or (archived and not retention_base):
            return inserted
        base = self.store.read_parquet(st.retention[self.field].base).cast(schema)  # type: ignore[arg-type]
        return pl.concat([base, inserted.join(base.select("originalId"), on="originalId", how="anti")])


class SharedHistory:
    """The applied history that the buckets of one consolidation ask of, read from the store
    once. A spilled consolidation folds its buckets one at a time, and a bucket with late rows
    needs applied ones: the add/sub rows after each late ``set`` of the default reducer
    (:meth:`~ecanalytics.consolidation.consolidator.Consolidator._applied_after`, asked by each
    half of the bucket), or a callable reducer's whole history of its late records and the
    :meth:`Field.base` it folds them from (:meth:`base`, read once too). Asked of
    :meth:`Field.history`, each asker read every applied object since its day again (the default
    reducer at 16 buckets: each object 32 times). Here the rows read are kept in :class:`Runs` by
    the bucket of their record (spilled to local disk past ``budget_rows``: like the pending
    rows' runs, this can take about 3 GB of local disk per 10^8 rows of history since the earliest
    day asked), from the earliest day asked so far: a later question for an earlier day reads
    only the days before it. ``unapplied`` names objects to leave out, as for
    :meth:`Field.history`. Safe to ask from several threads (a bucket's halves ask at once; one
    question is answered at a time); once a read of the history fails, every later question of
    the history raises that error (the rows read before it are in the runs, and reading them
    again would count them twice).
    Use as a context manager."""

    def __init__(self, field: Field, st: State, unapplied: frozenset[str], budget_rows: int) -> None:
        self._field, self._st, self._unapplied = field, st, unapplied
        self._runs = Runs(st.n_buckets, budget_rows)
        self._since: dt.date | None = None  # the rows of every applied object from this day on are in the runs
        self._failed: BaseException | None = None
        self._base: Runs | None = None  # Field.base by record bucket, once asked
        self._schema = read_history(field.store, [], field.dtype).schema  # of the history's rows (no read)
        self._budget_rows = budget_rows
        self._lock = threading.Lock()

    def __call__(self, since: dt.date, ids: pl.Series) -> pl.DataFrame:
        """What :meth:`Field.history` gives for ``ids`` from day ``since`` on (``ids`` of one
        bucket or several)."""
        field, st = self._field, self._st
        with self._lock:
            if self._failed is not None:
                raise self._failed
            if self._since is None or since < self._since:
                have = set(st.applied_objects(field.field, since=self._since.isoformat())) if self._since else set()
                names = [k for k in st.applied_objects(field.field, since=since.isoformat())
                         if k not in have and k not in self._unapplied]
                try:
                    for frame in field.history_frames(st, names):
                        self._runs.add(frame)
                    self._runs.settle()
                except BaseException as exc:
                    self._failed = exc
                    raise
                self._since = since
            # Under the lock too: another thread's earlier day may be adding (and spilling) rows.
            rows = self._runs.select(ids, self._schema, pl.col("cohortDate") >= since)
        return field.history_rows(st, rows)

    def base(self, ids: pl.Series) -> pl.DataFrame:
        """:meth:`Field.base` at this state for ``ids``: read once (it reads every log entry up to
        this state's version) and kept by record bucket, as the history is. Unlike a failed read
        of the history, a failed read of the base keeps nothing, so the next question reads it
        again."""
        with self._lock:
            if self._base is None:  # kept only once whole: a failed read is read again next time
                base = self._field.base(self._st)
                runs = Runs(self._st.n_buckets, self._budget_rows)
                try:
                    runs.add(base)
                    runs.settle()
                except BaseException:
                    runs.close()
                    raise
                self._base = runs
            return self._base.select(ids, self._field.base_schema)

    def close(self) -> None:
        self._runs.close()
        if self._base is not None:
            self._base.close()

    def __enter__(self) -> SharedHistory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
