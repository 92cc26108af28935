"""Consolidation: fold a field's pending transactions into the records, exactly once.

One attempt (repeated by :meth:`Ledger.commit` if another consolidator wins the version):

1. load the state at version N (cached; only newer log entries are read);
2. LIST the field's inbox. A consumed key whose marker this LIST still shows stays consumed (and
   its marker is deleted again); one whose marker is gone leaves the consumed set. So a key leaves
   the set only after a LIST taken after its delete shows the delete happened: a delete's silence
   is never trusted;
3. read the other listed objects, drop rows whose id was already applied (idempotency window) or
   is repeated (first by ``(timestamp, id, object)`` wins), and add the rows held back earlier;
4. fold in event order from each record's current value (:mod:`.eventorder`). Records that cannot
   be folded (an overflow, a custom reducer that raised, a missing record with required
   attributes) are *held*: their rows stay in the state, the other records commit;
5. commit the changed records, their marks, the held rows and the consumed set;
6. after the commit, delete the consumed markers (best effort: step 2 of a later run checks).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from ecanalytics import _runtime, display
from ecanalytics.consolidation.eventorder import before, late_rows, new_marks
from ecanalytics.consolidation.field import Field, SharedHistory
from ecanalytics.consolidation.reducers import Reducer, signed_value
from ecanalytics.consolidation.runs import DEFAULT_BUDGET_ROWS, Runs
from ecanalytics.consolidation.states import (
    MERGEABLE,
    After,
    IdsOf,
    Partial,
    RecordStates,
    Restart,
    StateOutcome,
    after_threshold,
    partial_states,
)
from ecanalytics.errors import ConsolidationError, MissingObjectError
from ecanalytics.ledger import keys
from ecanalytics.ledger.buckets import Part
from ecanalytics.ledger.keys import Resolved
from ecanalytics.ledger.log import Ledger
from ecanalytics.ledger.state import Commit, State
from ecanalytics.ledger.transactions import (
    PlannedObject,
    held_rows,
    pending_schema,
    read_objects,
)

log = logging.getLogger(__name__)
HeldReason = str  # "overflow" | "reducer-error" | "awaiting-record"
LEAN_MAX_CARRIED = 256  # past this many carried consumed keys, a sync write takes the full path
MEMO_ROWS = 100_000  # a fold of at most this many rows keeps the buckets it loads in the cached state
STATE_MAX_ROWS = 40_000_000  # past this many pending rows kept as compact rows (29 B each), spilled runs take over
# ... or past this many records touched: per-record states and their end (joins of every record
# touched, with ids) take about 0.9 KB a record at their peak, and the runs fold a bucket (two halves) at a time.
STATE_MAX_RECORDS = 1_000_000
CHUNK_OBJECTS = 256  # pending objects read at once by a consolidation, at most
COMMUTE_ENTRIES = 16  # commits of other fields a lost race may skip over without folding again
READ_AHEAD = 2  # chunks read and decoded while the caller folds one (one ahead: 4-5% slower at 10^7)
DECODE_THREADS = 4  # objects decoded at once (Polars releases the GIL; each decode is itself parallel)
FIRST_CHUNK_OBJECTS = 8  # ... and in its first read, before it knows how big they are
FOLD_HALVES = 2  # runs per bucket of a spilled consolidation, folded side by side (2 cores)
IDS_OBJECTS = 64  # objects read at once to look up the ids of tied rows (one request each, concurrent)


class _Fallback(Exception):
    """The lean path hands over to the full one."""


@dataclass(frozen=True)
class ConsolidationResult:
    """Summary of one consolidation of one field.

    ``version`` is None when nothing was committed. ``values`` has ``id`` and ``value`` for every
    record this consolidation wrote. ``late`` counts the transactions that sorted before their
    record's latest applied one (folded in event order); ``held`` counts the rows of records that
    could not be folded and stay pending (``held_records`` names them, ``held_reasons`` says why).
    ``duplicates`` counts the occurrences of caller-supplied keys that did not count (see
    :mod:`ecanalytics.ledger.keys`); ``conflicts`` lists those that reused a key for another record,
    operation or amount (``id, originalId, operation, value, timestamp, reason``), which are not
    applied, in event order (``keys.CONFLICT_ORDER``) on every path.
    """

    resource: str
    field: str
    version: int | None
    transactions: int
    duplicates: int
    objects: int
    records: int
    duration_s: float
    values: pl.DataFrame
    late: int = 0
    held: int = 0
    held_records: tuple[str, ...] = ()
    held_reasons: dict[str, int] = dataclasses.field(default_factory=dict)
    engine: dict[str, Any] = dataclasses.field(default_factory=dict)  # a cluster engine's tasks, workers, phases
    conflicts: pl.DataFrame = dataclasses.field(  # reused keys not applied (ledger.keys.CONFLICT_SCHEMA)
        default_factory=lambda: pl.DataFrame(schema=keys.CONFLICT_SCHEMA))

    def __repr__(self) -> str:
        """One line from the result itself (no request), with ``late``, ``held`` and
        ``conflicts`` when there are any."""
        extra = "".join(f", {k}={v}" for k, v in (("late", self.late), ("held", self.held),
                                                   ("conflicts", self.conflicts.height)) if v)
        return (f"ConsolidationResult({self.resource}.{self.field}, version={self.version}, "
                f"transactions={self.transactions}, records={self.records}, objects={self.objects}{extra}, "
                f"{self.duration_s * 1000:.1f} ms)")

    def _repr_html_(self) -> str:
        rows = [(k, len(v) if k == "conflicts" and isinstance(v, list) else v)
                for k, v in self.as_dict().items() if k not in ("resource", "field")]
        preview = self.values.head(5)
        values = "".join(f"{rid}={v}, " for rid, v in preview.iter_rows())
        more = f" … and {self.values.height - preview.height:,} more" if self.values.height > preview.height else ""
        return display.table(f"Consolidation of {self.resource}.{self.field}", ("", "value"), rows,
                             f"values: {values.rstrip(', ')}{more}" if self.values.height else "")

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary (without ``values``)."""
        return {
            "resource": self.resource, "field": self.field, "version": self.version,
            "transactions": self.transactions, "duplicates": self.duplicates, "objects": self.objects,
            "records": self.records, "late": self.late, "held": self.held, "heldRecords": list(self.held_records),
            "heldReasons": dict(self.held_reasons), "durationMs": round(self.duration_s * 1000, 3),
            "conflicts": [
                {**row, "timestamp": row["timestamp"].isoformat()} for row in self.conflicts.iter_rows(named=True)],
            **({"engine": self.engine} if self.engine else {}),
        }


@dataclass(frozen=True)
class Folded:
    """The outcome of folding pending rows: new values, marks, held rows and what was applied."""

    values: pl.DataFrame  # originalId, value
    marks: pl.DataFrame
    held: pl.DataFrame  # transaction rows + ``_reason``
    applied: pl.DataFrame  # the rows that were folded
    late: int
    upserts: pl.DataFrame | None = None  # the full records to write (not for a preview)
    # Rows of ``applied`` that had no effect (dated before a delete-mode cut): consumed, their
    # keys used, but not counted as transactions (they count as late).
    no_effect: int = 0

    @property
    def transactions(self) -> int:
        """The rows folded (``applied`` without those that had no effect)."""
        return self.applied.height - self.no_effect

    @staticmethod
    def concat(parts: Sequence[Folded]) -> Folded:
        """The outcome of several buckets as one."""
        ups = [p.upserts for p in parts if p.upserts is not None]
        return Folded(pl.concat([p.values for p in parts], how="vertical"),
                      pl.concat([p.marks for p in parts], how="vertical"),
                      pl.concat([p.held for p in parts], how="vertical"),
                      pl.concat([p.applied for p in parts], how="vertical"),
                      sum(p.late for p in parts), pl.concat(ups, how="vertical") if ups else None,
                      sum(p.no_effect for p in parts))


@dataclass(frozen=True)
class BucketOutput:
    """What :meth:`Consolidator.fold_unit` returns: the bucket's part (already written), the
    objects it wrote, counts, and the slim fold outcome (values, held rows, caller-supplied ids)."""

    bucket: int
    part: Part
    written: tuple[str, ...]
    transactions: int
    duplicates: int
    folded: Folded


@dataclass
class FoldOutcome:
    """What a fold engine returns to :meth:`Consolidator.run`."""

    read: list[str] = dataclasses.field(default_factory=list)
    missing: list[str] = dataclasses.field(default_factory=list)
    sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    outs: list[Folded] = dataclasses.field(default_factory=list)
    parts: dict[int, Part] = dataclasses.field(default_factory=dict)
    written: list[str] = dataclasses.field(default_factory=list)
    transactions: int = 0
    duplicates: int = 0
    conflicts: pl.DataFrame = dataclasses.field(default_factory=lambda: pl.DataFrame(schema=keys.CONFLICT_SCHEMA))
    dropped: list[pl.DataFrame] = dataclasses.field(default_factory=list)  # ``_object, id`` that did not count
    spilled: bool = False

    def take(self, resolved: Resolved) -> None:
        """Count what the key rule dropped from one resolution."""
        self.duplicates += resolved.retries + resolved.conflicts.height
        if resolved.conflicts.height:
            self.conflicts = pl.concat([self.conflicts, resolved.conflicts], how="vertical").sort(keys.CONFLICT_ORDER)
        self.dropped.append(resolved.dropped)

    def hidden(self, keys_read: Sequence[str]) -> pl.DataFrame:
        """``key, row, id`` of the dropped occurrences (``_object`` indexes ``keys_read``)."""
        return _hidden(self.dropped, keys_read)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)  # the engine's own (tasks, workers, phases)

    def add(self, unit: BucketOutput) -> None:
        self.outs.append(unit.folded)
        self.parts[unit.bucket] = unit.part
        self.written += unit.written
        self.transactions += unit.transactions
        self.duplicates += unit.duplicates


def _no_ids(wanted: pl.DataFrame) -> pl.DataFrame:
    """The ``ids_of`` of a fold in the aggregates form, which never asks (only compact rows do)."""
    raise AssertionError("the aggregates form looks no id up")


def _hidden(dropped: Sequence[pl.DataFrame], keys_read: Sequence[str]) -> pl.DataFrame:
    """``key, row, id`` of the occurrences the key rule dropped (``_object, _row, id`` frames whose
    ``_object`` indexes ``keys_read``): what a commit records so that readers hide them."""
    frames = [d for d in dropped if d.height]
    if not frames:
        return pl.DataFrame(schema=keys.HIDDEN_SCHEMA)
    rows = pl.concat(frames, how="vertical")
    names = pl.Series("key", list(keys_read), dtype=pl.String)
    return pl.DataFrame({"key": names.gather(rows["_object"]), "row": rows["_row"], "id": rows["id"]})


FoldEngine = Callable[[State, list[str], pl.DataFrame, int, str], FoldOutcome]  # (state, keys, held, version, token)


class Consolidator(Field):
    """Folds one managed field's pending transactions into its records and commits them, exactly
    once (the field's read model, which maintenance and analytics use too, is :class:`Field`)."""

    def __init__(self, ledger: Ledger, field: str, reducer: Callable[[], Reducer], default: Any,
                 dtype: pl.DataType | None = None, tz: str = "UTC") -> None:
        super().__init__(ledger, field, reducer, default, dtype, tz)
        self.budget_rows = DEFAULT_BUDGET_ROWS  # pending rows held in memory before runs spill to disk

    # -- folding ---------------------------------------------------------------------------
    def _needs_record(self) -> bool:
        """A record created by consolidation would lack a required attribute without a default."""
        return any(a.required and a.default is None for n, a in self.ledger.schema.attributes.items()
                   if n not in ("id", self.field))

    def _call(self, reducer: Reducer, rows: pl.DataFrame, current: pl.DataFrame) -> tuple[pl.DataFrame, list[str]]:
        """Run ``reducer``; a record whose custom reducer fails is left out and named."""
        failed: list[str] = []
        while True:
            try:
                return reducer(rows, current, self.default), failed
            except ConsolidationError as exc:
                if exc.record_id is None:
                    raise
                log.error("%s: %s; that record's transactions are held back.", self.dataset, exc)
                failed.append(exc.record_id)
                rows = rows.filter(pl.col("originalId") != exc.record_id)

    def _applied_after(self, st: State, unapplied: frozenset[str], late_sets: pl.DataFrame,
                       history: SharedHistory | None = None) -> pl.DataFrame:
        """``originalId, _extra``: the signed sum of applied add/sub rows after each late set, from
        ``history`` (a :class:`~ecanalytics.consolidation.field.SharedHistory`, which knows its own
        ``unapplied``) or else read from the store (:meth:`history`)."""
        since = late_sets.select(pl.col("_ts").min().dt.convert_time_zone(self.tz).dt.date()).item()
        hist = (history(since, late_sets["originalId"]) if history is not None
                else self.history(st, unapplied, since=since, ids=late_sets["originalId"]))
        return (
            hist.filter(pl.col("operation") != "set").join(late_sets, on="originalId")
            .filter(~before("timestamp", "id", "_ts", "_id"))
            .group_by("originalId").agg(signed_value().sum().cast(self.dtype, strict=False).alias("_extra"))
        )

    def _after_late_sets(self, st: State, unapplied: frozenset[str], values: pl.DataFrame,
                         late_sets: pl.DataFrame, history: SharedHistory | None = None) -> pl.DataFrame:
        """``values`` plus, for each record whose pending last set is late, the applied add/sub
        rows after it (:meth:`_applied_after`)."""
        return values.join(self._applied_after(st, unapplied, late_sets, history), on="originalId", how="left").select(
            "originalId", (pl.col("value") + pl.col("_extra").fill_null(0)).cast(self.dtype, strict=False).alias("value"))

    def fold(self, st: State, rows: pl.DataFrame, unapplied: frozenset[str] = frozenset(), *,
             preview: bool = False) -> Folded:
        """Fold ``rows`` in event order on top of ``st``, loading only the buckets of their records
        (kept in ``st`` when the fold is small, let go when it is big); see :mod:`.eventorder` for
        late data. ``preview`` (a read, not a commit) folds rows of a record that does not exist yet
        too, and computes no upserts."""
        return self.fold_bucket(st.restrict_to(rows["originalId"].unique(), memo=rows.height <= MEMO_ROWS), rows,
                                unapplied, preview=preview)

    def fold_bucket(self, st: State, rows: pl.DataFrame, unapplied: frozenset[str] = frozenset(), *,
                    preview: bool = False, history: SharedHistory | None = None) -> Folded:
        """:meth:`fold` on ``st`` restricted (:meth:`State.restrict`) to the buckets of ``rows``:
        records fold independently, so one bucket at a time or all at once give the same values.
        ``history`` answers the late rows' questions (see :meth:`_applied_after`)."""
        if not preview and (folded := self._fold_rows_states(st, rows, unapplied, history)) is not None:
            return folded
        rows = self._typed(rows)
        reducer = self.reducer()
        held: list[pl.DataFrame] = []

        def hold(ids: pl.Series | list[str], reason: HeldReason) -> None:
            nonlocal rows
            mask = pl.col("originalId").is_in(pl.Series(ids, dtype=pl.String).implode())
            held.append(rows.filter(mask).drop("_object", "_row").with_columns(pl.lit(reason).alias("_reason")))
            rows = rows.filter(~mask)

        if not preview and self._needs_record() and rows.height:
            waiting = rows.join(st.records.select(pl.col("id").alias("originalId")), on="originalId", how="anti")
            if waiting.height:
                hold(waiting["originalId"].unique(), "awaiting-record")
        marks = st.field_marks(self.field)
        late = late_rows(rows, marks)
        if (deleted := self.deleted_before(st)) is not None:  # see deleted_before: no effect
            gone = (rows["timestamp"] < deleted).fill_null(False)
            # Applied with no effect: their keys are used all the same (a retry later is a retry).
            no_effect = rows.filter(gone)
            late, rows = (late | gone).filter(~gone), rows.filter(~gone)
        else:
            no_effect = rows.clear()
        current = st.records.select(pl.col("id").alias("originalId"), pl.col(self.field).alias("current"))
        failed: list[str] = []
        if reducer.name == "default":
            kept = rows.join(marks, on="originalId", how="left", maintain_order="left").filter(
                ~before("timestamp", "id", "setTs", "setId")).select(rows.columns)
            values, failed = self._call(reducer, kept, current)
            late_sets = (
                kept.filter(pl.col("operation") == "set").sort("timestamp", "id").group_by("originalId")
                .agg(pl.col("timestamp").last().alias("_ts"), pl.col("id").last().alias("_id"))
                .join(marks, on="originalId").filter(before("_ts", "_id", "maxTs", "maxId"))
                .select("originalId", "_ts", "_id")
            )
            if late_sets.height:
                values = self._after_late_sets(st, unapplied, values, late_sets, history)
        elif reducer.name == "last":
            values, failed = self._call(reducer, rows.filter(~late), current)
        elif reducer.is_builtin:
            values, failed = self._call(reducer, rows, current)
        else:
            late_ids = rows.filter(late)["originalId"].unique()
            values, failed = self._call(reducer, rows.filter(~pl.col("originalId").is_in(late_ids.implode())), current)
            if late_ids.len():  # the slow path: fold those records again from their base
                hist = (history(dt.date.min, late_ids) if history is not None
                        else self.history(st, unapplied, ids=late_ids)).select(rows.columns)
                again = pl.concat([hist, rows.filter(pl.col("originalId").is_in(late_ids.implode())).cast(hist.schema)])  # type: ignore[arg-type]
                redone, failed_late = self._call(reducer, again, history.base(late_ids) if history is not None else self.base(st))
                values, failed = pl.concat([values, redone]), failed + failed_late
        if failed:
            hold(failed, "reducer-error")
            values = values.filter(~pl.col("originalId").is_in(pl.Series(failed, dtype=pl.String).implode()))
        finite = self.fits()
        bad = values.filter(~finite)
        if bad.height:
            log.error("%s: %d record(s) would get a value the field cannot hold (non-finite, or past a decimal's "
                      "precision; first: %r); their transactions are held back.",
                      self.dataset, bad.height, bad.row(0))
            hold(bad["originalId"], "overflow")
            values = values.filter(finite)
        held_rows = (pl.concat([h.cast(self._held_schema) for h in held]) if held  # type: ignore[arg-type]
                     else pl.DataFrame(schema=self._held_schema))
        return Folded(values, new_marks(rows, marks, self.field), held_rows,
                      pl.concat([rows, no_effect], how="vertical") if no_effect.height else rows,
                      (int(late.sum()) if late.len() else 0) + no_effect.height,
                      None if preview else self._upserts(st, values), no_effect.height)

    def _upserts(self, st: State, new: pl.DataFrame) -> pl.DataFrame:
        values = new.rename({"originalId": "id", "value": "_new"})
        existing = (
            st.records.filter(pl.col("id").is_in(values["id"].implode())).join(values, on="id", how="inner")
            .with_columns(pl.col("_new").alias(self.field)).drop("_new")
        )
        missing = values.join(existing.select("id"), on="id", how="anti")
        if missing.height == 0:
            return existing
        schema = self.ledger.schema
        created = missing.select(
            [
                pl.col("id") if name == "id"
                else pl.col("_new").alias(name) if name == self.field
                else pl.lit(attr.default, dtype=attr.dtype).alias(name)
                for name, attr in schema.attributes.items()
            ]
        )
        return pl.concat([existing, created.cast(schema.polars_schema)], how="vertical")  # type: ignore[arg-type]

    def fold_unit(self, st: State, k: int, rows: pl.DataFrame, keyed: pl.DataFrame, version: int,
                  token: str, history: SharedHistory | None = None) -> BucketOutput:
        """The per-bucket unit of work: fold bucket ``k``'s pending ``rows`` with generated ids and
        its ``keyed`` rows (caller-supplied keys and held rows, already resolved for the whole field
        by :meth:`resolve`) against ``st`` restricted to that bucket, and write the bucket's delta
        and marks for the commit of ``version``, named with ``token`` (the same inputs give the
        same objects, so a rerun task overwrites what a killed one left). It never commits.
        ``history`` answers the late rows' questions (see :meth:`_applied_after`)."""
        rows = pl.concat([rows, keyed.select(rows.columns).cast(rows.schema)], how="vertical")  # type: ignore[arg-type]
        folded = self.fold_bucket(st.restrict([k]), rows, history=history)
        return self._bucket_output(k, folded, folded.transactions, version, token)

    def _chunks(self, candidates: list[str], out: FoldOutcome) -> Iterator[tuple[pl.DataFrame, pl.DataFrame]]:
        """The pending rows of ``candidates``, read in chunks sized from what was read so far, so
        that one chunk holds at most about a quarter of the budget's rows (objects may hold one
        row or millions), as (rows with generated ids, rows with caller-supplied keys); ``out``
        receives what was read, missing, and the sizes.

        The next :data:`READ_AHEAD` chunks are read and decoded while the caller folds this one:
        the fold is mostly single-threaded NumPy and the decode runs on Polars' threads, so the
        two overlap on two cores, and with two chunks ahead the reading (the slower side) never
        waits for the fold to take a chunk. At most three chunks are in memory at once."""
        with _runtime.executor(DECODE_THREADS) as pool, _runtime.executor(READ_AHEAD) as ahead:
            def read(i: int, n: int) -> tuple[pl.DataFrame, pl.DataFrame, list[str], list[str]]:
                rows, got, miss = read_objects(self.store, candidates[i:i + n], value_dtype=self.dtype,
                                               field=self.field, start=i, sizes=out.sizes, pool=pool)
                if not rows.height or rows.select(keys.generated().all()).item():
                    return rows, rows.clear(), got, miss
                return rows.filter(keys.generated()), rows.filter(~keys.generated()), got, miss
            i, n = FIRST_CHUNK_OBJECTS, FIRST_CHUNK_OBJECTS
            reading = collections.deque([ahead.submit(read, 0, n)] if candidates else [])
            while reading:
                rows, keyed, got, miss = reading.popleft().result()
                n = max(1, min(CHUNK_OBJECTS,
                               self.budget_rows // 4 // max(1, (rows.height + keyed.height) // max(1, len(got)))))
                while len(reading) < READ_AHEAD and i < len(candidates):
                    reading.append(ahead.submit(read, i, n))
                    i += n
                out.read += got
                out.missing += miss
                yield rows, keyed

    def _ids_of(self, candidates: list[str]) -> Callable[[pl.DataFrame], pl.DataFrame]:
        """``_object, _row`` -> ``_object, _row, id``, read again from the objects (for the few
        rows whose order at one instant their id decides; see :mod:`.states`), up to
        :data:`IDS_OBJECTS` objects at a time, read concurrently."""
        def ids_of(wanted: pl.DataFrame) -> pl.DataFrame:
            objects = wanted["_object"].unique().sort().to_list()
            frames = []
            for i in range(0, len(objects), IDS_OBJECTS):
                batch = objects[i:i + IDS_OBJECTS]
                rows, _got, miss = read_objects(self.store, [candidates[o] for o in batch], value_dtype=self.dtype)
                if miss:
                    gone = self.store.url(miss[0])
                    raise MissingObjectError(f"{gone} was read by this consolidation and is gone now; consolidate "
                                             "again.", key=gone)
                # ``_object`` counts within the batch (nothing is missing); back to the candidates'.
                frames.append(rows.select(pl.lit(pl.Series(batch, dtype=pl.UInt32)).gather(pl.col("_object"))
                                          .alias("_object"), "_row", "id"))
            return pl.concat(frames, how="vertical").join(wanted.unique(), on=["_object", "_row"], how="semi")
        return ids_of

    def _fold_states(self, st: State, candidates: list[str], held: pl.DataFrame) -> FoldOutcome | None:
        """Fold a built-in mergeable reducer into per-record states (:mod:`.states`), chunk by
        chunk, without holding the pending rows; None when this fold is not for them (a reducer
        that does not merge, a decimal field, records that must exist first, a ``delete``-mode retention, more
        compact rows than :data:`STATE_MAX_ROWS`, records than :data:`STATE_MAX_RECORDS` or caller keys
        than the budget, a non-finite result): :meth:`_fold_local` then takes the general path."""
        reducer = self._merges(st)
        if reducer is None:
            return None
        compact = False
        while True:
            out = FoldOutcome(stats={"fold": "states"})
            states = RecordStates(reducer.name, compact=compact)
            keyed: list[pl.DataFrame] = []
            try:
                for rows, keyed_rows in self._chunks(candidates, out):
                    if keyed_rows.height:
                        keyed.append(keyed_rows)
                    states.add(rows)
                    # Compact rows past the limit, or on course to pass it (the compact rows per
                    # object read so far, times the objects): hand over to the runs before
                    # holding them.
                    expected = states.compact_rows * len(candidates) // max(1, len(out.read) + len(out.missing))
                    if (max(states.compact_rows, expected) > STATE_MAX_ROWS or states.records > STATE_MAX_RECORDS
                            or sum(k.height for k in keyed) > self.budget_rows):
                        return None
                if not out.read and not held.height:
                    return out
                resolved = self.resolve(st, pl.concat(keyed, how="vertical") if keyed
                                        else pl.DataFrame(schema=pending_schema(self.dtype)), held)
                states.add(resolved.kept.cast(pending_schema(self.dtype)), exact=True)  # type: ignore[arg-type]
                done, rs = self._finish_states(st, states, self._ids_of(candidates))
            except Restart:
                compact = True
                continue
            out.take(resolved)
            values = self._state_values(st, done)
            if values is None:
                return None  # the general path holds those records back
            out.stats["form"] = states.form
            out.outs.append(Folded(values, done.marks, pl.DataFrame(schema=self._held_schema), resolved.kept,
                                   done.late, self._upserts(rs, values)))
            out.transactions = states.rows
            return out

    def _merges(self, st: State) -> Reducer | None:
        """The reducer, if this field folds into per-record states (:mod:`.states`): a built-in
        mergeable reducer of a number field whose records need not exist first, with no
        ``delete``-mode retention cut."""
        reducer = self.mergeable()
        return None if reducer is None or self.deleted_before(st) is not None else reducer

    def mergeable(self) -> Reducer | None:
        """The reducer, if it folds into per-record states whatever the state (:meth:`_merges`
        also asks the state): a built-in mergeable reducer of a number field whose records need
        not exist first."""
        reducer = self.reducer()
        if (not reducer.is_builtin or reducer.name not in MERGEABLE or self.dtype != pl.Float64
                or self._needs_record()):
            return None
        return reducer

    def _touched_state(self, st: State, states: RecordStates) -> tuple[State, pl.Series]:
        """``st`` restricted to the buckets of the records ``states`` touched, and those records."""
        touched = states.touched()
        return st.restrict_to(touched, memo=states.rows <= MEMO_ROWS), touched

    def _finish_states(self, st: State, states: RecordStates, ids_of: IdsOf,
                       after: After | None = None) -> tuple[StateOutcome, State]:
        """The end of a states fold: ``states`` merged with the current values and marks of the
        records it touched (``st`` restricted to their buckets, also returned). ``after`` gives
        the second round of partial states from the thresholds (:meth:`RecordStates.thresholds`)."""
        rs, touched = self._touched_state(st, states)
        # Only the records touched: the buckets loaded hold every record of theirs.
        current = (rs.records.filter(pl.col("id").is_in(touched.implode())) if rs.records.height
                   else rs.records).select(pl.col("id").alias("originalId"), pl.col(self.field).alias("current"))
        return states.finish(current, rs.field_marks(self.field, touched), self.default, self.field, ids_of, after), rs

    def _state_values(self, st: State, done: StateOutcome, unapplied: frozenset[str] = frozenset(),
                      history: SharedHistory | None = None) -> pl.DataFrame | None:
        """The values of a states fold (the applied rows after late sets added), or None if one
        is not finite (the general path holds that record back and says why)."""
        values = done.values
        if done.late_sets.height:
            values = self._after_late_sets(st, unapplied, values, done.late_sets, history)
        return values if values.select(self.fits().all()).item() else None

    def _fold_frames_states(self, st: State, frames: Callable[[], Iterable[pl.DataFrame]],
                            unapplied: frozenset[str] = frozenset(),
                            history: SharedHistory | None = None) -> tuple[Folded, int] | None:
        """Fold the rows that ``frames()`` yields (in memory or read again from local runs on each
        call) through per-record states, holding one frame at a time: (the outcome, whose
        ``applied`` holds only the rows with caller-supplied keys; the rows folded), or None when
        the field does not fold that way or a value would not be finite. Rows read from objects
        fold as compact rows without their ids (the few ties find theirs among the frames again);
        held rows, which name no object, keep theirs."""
        reducer = self._merges(st)
        if reducer is None:
            return None
        placed = pl.col("_object").is_not_null() & pl.col("_row").is_not_null()

        def ids_of(wanted: pl.DataFrame) -> pl.DataFrame:
            found = [f.filter(placed).select("_object", "_row", "id").join(wanted.unique(), on=["_object", "_row"],
                                                                            how="semi") for f in frames()]
            return pl.concat(found, how="vertical")

        for compact in (False, True):
            states = RecordStates(reducer.name, compact=compact)
            applied: list[pl.DataFrame] = []
            try:
                for rows in frames():
                    if rows["_object"].null_count() or rows["_row"].null_count():
                        states.add(rows.filter(placed))
                        states.add(rows.filter(~placed), exact=True)
                    else:
                        states.add(rows)
                    applied.append(rows.filter(~keys.generated()))
                if not states.rows:
                    return None
                done, rs = self._finish_states(st, states, ids_of)
            except Restart:
                continue
            values = self._state_values(st, done, unapplied, history)
            if values is None:
                return None
            return Folded(values, done.marks, pl.DataFrame(schema=self._held_schema), pl.concat(applied, how="vertical"),
                          done.late, self._upserts(rs, values)), states.rows
        return None  # (compact rows never restart)

    def _fold_rows_states(self, st: State, rows: pl.DataFrame, unapplied: frozenset[str],
                          history: SharedHistory | None = None) -> Folded | None:
        """:meth:`fold_bucket` of rows in memory (a sync write's, a cluster fold task's) through
        per-record states (:meth:`_fold_frames_states`); None when it does not apply."""
        folded = self._fold_frames_states(st, lambda: [rows], unapplied, history)
        return None if folded is None else dataclasses.replace(folded[0], applied=rows)

    def _from_partials(self, st: State, k: int, partials: list[Partial],
                       keyed: pl.DataFrame) -> tuple[State, RecordStates] | None:
        """``st`` restricted to bucket ``k``, and the per-record states merged from ``partials``
        and the ``keyed`` rows; None when the field does not fold that way here."""
        st = st.restrict([k])
        reducer = self._merges(st)
        if reducer is None:
            return None
        states = RecordStates(reducer.name, compact=False)
        for partial in [*partials, partial_states(keyed.cast(pending_schema(self.dtype)), reducer.name)]:  # type: ignore[arg-type]
            states.add_partial(partial)
        return (st, states) if states.rows else None

    def partial_thresholds(self, st: State, k: int, partials: list[Partial], keyed: pl.DataFrame) -> pl.DataFrame | None:
        """The first round of a fold from partial states with a ``set`` among them: bucket ``k``'s
        thresholds (:meth:`RecordStates.thresholds`), which every piece of its rows then answers
        with :func:`~ecanalytics.consolidation.states.after_threshold`; None when the field does
        not fold that way here."""
        merged = self._from_partials(st, k, partials, keyed)
        if merged is None:
            return None
        rs, touched = self._touched_state(*merged)
        return merged[1].thresholds(rs.field_marks(self.field, touched))

    def fold_partials(self, st: State, k: int, partials: list[Partial], keyed: pl.DataFrame, version: int,
                      token: str, after: list[tuple[pl.DataFrame, int] | None] | None = None) -> BucketOutput | None:
        """:meth:`fold_unit` of bucket ``k`` from partial states of its rows
        (:func:`~ecanalytics.consolidation.states.partial_states`, one per cluster partition task)
        and its resolved ``keyed`` rows. Without ``after`` that is one round, exact when no
        ``set`` is among the rows and none is dated at or before its record's applied marks;
        ``after`` is the second round (:func:`~ecanalytics.consolidation.states.after_threshold`
        of each piece of the rows against :meth:`partial_thresholds`), exact in every case. None
        when the result would not be exact (the caller then asks for the second round, or folds
        the rows), or a value is not finite, or the field does not fold that way here."""
        merged = self._from_partials(st, k, partials, keyed)
        if merged is None or (after is None and merged[1].has_sets) or (after is not None and None in after):
            return None
        st, states = merged
        reducer = states.reducer

        def second(table: pl.DataFrame) -> tuple[pl.DataFrame, int]:
            pieces = [*(a for a in after or [] if a is not None), after_threshold(keyed, table, reducer)]
            return pl.concat([p[0] for p in pieces], how="vertical"), sum(p[1] for p in pieces)

        try:
            done, rs = self._finish_states(st, states, _no_ids, second if after is not None else None)
        except Restart:
            return None
        values = self._state_values(st, done)
        if values is None:
            return None
        folded = Folded(values, done.marks, pl.DataFrame(schema=self._held_schema), keyed, done.late,
                        self._upserts(rs, values))
        return self._bucket_output(k, folded, states.rows, version, token)

    def _fold_spilled(self, st: State, k: int, halves: list[int], runs: Runs, version: int,
                      token: str, history: SharedHistory) -> BucketOutput:
        """:meth:`fold_unit` of bucket ``k`` of spilled ``runs`` (its keyed rows among them), whose
        rows are in the runs ``halves`` (:data:`FOLD_HALVES` runs per bucket): through per-record
        states a frame of spill files at a time when the field merges, each half of the bucket's
        records on a thread of its own, so memory holds the bucket's records, not its rows; else
        the bucket's rows at once. ``history`` answers the late rows' questions (one
        :class:`~ecanalytics.consolidation.field.SharedHistory` for all buckets)."""
        # The two halves fold side by side: one fold alone left a core a third idle (the main
        # thread's NumPy and Python are its critical path), and each half holds half the records.
        # Frames of about a read chunk's rows between them (not one spill file's): at 10^8 rows
        # over 10^7 records a spill file holds about one row per record, most of them their
        # record's latest so far (which the states keep with its id); in 10^6-row frames half are.
        rk = st.restrict([k])  # read once: both halves' records and marks are in it
        frame_rows = self.budget_rows // 4 // FOLD_HALVES
        folded = (_runtime.each(lambda j: self._fold_frames_states(rk, lambda: runs.frames(j, frame_rows),
                                                                   history=history), halves, FOLD_HALVES)
                  if halves and self._merges(rk) is not None else [None])
        if None in folded:
            schema = pending_schema(self.dtype)
            rows = pl.concat([runs.take(j, schema) for j in halves], how="vertical") if halves else pl.DataFrame(
                schema=schema)
            return self.fold_unit(rk, k, rows, pl.DataFrame(schema=schema), version, token, history)  # rk: not read again
        return self._bucket_output(k, Folded.concat([f[0] for f in folded if f is not None]),
                                   sum(f[1] for f in folded if f is not None), version, token)

    def _bucket_output(self, k: int, folded: Folded, transactions: int, version: int, token: str) -> BucketOutput:
        """Write bucket ``k``'s delta and marks for the commit of ``version`` (named with
        ``token``) and keep what the driver needs of ``folded``."""
        part, written = self.ledger.put_part(version, token, (f"delta-b{k}", f"marks-b{k}"), folded.upserts,
                                             folded.marks)
        return BucketOutput(k, part, tuple(written), transactions, 0,
                            dataclasses.replace(folded, upserts=None, marks=folded.marks.clear(),
                                                applied=self._typed(folded.applied.filter(~keys.generated()))))

    def _typed(self, rows: pl.DataFrame) -> pl.DataFrame:
        """``rows`` with the transaction columns in their own types (a cluster fold task's rows
        keep ``operation``, ``field`` and ``source`` as they travelled: see
        :func:`~ecanalytics.consolidation.cluster.fold_task`)."""
        schema = {c: t for c, t in pending_schema(self.dtype).items() if c in rows.columns and rows.schema[c] != t}
        return rows.cast(schema) if schema else rows  # type: ignore[arg-type]

    def _fold_local(self, st: State, candidates: list[str], held: pl.DataFrame, version: int,
                    token: str) -> FoldOutcome:
        """Read and fold in this process (see :meth:`run`): into per-record states when the
        reducer merges (:meth:`_fold_states`), else through runs."""
        if (folded := self._fold_states(st, candidates, held)) is not None:
            return folded
        out = FoldOutcome()
        # Rows with caller-supplied keys go to runs split by id, so the key rule can be applied to
        # all occurrences of a key at once (one id bucket at a time), whatever the record.
        # Each bucket's rows spill as FOLD_HALVES runs (a bucket's halves by the same hash:
        # run j is in bucket j // FOLD_HALVES), which fold side by side (:meth:`_fold_spilled`).
        with Runs(st.n_buckets * FOLD_HALVES, self.budget_rows // 2) as runs, \
                Runs(st.n_buckets, self.budget_rows // 2, column="id") as keyed:
            for rows, keyed_rows in self._chunks(candidates, out):
                if keyed_rows.height:
                    keyed.add(keyed_rows)
                runs.add(rows)
            if not out.read and not held.height:
                return out
            schema = pending_schema(self.dtype)
            if not runs.spilled and not keyed.spilled:  # the common case: everything at once
                resolved = self.resolve(st, keyed.take_all(schema), held)
                out.take(resolved)
                rows = pl.concat([runs.take_all(schema), resolved.kept.cast(schema)], how="vertical")  # type: ignore[arg-type]
                out.outs.append(self.fold(st, rows))
                out.transactions = out.outs[0].transactions
                return out
            keyed.add(held_rows(held, self.dtype))
            for j in keyed.buckets():  # one id bucket at a time: every occurrence of its keys
                resolved = keys.resolve(keyed.take(j, schema), st.applied_keys(self.field))
                out.take(resolved)
                runs.add(resolved.kept)
            out.spilled = True
            # No rows left (every one a retry or a conflict): still one fold, so that the commit
            # consumes the objects (and records what it dropped), as the Dask engine does.
            halves: dict[int, list[int]] = {}
            for j in runs.buckets():
                halves.setdefault(j // FOLD_HALVES, []).append(j)
            # The late rows of every bucket ask one history (and base), read from the store once.
            with self.shared_history(st, frozenset(), self.budget_rows // 4) as history:
                for k in sorted(halves) or [0]:
                    out.add(self._fold_spilled(st, k, halves.get(k, []), runs, version, token, history))
        return out

    def run(self, engine: FoldEngine | None = None) -> ConsolidationResult:
        """Consolidate everything pending for this field; see the module docstring.

        The pending objects are streamed, in chunks of at most :data:`CHUNK_OBJECTS` objects and
        about a quarter of ``budget_rows`` rows, into per-bucket runs
        (:class:`~ecanalytics.consolidation.runs.Runs`). Past ``budget_rows`` pending rows the
        runs spill to local disk and each bucket is folded alone (:meth:`fold_unit`) against that
        bucket's state, its delta written at once, so peak memory is bounded by one bucket's
        pending rows and state (plus the ``values`` of the result), not by the totals.
        ``engine`` folds elsewhere (a Dask cluster: :mod:`ecanalytics.cluster`); this process
        still plans, and writes the one commit."""
        started = time.perf_counter()
        done: dict[str, Any] = {}
        kept: list[tuple[State, pl.DataFrame, Commit]] = []  # the last fold: its state, values and commit

        def build(st: State) -> Commit | None:
            if kept and self._commutes(kept[0][0], st):
                # Lost to commits of other fields only: they touched nothing this fold read, so
                # the fold stands; only the records written are rebuilt on the new state, so
                # that they carry the other fields' new values.
                _before, values, change = kept[0]
                change = dataclasses.replace(change, upserts=self._upserts(st.restrict_to(values["originalId"]), values))
                kept[0] = (st, values, change)
                done["state"] = st
                stats = done.setdefault("engine", {})
                stats["commuted"] = stats.get("commuted", 0) + 1
                return change
            kept.clear()
            inbox, carried, _stale, unlisted, candidates = self._scan(st, cleanup=True)
            held = self.held_frame(st)
            done["state"], done["markers"] = st, []
            if not candidates and not held.height:
                return None
            version, token = st.version + 1, _runtime.token()
            out = (engine or self._fold_local)(st, candidates, held, version, token)
            done["engine"] = out.stats
            if not out.read and not held.height:
                return None
            folded = Folded.concat(out.outs) if out.outs else None
            if folded is None or (not out.read and folded.held.height == held.height):
                self.store.delete(out.written)
                return None  # only held rows, and they are still stuck
            done["markers"], done["values"] = [inbox.markers[k] for k in out.read], folded.values
            change = Commit(
                kind="consolidate",
                upserts=folded.upserts,
                field=self.field,
                consumed=frozenset(out.read) | carried,
                unlisted=unlisted,
                applied_ids=keys.applied_keys(folded.applied),
                held=folded.held,
                marks=folded.marks,
                parts=out.parts or None,
                written=tuple(out.written),
                applied={k: out.sizes.get(k) for k in out.read},
                conflicts=out.conflicts, hidden=out.hidden(candidates),
                stats={"transactions": out.transactions, "duplicates": out.duplicates, "objects": len(out.read),
                       "records": folded.values.height, "late": folded.late, "held": folded.held.height,
                       "spilled": out.spilled},
            )
            if not out.parts and not out.written and folded.upserts is not None:  # those are objects named for this version
                kept.append((st, folded.values, change))
            return change

        outcome = self.ledger.commit(build)
        elapsed = time.perf_counter() - started
        if outcome is None:
            empty = pl.DataFrame(schema={"id": pl.String(), "value": self.dtype})
            held = self.held_frame(done["state"])
            return ConsolidationResult(self.ledger.resource, self.field, None, 0, 0, 0, 0, elapsed, empty,
                                       held=held.height, engine=done.get("engine", {}), **self._held_summary(held))
        state, change = outcome
        self._delete_markers(done["markers"])  # best effort; the next LIST checks
        assert change.held is not None
        values = done["values"].rename({"originalId": "id"})
        stats = change.stats
        return ConsolidationResult(
            self.ledger.resource, self.field, state.version, stats["transactions"], stats["duplicates"],
            stats["objects"], stats["records"], elapsed, values, stats["late"], stats["held"],
            engine=done.get("engine", {}), conflicts=self._conflicts(change), **self._held_summary(change.held),
        )

    def _commutes(self, before: State, after: State) -> bool:
        """True when every commit from ``before`` to ``after`` consolidated another field (at most
        :data:`COMMUTE_ENTRIES` of them): it wrote that field's values, marks, keys and sets only,
        nothing a fold of this field reads, so a fold built on ``before`` is still exact on
        ``after`` (delta-rs's conflict check, by field). Any other kind of commit (records
        written through the API, a recalculation, retention, compaction, new buckets) or a
        commit of this field means folding again."""
        if not before.version < after.version <= before.version + COMMUTE_ENTRIES or after.n_buckets != before.n_buckets:
            return False
        for v in range(before.version + 1, after.version + 1):
            entry = self.ledger.read_entry(v)
            if entry is None or entry.kind != "consolidate" or entry.field in (None, self.field):
                return False
        return True

    def run_known(self, objects: Sequence[PlannedObject], after: int) -> ConsolidationResult | None:
        """The lean path of a sync writer: commit the objects it just wrote, which it holds, with
        no LIST and no GET of them; None when the lean path cannot decide (the caller then runs
        :meth:`run`).

        Steps on the critical path: the log probe (one GET), then the create-only log entry (one
        PUT; a small delta travels inside it). Exactly once holds without a LIST because an
        object is skipped when the state's consumed set holds it *or* a version after ``after``
        (the version this process had seen before the objects were written) consumed it, which
        this process knows from the versions it replayed. Consumed keys are all carried, and no
        marker is deleted here: the next full consolidation deletes them and, once a LIST shows
        them gone, drops them; past :data:`LEAN_MAX_CARRIED` carried keys the full path runs.
        """
        started = time.perf_counter()
        by_key = {o.key: o for o in objects}
        done: dict[str, Any] = {}

        def build(st: State) -> Commit | None:
            consumed = st.consumed.get(self.field, frozenset())
            taken = self.ledger.consumed_since(self.field, by_key, after)
            if taken is None or len(consumed) > LEAN_MAX_CARRIED:
                raise _Fallback
            mine = sorted(k for k in by_key if k not in consumed and k not in taken)
            if not mine:
                return None
            rows = pl.concat([by_key[k].rows.with_columns(pl.lit(i, pl.UInt32).alias("_object"),
                                                          pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"))
                              for i, k in enumerate(mine)], how="vertical")
            held = self.held_frame(st)
            # Held rows of the records written fold again; those with a key written here stand like
            # applied occurrences of it (the key rule must see them, whatever their record).
            again = (pl.col("originalId").is_in(rows["originalId"].unique().implode())
                     | pl.col("id").is_in(rows["id"].unique().implode()))
            resolved = self.resolve(st, rows, held.filter(again))
            folded = self.fold(st, resolved.kept, frozenset(mine))
            kept = held.filter(~again)
            upserts = folded.upserts
            assert upserts is not None
            done["objects"] = len(mine)
            return Commit(
                kind="consolidate", upserts=upserts, field=self.field, consumed=consumed | frozenset(mine),
                applied={k: by_key[k].size for k in mine},
                unlisted=st.unlisted.get(self.field, frozenset()) | frozenset(mine),
                applied_ids=keys.applied_keys(folded.applied), held=pl.concat([kept, folded.held.cast(kept.schema)]),  # type: ignore[arg-type]
                marks=folded.marks, conflicts=resolved.conflicts,
                hidden=_hidden([resolved.dropped], mine),
                stats={"transactions": folded.transactions, "duplicates": resolved.retries + resolved.conflicts.height,
                       "objects": len(mine), "records": upserts.height, "late": folded.late,
                       "held": folded.held.height, "lean": True},
            )

        try:
            outcome = self.ledger.commit(build)
        except _Fallback:
            return None
        elapsed = time.perf_counter() - started
        if outcome is None:
            return ConsolidationResult(self.ledger.resource, self.field, None, 0, 0, 0, 0, elapsed,
                                       pl.DataFrame(schema={"id": pl.String(), "value": self.dtype}))
        state, change = outcome
        assert change.upserts is not None and change.held is not None
        stats = change.stats
        return ConsolidationResult(
            self.ledger.resource, self.field, state.version, stats["transactions"], stats["duplicates"],
            stats["objects"], stats["records"], elapsed, change.upserts.select("id", pl.col(self.field).alias("value")),
            stats["late"], stats["held"], conflicts=self._conflicts(change), **self._held_summary(change.held),
        )

    @staticmethod
    def _conflicts(change: Commit) -> pl.DataFrame:
        return change.conflicts if change.conflicts is not None else pl.DataFrame(schema=keys.CONFLICT_SCHEMA)

    @staticmethod
    def _held_summary(held: pl.DataFrame) -> dict[str, Any]:
        if not held.height:
            return {}
        reasons = held.group_by("_reason").len().sort("_reason")
        return {"held_records": tuple(sorted(held["originalId"].unique().to_list())),
                "held_reasons": dict(zip(reasons["_reason"].to_list(), reasons["len"].to_list(), strict=True))}
