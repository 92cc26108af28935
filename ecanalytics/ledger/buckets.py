"""Record state split into buckets by a stable hash of the record id.

A resource's records (and their event-time marks) live in ``n`` buckets. The bucket of a record is
``xxh3_64(id)`` (the ``polars-hash`` plugin: the same value in every process, machine and library
version, unlike Polars' or DuckDB's own ``hash()``) mapped to ``[0, n)`` by its top 32 bits, so a
bucket is a contiguous range of the hash space. The model is Apache Paimon's fixed buckets: a commit
writes a delta only for the buckets it changed, a checkpoint rewrites only the buckets changed since
the previous one, and a reader loads only the buckets it needs (a ``get(id)`` loads one).

A :class:`Bucket` is a base (the bucket's checkpoint objects, or nothing) plus the parts committed
after it, loaded on first use. Loading is memoized on the bucket unless the caller asks otherwise
(bounded-memory consolidation loads one bucket at a time and lets it go).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import polars as pl
import polars_hash as plh

from ecanalytics import _runtime
from ecanalytics.errors import ArgumentError, CorruptObjectError
from ecanalytics.types import is_positive_int

log = logging.getLogger(__name__)

DEFAULT_BUCKETS = 16
PART_THREADS = 4  # parts of one bucket read at once
MAX_BUCKETS = 4096
_TOP = 2**32


def check_buckets(n: object) -> int:
    """A bucket count: an int from 1 to :data:`MAX_BUCKETS`, else :class:`ArgumentError`."""
    if not is_positive_int(n, MAX_BUCKETS):
        raise ArgumentError(
            f"buckets must be an integer from 1 to {MAX_BUCKETS} (about one bucket per 10^5-10^6 records; "
            f"default {DEFAULT_BUCKETS}); got {n!r}.")
    return n


def bucket_expr(column: str, n: int) -> pl.Expr:
    """The bucket (``UInt32`` in ``[0, n)``) of each value of the string column ``column``."""
    return (plh.col(column).nchash.xxh3_64() // _TOP * n // _TOP).cast(pl.UInt32)


def buckets_of(ids: Iterable[str] | pl.Series, n: int) -> pl.Series:
    """The bucket of each id, in order."""
    frame = pl.DataFrame({"id": pl.Series(list(ids) if not isinstance(ids, pl.Series) else ids, dtype=pl.String)})
    return frame.select(bucket_expr("id", n).alias("bucket"))["bucket"]


def split(frame: pl.DataFrame, column: str, n: int) -> dict[int, pl.DataFrame]:
    """``frame`` split by the bucket of ``column``; only non-empty buckets appear."""
    if not frame.height:
        return {}
    if n == 1:
        return {0: frame}
    parts = frame.with_columns(bucket_expr(column, n).alias("_bucket")).partition_by(
        "_bucket", as_dict=True, include_key=False)
    return {int(k[0]): v for k, v in parts.items()}  # type: ignore[call-overload]


@dataclass(frozen=True)
class Part:
    """Objects (paths, or inline frames) that change one bucket: upserted records, upserted marks,
    and deleted record ids. In a base, ``records``/``marks`` are the whole bucket."""

    records: str | None = None
    marks: str | None = None
    deletes: tuple[str, ...] = ()


Frames = tuple[pl.DataFrame, pl.DataFrame]  # (records, marks)
Loader = Callable[[Part], Frames]  # reads a part's frames
Rebuild = Callable[[int], Frames]  # the bucket at a version, from the log alone (an unreadable base)


Change = tuple[Frames, pl.DataFrame | None, pl.DataFrame | None, tuple[str, ...]]  # frames, records, marks, deletes


def _part_plans(frames: Frames, records: pl.DataFrame | None, marks: pl.DataFrame | None,
                deletes: tuple[str, ...]) -> tuple[pl.LazyFrame, pl.LazyFrame] | None:
    """The plans of ``frames`` after a part (see :func:`apply_parts`); None when it changes nothing."""
    recs, mks = frames
    new_records = records is not None and records.height > 0
    new_marks = marks is not None and marks.height > 0
    if not (deletes or new_records or new_marks):
        return None
    deleted = pl.Series("id", deletes, dtype=pl.String)
    recs_plan = recs.lazy()
    if recs.height and (deletes or new_records):
        changed = pl.concat([deleted, records["id"]]) if new_records else deleted  # type: ignore[index]
        recs_plan = recs_plan.filter(~pl.col("id").is_in(changed.implode()))
    if new_records:
        recs_plan = pl.concat([recs_plan, records.lazy().select(recs.columns).cast(recs.schema)],  # type: ignore[union-attr, arg-type]
                              how="vertical")
    mks_plan = mks.lazy()
    if deletes and mks.height:
        mks_plan = mks_plan.filter(~pl.col("id").is_in(deleted.implode()))
    if new_marks:
        kept = mks_plan.join(marks.lazy().select("id", "field"), on=["id", "field"], how="anti",  # type: ignore[union-attr]
                             maintain_order="left")
        mks_plan = pl.concat([kept, marks.lazy().select(mks.columns).cast(mks.schema)])  # type: ignore[union-attr, arg-type]
    return recs_plan, mks_plan


def apply_parts(changes: Sequence[Change]) -> list[Frames]:
    """Each ``(frames, records, marks, deletes)`` after its part: records replaced by id, marks
    replaced by ``(id, field)``, deleted ids dropped.

    Planned lazily and collected in one call: a commit changes up to every bucket, and an eager
    step per filter and concat made its in-memory apply to 16 buckets 170 Polars calls, each a
    wait for the GIL while writer threads run (that apply took 17-27 ms, now 9-12 ms)."""
    plans = [_part_plans(*change) for change in changes]
    done = iter(pl.collect_all([plan for pair in plans if pair is not None for plan in pair]))
    return [change[0] if pair is None else (next(done), next(done)) for change, pair in zip(changes, plans, strict=True)]


def apply_part(frames: Frames, records: pl.DataFrame | None, marks: pl.DataFrame | None,
               deletes: tuple[str, ...]) -> Frames:
    """``frames`` after one part (see :func:`apply_parts`)."""
    return apply_parts([(frames, records, marks, deletes)])[0]


class Bucket:
    """One bucket: a base and the parts committed after it, loaded on demand."""

    __slots__ = ("_frames", "_lock", "base", "base_version", "parts")

    def __init__(self, base: Part, parts: tuple[Part, ...] = (), frames: Frames | None = None,
                 base_version: int = 0) -> None:
        self.base = base
        self.parts = parts
        self.base_version = base_version  # the version the base was checkpointed at
        self._frames = frames
        self._lock = threading.Lock()

    @property
    def changed(self) -> bool:
        """Parts were committed since the base: the next checkpoint rewrites this bucket."""
        return bool(self.parts)

    @property
    def loaded(self) -> bool:
        return self._frames is not None

    @property
    def frames_if_loaded(self) -> Frames | None:
        """The frames if they are loaded already, else None (never a read)."""
        return self._frames

    def frames(self, load: Loader, *, memo: bool = True, rebuild: Rebuild | None = None) -> Frames:
        """The bucket's (records, marks): the base plus every part, read once and kept (``memo``).
        A base that cannot be read is rebuilt from the log with ``rebuild`` (the log is complete
        on its own; a bad checkpoint only costs a longer replay)."""
        if self._frames is not None:
            return self._frames
        with self._lock:
            if self._frames is not None:
                return self._frames
            try:
                frames = load(self.base)
            except CorruptObjectError as exc:
                if rebuild is None or not self.base_version:
                    raise
                log.warning("Ignoring an unreadable checkpoint object (%s); rebuilding its bucket from the log.", exc)
                frames = rebuild(self.base_version)
            # A chain may name dozens of parts (see Ledger._rewrites): read PART_THREADS of them
            # side by side (a round trip on S3 for each window, not each part) and apply them in
            # order, so at most that many are decoded at once.
            with _runtime.executor(PART_THREADS) as pool:
                for i in range(0, len(self.parts), PART_THREADS):
                    window = self.parts[i:i + PART_THREADS]
                    reads = [part for part in window if part.records or part.marks]
                    read = iter(list(pool.map(load, reads)))
                    for part in window:
                        recs, mks = next(read) if (part.records or part.marks) else (None, None)
                        frames = apply_part(frames, recs, mks, part.deletes)
            if memo:
                self._frames = frames
            return frames

    def keep(self, frames: Frames) -> None:
        """Keep ``frames`` (this bucket's, read by a caller that did not ask to memoize them)."""
        with self._lock:
            if self._frames is None:
                self._frames = frames

    @staticmethod
    def then_all(changes: Sequence[tuple[Bucket, Part, pl.DataFrame | None, pl.DataFrame | None, Loader | None]],
                 ) -> list[Bucket]:
        """Each ``(bucket, part, records, marks, load)`` as the bucket after its part. A loaded
        bucket stays loaded: with the part's frames when the caller has them, else by reading the
        part with ``load`` (without ``load`` it lets its frames go and remembers the part); an
        unloaded one just remembers it. The loaded ones are applied in one Polars call."""
        applied: list[int] = []
        todo: list[Change] = []
        for i, (bucket, part, records, marks, load) in enumerate(changes):
            loaded = bucket.frames_if_loaded
            if loaded is None:
                continue
            if records is None and marks is None and (part.records or part.marks) and load is not None:
                records, marks = load(part)
            if records is not None or marks is not None or not (part.records or part.marks):
                applied.append(i)
                todo.append((loaded, records, marks, part.deletes))
        frames = dict(zip(applied, apply_parts(todo), strict=True))
        return [Bucket(bucket.base, (*bucket.parts, part), frames.get(i), bucket.base_version)
                for i, (bucket, part, *_) in enumerate(changes)]

    def rebased(self, base: Part, frames: Frames | None, version: int) -> Bucket:
        """This bucket with a new base (a checkpoint of it at ``version``) and no parts."""
        return Bucket(base, (), frames if frames is not None else self._frames, version)

    def __repr__(self) -> str:
        return f"Bucket(base={self.base!r}, parts={len(self.parts)}, loaded={self.loaded})"
