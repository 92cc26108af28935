"""The state model: what a resource holds at one version, and what one commit changes.

:class:`State` is the committed state at a version (buckets of records and event-time marks,
and per managed field the consumed and unlisted sets, the manifest of applied objects, held
and hidden rows, key conflicts, retention and compaction); :class:`Commit` is a change that
:meth:`ecanalytics.ledger.log.Ledger.commit` turns into the next version. The log
(:mod:`.log`) replays entries onto states; this module only describes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import polars as pl

from ecanalytics import _runtime
from ecanalytics.ledger.buckets import Bucket, Frames, Part, buckets_of
from ecanalytics.ledger.entry import EntryKind
from ecanalytics.ledger.keys import APPLIED_KEY_SCHEMA, HIDDEN_SCHEMA
from ecanalytics.ledger.maintenance_records import CompactionRun, CompactionState, RetentionCut
from ecanalytics.storage import paths as P

LOAD_THREADS = 8  # buckets loaded at once by restrict
KEEP_ROWS = 4_000_000  # records and marks the state keeps loaded without being asked (see restrict)
IDS_SCHEMA: dict[str, pl.DataType] = {"field": pl.String(), **APPLIED_KEY_SCHEMA, "committedAt": pl.Datetime("us", "UTC")}
MARKS_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(), "field": pl.String(), "setTs": pl.Datetime("us", "UTC"), "setId": pl.String(),
    "maxTs": pl.Datetime("us", "UTC"), "maxId": pl.String(),
}
MANIFEST_SCHEMA: dict[str, pl.DataType] = {"key": pl.String(), "cohortDate": pl.String(), "size": pl.Int64()}


def manifest_frame(objects: dict[str, int | None]) -> pl.DataFrame:
    """Manifest rows of transaction objects: ``key``, its ``cohortDate`` (from the path) and its
    ``size`` in bytes (what lets a reader open it without asking the store first)."""
    return pl.DataFrame({"key": pl.Series(list(objects), dtype=pl.String),
                         "size": pl.Series(list(objects.values()), dtype=pl.Int64)}).select(
        "key", pl.col("key").str.extract(r"cohortDate=(\d{4}-\d{2}-\d{2})").alias("cohortDate"), "size")


@dataclass(frozen=True)
class Commit:
    """What one commit changes. ``upserts`` holds full records and ``marks`` per-(record, field)
    event-time marks (the ledger splits both by bucket); ``parts`` are bucket deltas the builder
    already wrote (bounded-memory consolidation), ``written`` their objects, removed if the commit
    loses its race; ``rebase`` replaces every bucket (a change of the bucket count). ``consumed``
    and ``held`` replace the field's sets."""

    kind: EntryKind
    upserts: pl.DataFrame | None = None
    deletes: tuple[str, ...] = ()
    field: str | None = None
    consumed: frozenset[str] | None = None
    unlisted: frozenset[str] | None = None  # consumed keys no LIST has shown yet (the lean sync path)
    applied_ids: pl.DataFrame | None = None  # caller-supplied keys applied, with their signature (ledger.keys)
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    retention: RetentionCut | None = None
    compaction: CompactionRun | None = None
    held: pl.DataFrame | None = None
    marks: pl.DataFrame | None = None
    parts: dict[int, Part] | None = None
    written: tuple[str, ...] = ()
    rebase: tuple[Part, ...] | None = None
    applied: dict[str, int | None] = dataclasses.field(default_factory=dict)  # objects (and sizes) that join the manifest
    unapplied: tuple[str, ...] = ()  # ... and that leave it (compacted, archived or deleted)
    conflicts: pl.DataFrame | None = None  # reused keys not applied (keys.CONFLICT_SCHEMA): kept for inspect
    hidden: pl.DataFrame | None = None  # occurrences in consumed objects that did not count (keys.HIDDEN_SCHEMA)


StateLoader = Callable[[int, Part], Frames]
BucketRebuild = Callable[[int, int, int], Frames]  # (bucket, bucket count, version) -> frames


@dataclass(frozen=True)
class State:
    """The resource at one version. Records and marks live in :attr:`buckets`, loaded on demand:
    :attr:`records` and :attr:`marks` load every bucket, :meth:`records_of` only the ones needed."""

    version: int
    buckets: tuple[Bucket, ...]
    consumed: dict[str, frozenset[str]]
    applied_ids: pl.DataFrame
    committed_at: datetime | None
    checkpoint_version: int
    retention: dict[str, RetentionCut] = dataclasses.field(default_factory=dict)  # the latest per field
    compaction: dict[str, CompactionState] = dataclasses.field(default_factory=dict)
    held: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    # Consumed keys that no LIST has shown yet (committed by a sync writer that holds them): their
    # absence from a LIST proves nothing (a LIST may lag behind the write), so they stay consumed
    # until a LIST has shown them once.
    unlisted: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    # per field: the manifest of applied transaction objects (``key, cohortDate``), live and archived
    manifest: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    # per field: the latest key conflicts (reused keys not applied; at most MAX_CONFLICTS), for inspect
    conflicts: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    # per field: ``key, id`` of rows in applied objects that did not count (retries, conflicts)
    hidden: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    load: StateLoader | None = dataclasses.field(default=None, compare=False, repr=False)
    rebuild: BucketRebuild | None = dataclasses.field(default=None, compare=False, repr=False)
    only: tuple[int, ...] | None = dataclasses.field(default=None, compare=False, repr=False)  # see restrict

    @property
    def n_buckets(self) -> int:
        return len(self.buckets)

    def bucket_frames(self, k: int, *, memo: bool = True) -> Frames:
        """(records, marks) of bucket ``k``, kept in the bucket with ``memo``; an unreadable base
        is rebuilt from the log."""
        assert self.load is not None
        load, rebuild, n = self.load, self.rebuild, self.n_buckets
        return self.buckets[k].frames(lambda part: load(k, part), memo=memo,
                                      rebuild=(lambda v: rebuild(k, n, v)) if rebuild else None)

    @property
    def _visible_buckets(self) -> range | tuple[int, ...]:
        return self.only if self.only is not None else range(self.n_buckets)

    def loaded_record_count(self) -> int | None:
        """How many records this state holds, if that is known without a read: every bucket is
        loaded, or names nothing yet (no base, no upserts). None otherwise (see :attr:`records`)."""
        total = 0
        for k in self._visible_buckets:
            bucket = self.buckets[k]
            frames = bucket.frames_if_loaded
            if frames is not None:
                total += frames[0].height
            elif bucket.base.records or any(part.records for part in bucket.parts):
                return None
        return total

    @property
    def records(self) -> pl.DataFrame:
        """Every record (loads every bucket; in a :meth:`restrict`-ed state, its buckets only)."""
        frames = [self.bucket_frames(k)[0] for k in self._visible_buckets] or [self._nothing()[0]]
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical", rechunk=False)

    @property
    def marks(self) -> pl.DataFrame:
        """Every mark (loads every bucket; in a :meth:`restrict`-ed state, its buckets only)."""
        frames = [self.bucket_frames(k)[1] for k in self._visible_buckets] or [self._nothing()[1]]
        return frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical", rechunk=False)

    def _nothing(self) -> Frames:
        assert self.load is not None
        return self.load(0, Part())

    def records_of(self, ids: pl.Series | list[str]) -> pl.DataFrame:
        """The records of ``ids`` that exist, loading only their buckets."""
        ids = pl.Series("id", ids, dtype=pl.String)
        wanted = sorted(set(buckets_of(ids, self.n_buckets).to_list()))
        frames = [self.bucket_frames(k)[0] for k in wanted]
        if not frames:
            return self.bucket_frames(0)[0].clear() if self.n_buckets else pl.DataFrame()
        return pl.concat(frames, how="vertical", rechunk=False).filter(pl.col("id").is_in(ids.implode()))

    def restrict(self, ks: Iterable[int], *, memo: bool = False) -> State:
        """This state seen through buckets ``ks`` only (:attr:`records` and :attr:`marks` hold
        theirs alone): what a fold of rows of those buckets needs. Without ``memo`` the buckets
        are read and let go, not kept in this state, unless the state would then hold at most
        :data:`KEEP_ROWS` records and marks (then the next commit does not read them again)."""
        only = tuple(sorted(set(ks)))
        buckets = list(self.buckets)
        todo = [k for k in only if not buckets[k].loaded]
        # Several buckets at once: their objects are read and decoded (Polars releases the GIL)
        # side by side, which matters most on S3, where each read is a round trip.
        loaded = _runtime.each(lambda k: self.bucket_frames(k, memo=memo), todo, LOAD_THREADS)
        # Kept even unasked while the state holds at most KEEP_ROWS rows in all: a long-lived
        # process's next commit needs them again, while a fold over a huge resource (one bucket
        # at a time: spilled, on a cluster, a recalculation) still lets its buckets go.
        held = sum(f[0].height + f[1].height for b in self.buckets if (f := b.frames_if_loaded) is not None)
        keep = not memo and held + sum(f[0].height + f[1].height for f in loaded) <= KEEP_ROWS
        for k, frames in zip(todo, loaded, strict=True):
            if keep:
                self.buckets[k].keep(frames)
            buckets[k] = Bucket(Part(), (), frames)
        return replace(self, buckets=tuple(buckets), only=only)

    def restrict_to(self, ids: pl.Series, *, memo: bool = False) -> State:
        """:meth:`restrict` to the buckets of the record ``ids``."""
        return self.restrict(buckets_of(ids, self.n_buckets).unique().to_list(), memo=memo)

    def applied_objects(self, field_name: str, *, since: str | None = None, days: Iterable[str] | None = None,
                        archived: bool = True) -> list[str]:
        """The transaction objects applied to ``field_name`` (sorted keys), from its manifest:
        what every ecanalytics reader reads instead of listing the history. ``since`` (an ISO
        day) and ``days`` prune by cohort day; ``archived=False`` leaves out the archive."""
        frame = self.manifest_of(field_name)
        if not frame.height:
            return []
        if since is not None:
            frame = frame.filter(pl.col("cohortDate") >= since)
        if days is not None:
            frame = frame.filter(pl.col("cohortDate").is_in(list(days)))
        if not archived:
            frame = frame.filter(~pl.col("key").str.starts_with(P.ARCHIVE_PREFIX))
        return sorted(frame["key"].to_list())

    def manifest_of(self, field_name: str) -> pl.DataFrame:
        """The manifest of ``field_name``: ``key, cohortDate, size`` of every applied object."""
        frame = self.manifest.get(field_name)
        return frame if frame is not None else pl.DataFrame(schema=MANIFEST_SCHEMA)

    def hidden_of(self, field_name: str) -> pl.DataFrame:
        """``key, id`` of the rows in ``field_name``'s applied objects that did not count (the key
        rule decided at their commit): every reader of the history leaves them out."""
        frame = self.hidden.get(field_name)
        return frame if frame is not None else pl.DataFrame(schema=HIDDEN_SCHEMA)

    def applied_keys(self, field_name: str) -> pl.DataFrame:
        """The caller-supplied keys of ``field_name`` applied within the dedup window, with the
        record, operation and amount they were applied with (:data:`keys.APPLIED_KEY_SCHEMA`)."""
        return self.applied_ids.filter(pl.col("field") == field_name).select(list(APPLIED_KEY_SCHEMA))

    def field_marks(self, field_name: str, ids: pl.Series | None = None) -> pl.DataFrame:
        """``originalId, setTs, setId, maxTs, maxId`` of the records of ``field_name`` (of
        ``ids`` only, if given)."""
        keep = pl.col("field") == field_name
        if ids is not None and self.marks.height:  # (hashing ``ids`` for an empty filter costs)
            keep = keep & pl.col("id").is_in(ids.implode())
        return self.marks.filter(keep).drop("field").rename({"id": "originalId"})
