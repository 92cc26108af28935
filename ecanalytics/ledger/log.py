"""The commit log of a resource: versioned state, create-only commits, checkpoints.

State at version N is the latest checkpoint plus the log entries after it. A commit writes its
delta first, then creates ``_log/{N+1:020d}.json`` only if absent. Whoever creates the entry owns
version N+1; a loser reloads and rebuilds its commit from the new state. Every log entry carries a
random token, so a PUT that succeeded but whose answer was lost (and was then retried into a 412)
is still recognised as our own.

The state tracks, per managed field:

* ``consumed`` -- the transaction objects that are applied but whose inbox marker may still exist.
  A key leaves this set only when a LIST taken *after* its marker's delete no longer shows the
  marker: a delete's silence is never trusted (S3 per-key errors, append-only credentials, a local
  remove that stopped half-way). With working deletes the set stays as small as about two commits;
  where deletes are denied it grows with every consumed object (see the README's fault model).
* ``held`` -- transaction rows that were read and taken out of the inbox but could not be folded
  yet (a record whose fold overflows, a custom reducer that raised, or a record that does not exist
  and has required attributes without defaults). They are pending in every sense but storage.
* ``marks`` -- per record and field, the event time (and id) of the last applied ``set`` and of the
  latest applied transaction, so late data is folded in event order without reading history.
* ``applied_ids`` -- caller-supplied idempotency keys applied within ``dedup_window_s``, so that a
  retried write is not counted twice even after its first copy was consolidated.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from ecanalytics import _runtime
from ecanalytics.errors import CommitConflictError, CorruptObjectError, MissingObjectError
from ecanalytics.ledger.buckets import DEFAULT_BUCKETS, Bucket, Frames, Part, apply_part, split
from ecanalytics.ledger.checkpoint import Checkpoint
from ecanalytics.ledger.entry import EntryKind, FieldFrame, LogEntry, ManifestChange, SetChange
from ecanalytics.ledger.keys import APPLIED_KEY_SCHEMA, AUTO_ID_PREFIX, CONFLICT_SCHEMA, HIDDEN_SCHEMA
from ecanalytics.ledger.maintenance_records import CompactionState
from ecanalytics.ledger.schema import Schema
from ecanalytics.ledger.state import IDS_SCHEMA, MANIFEST_SCHEMA, MARKS_SCHEMA, Commit, State, manifest_frame
from ecanalytics.storage import Store, decode_parquet, parquet_bytes
from ecanalytics.storage import paths as P

log = logging.getLogger(__name__)
FaultHook = Callable[[str], None]
# Frames this small travel inside the log entry (base64 Parquet, exact types) instead of as objects
# of their own: a small commit is then one PUT, not three.
INLINE_ROWS = 64
MAX_CONFLICTS = 1000  # key conflicts kept per field for inspect (the newest)
SMALL_BUCKET_ROWS = 16_384  # a changed bucket this small (records and marks) gets a new base at every checkpoint
CHAIN_INTERVALS = 4  # a bucket's base is at most this many checkpoint intervals of parts old (see _rewrites)
CHAIN_INLINE = 16  # inline parts a chain may carry inside the checkpoint before its bucket is rewritten
_INLINE = "inline:"
WRITE_THREADS = 8  # objects of one commit written at once on S3 (each a round trip)
LOCAL_WRITE_THREADS = 2  # ... and on local disk, where each is mostly Parquet encoding (zstd)
CHECKPOINT_THREADS = 4  # buckets a checkpoint reads and writes at once (each held in memory meanwhile)
LOG_READ_CHUNK = 64  # log entries a read of the whole log (Ledger.entries) asks for at once


def _inline(frame: pl.DataFrame, rows: int | None) -> str | None:
    """The reference that carries ``frame`` inside a log entry or checkpoint, if it has at most
    ``rows`` rows (None: :data:`INLINE_ROWS`)."""
    limit = INLINE_ROWS if rows is None else rows
    return _INLINE + base64.b64encode(parquet_bytes(frame)).decode() if frame.height <= limit else None


@dataclass(frozen=True)
class CommitProperties:
    """Every setting of a ledger's commits, in one place."""

    max_attempts: int = 60  # lost races before CommitConflictError
    backoff_s: float = 0.004  # the first backoff ceiling after a lost race; doubles each time (full jitter)
    max_backoff_s: float = 0.5
    checkpoint_interval: int = 10  # commits between checkpoints
    dedup_window_s: float = 7 * 86400  # how long caller-supplied keys are remembered once applied
    inline_rows: int | None = None  # frames this small travel inside the entry; None: INLINE_ROWS at the time


def _named(refs: dict[str, str | None]) -> dict[str, str]:
    """Frames a checkpoint names (a frame with rows always gets a reference)."""
    return {f: ref for f, ref in refs.items() if ref is not None}


def is_inline(ref: str) -> bool:
    """Whether a reference carries its frame inside the log entry (no object of its own)."""
    return ref.startswith(_INLINE)


def new_tx_id() -> str:
    """A generated transaction id; time-sortable, so equal timestamps keep their write order."""
    return f"{AUTO_ID_PREFIX}{_runtime.sortable_id(16)}"


@dataclass(frozen=True)
class PreparedCommit:
    """A commit ready to be created: its entry, the objects to write first (path -> frame), every
    frame the entry names (inline ones too, so the committer's state needs no read back), and the
    caller-supplied keys it applies."""

    entry: LogEntry
    files: dict[str, pl.DataFrame]
    frames: dict[str, pl.DataFrame]
    ids: pl.DataFrame | None


class Ledger:
    """Versioned record state of one resource, shared by every plugin of that resource."""

    def __init__(
        self,
        store: Store,
        resource: str,
        schema: Schema,
        *,
        properties: CommitProperties | None = None,
        buckets: int = DEFAULT_BUCKETS,
    ) -> None:
        self.store = store
        self.resource = resource
        self.schema = schema
        self.properties = properties or CommitProperties()
        self.buckets = buckets  # the count of a resource that has no commit yet; then the log's
        self.fault: FaultHook | None = None  # test hook: called at each commit step
        self._state: State | None = None
        self._consumed_seen: dict[str, dict[str, int]] = {}  # field -> key -> version that consumed it
        self._seen_after: int | None = None  # this process applied every version after this one
        self._state_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def _empty(self, n: int | None = None) -> State:
        n = n or self.buckets
        return State(0, tuple(Bucket(Part()) for _ in range(n)), {}, pl.DataFrame(schema=IDS_SCHEMA), None, 0,
                     load=self.load_part, rebuild=self.rebuild_bucket)

    def load_part(self, k: int, part: Part) -> Frames:
        """The frames a bucket part names (empty where it names none)."""
        records = (self.schema.conform(self._frame(part.records, {"id": pl.String()}, keep=True),
                                       self._where(part.records)) if part.records else self.schema.empty())
        marks = self._frame(part.marks, MARKS_SCHEMA) if part.marks else pl.DataFrame(schema=MARKS_SCHEMA)
        return records, marks

    def _from_hint(self, hint: Any) -> State:
        """The state a checkpoint (:meth:`Checkpoint.to_json`) holds, its frames loaded."""
        cp = Checkpoint.from_json(hint)
        buckets = tuple(Bucket(base, chain, base_version=v) for base, chain, v in zip(cp.buckets, cp.chains,
                                                                                     cp.base_versions, strict=True))
        return State(cp.version, buckets, cp.consumed,
                     self._frame(cp.ids, IDS_SCHEMA), cp.committed_at, cp.version, cp.retention, cp.compaction,
                     {f: self._read_ref(rel) for f, rel in cp.held.items()}, cp.unlisted,
                     manifest={f: self._frame(ref, MANIFEST_SCHEMA) for f, ref in cp.manifest.items()},
                     conflicts={f: self._frame(ref, CONFLICT_SCHEMA) for f, ref in cp.conflicts.items()},
                     hidden={f: self._frame(ref, HIDDEN_SCHEMA) for f, ref in cp.hidden.items()},
                     load=self.load_part, rebuild=self.rebuild_bucket)

    def rebuild_bucket(self, k: int, n: int, version: int) -> Frames:
        """Bucket ``k`` of ``n`` at ``version`` from the log alone (every entry up to it): where an
        unreadable checkpoint object falls back to."""
        frames = self.load_part(k, Part())
        for v in range(1, version + 1):
            entry = self.read_entry(v)
            if entry is None:
                raise CorruptObjectError(f"Log entry {v} of {self.resource} is missing; restore it from a backup.")
            part = entry.bucket_part(k, n)
            if entry.rebase is not None:
                frames = self.load_part(k, part) if len(entry.rebase) == n else (
                    frames[0].clear(), frames[1].clear())  # a count this bucket was not cut for: later entries rebuild it
                continue
            recs, mks = self.load_part(k, part)
            frames = apply_part(frames, recs, mks, part.deletes)
        return frames

    def _load_checkpoint(self) -> State:
        try:
            return self._from_hint(json.loads(self.store.read(P.last_checkpoint(self.resource))))
        except FileNotFoundError:
            return self._empty()
        except (ValueError, KeyError, TypeError, AttributeError, CorruptObjectError) as exc:
            # The log is complete on its own; a bad checkpoint only costs a longer replay.
            log.warning("Ignoring unreadable checkpoint of %s (%s); replaying the log.", self.resource, exc)
            return self._empty()

    def _frame(self, rel: str, schema: dict[str, pl.DataType], *, keep: bool = False) -> pl.DataFrame:
        """A metadata Parquet object with exactly ``schema``'s columns (``keep``: and the others it
        has), else :class:`CorruptObjectError`."""
        df = self._read_ref(rel)
        try:
            return df.with_columns([pl.col(c).cast(t) for c, t in schema.items()]) if keep else df.select(
                [pl.col(c).cast(t) for c, t in schema.items()])
        except Exception as exc:  # polars: ColumnNotFoundError, InvalidOperationError, ...
            raise CorruptObjectError(
                f"{self._where(rel)} does not have the columns {list(schema)} ({type(exc).__name__}); "
                "it is not ecanalytics metadata. Restore it from a backup."
            ) from exc

    def read_entry(self, version: int) -> LogEntry | None:
        """The log entry of ``version``, or None if it does not exist yet."""
        rel = P.log_entry(self.resource, version)
        try:
            raw = self.store.read(rel)
        except FileNotFoundError:
            return None
        return self._parse_entry(raw, version, rel)

    def _parse_entry(self, raw: bytes, version: int, rel: str) -> LogEntry:
        """The log entry of ``version`` from the bytes of its object ``rel``."""
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise CorruptObjectError(
                f"Log entry {self.store.url(rel)} is not valid JSON; committed state cannot be read past it. "
                "Restore it from a backup."
            ) from exc
        return LogEntry.from_json(parsed, version, self.store.url(rel))

    def _apply(self, st: State, entry: LogEntry, ids: pl.DataFrame | None,
               written: dict[str, pl.DataFrame] | None = None, *, read_parts: bool = True) -> State:
        """``st`` advanced by ``entry``; ``written`` holds frames this process just wrote (by
        reference: not read back). Bucket parts are only remembered unless their bucket is loaded;
        a loaded bucket reads its new part, or with ``read_parts`` False (after this process's own
        commit) lets its frames go when the part is not in ``written``: such parts are the
        per-bucket deltas a big (spilled or cluster) consolidation wrote, and reading them back
        would hold every record it touched."""
        written = written or {}

        def load(rel: str) -> pl.DataFrame:
            return written[rel] if rel in written else self._read_ref(rel)

        buckets = st.buckets
        if entry.rebase is not None:
            buckets = tuple(Bucket(p, base_version=entry.version) for p in entry.rebase)
        else:
            n = entry.buckets or st.n_buckets
            if n != st.n_buckets:
                if st.version or any(b.changed or b.base != Part() for b in st.buckets):
                    raise CorruptObjectError(
                        f"Log entry {entry.version} of {self.resource} has {n} buckets where the state has "
                        f"{st.n_buckets}; the log is inconsistent. Restore it from a backup.")
                buckets = self._empty(n).buckets
            dels = entry.deletes_of(n)
            touched = set(entry.delta) | set(entry.marks) | set(dels)
            out = list(buckets)
            changes = []
            for k in sorted(touched):
                part = Part(entry.delta.get(k), entry.marks.get(k), dels.get(k, ()))
                recs = written.get(part.records) if part.records else None
                mks = written.get(part.marks) if part.marks else None
                changes.append((out[k], part, recs, mks,
                                (lambda p, k=k: self.load_part(k, p)) if read_parts else None))  # type: ignore[misc]
            for k, bucket in zip(sorted(touched), Bucket.then_all(changes), strict=True):
                out[k] = bucket
            buckets = tuple(out)
        consumed = st.consumed
        applied = st.applied_ids
        fld = entry.field
        unlisted = st.unlisted
        if fld is not None and entry.unlisted is not None:
            unlisted = {**unlisted, fld: entry.unlisted.apply(unlisted.get(fld))}
        if fld is not None and entry.consumed is not None:
            consumed = {**consumed, fld: entry.consumed.apply(consumed.get(fld))}
        if ids is not None and ids.height:
            applied = pl.concat([applied, ids.select(
                pl.lit(fld, pl.String).alias("field"),
                *[(pl.col(c) if c in ids.columns else pl.lit(None)).cast(t).alias(c) for c, t in APPLIED_KEY_SCHEMA.items()],
                pl.lit(entry.committed_at).dt.cast_time_unit("us").dt.convert_time_zone("UTC").alias("committedAt"),
            )], how="vertical")
        manifest, hidden = st.manifest, st.hidden
        change = entry.manifest
        if fld is not None and change is not None and (change.add or change.remove):
            frame = manifest.get(fld, pl.DataFrame(schema=MANIFEST_SCHEMA))
            if change.remove:
                removed = pl.Series(list(change.remove), dtype=pl.String)
                frame = frame.filter(~pl.col("key").is_in(removed.implode()))
                if fld in hidden:  # hidden rows go with their object; an archived copy keeps them
                    added = set(change.add)
                    old = hidden[fld]
                    moved = old.filter(pl.col("key").is_in(removed.implode())).with_columns(
                        (pl.lit(P.ARCHIVE_PREFIX) + pl.col("key")).alias("key")).filter(
                        pl.col("key").is_in(pl.Series(sorted(added), dtype=pl.String).implode()))
                    hidden = {**hidden, fld: pl.concat([old.filter(~pl.col("key").is_in(removed.implode())), moved])}
            if change.add:
                frame = pl.concat([frame, manifest_frame(dict(change.add))], how="vertical")
            manifest = {**manifest, fld: frame}
        if (h := entry.hidden) is not None and h.path:
            hidden = {**hidden, h.field: pl.concat([hidden.get(h.field, pl.DataFrame(schema=HIDDEN_SCHEMA)),
                                                    load(h.path).cast(HIDDEN_SCHEMA)], how="vertical")}  # type: ignore[arg-type]
        held = st.held
        if (h := entry.held) is not None:
            held = {**held, h.field: load(h.path)} if h.path else {f: v for f, v in held.items() if f != h.field}
        retention = st.retention
        if (cut := entry.retention) is not None:
            retention = {**retention, cut.field: cut}
        compaction = st.compaction
        if (run := entry.compaction) is not None:
            compaction = {**compaction, run.field: compaction.get(run.field, CompactionState()).after(run)}
        conflicts = st.conflicts
        if (c := entry.conflicts) is not None and c.path:
            recent = pl.concat([conflicts.get(c.field, pl.DataFrame(schema=CONFLICT_SCHEMA)),
                                load(c.path).cast(CONFLICT_SCHEMA)], how="vertical")  # type: ignore[arg-type]
            conflicts = {**conflicts, c.field: recent.tail(MAX_CONFLICTS)}
        return replace(st, version=entry.version, buckets=buckets, consumed=consumed, applied_ids=applied,
                       conflicts=conflicts,
                       committed_at=entry.committed_at, retention=retention, compaction=compaction, held=held,
                       unlisted=unlisted, manifest=manifest, hidden=hidden)

    def _replay(self, st: State) -> State:
        if self._seen_after is None:
            self._seen_after = st.version
        while (entry := self.read_entry(st.version + 1)) is not None:
            ids = self._read_ref(entry.ids) if entry.ids else None
            before = st
            st = self._apply(st, entry, ids)
            self._note_consumed(before, st)
        return st

    def _note_consumed(self, before: State, after: State) -> None:
        """Remember which keys each version this process applied newly consumed (for
        :meth:`consumed_since`); bounded, forgetting the oldest by moving the horizon."""
        for fld, keys in after.consumed.items():
            new = keys - before.consumed.get(fld, frozenset())
            if new:
                seen = self._consumed_seen.setdefault(fld, {})
                seen.update(dict.fromkeys(new, after.version))
        if sum(map(len, self._consumed_seen.values())) > 200_000:
            self._consumed_seen.clear()
            self._seen_after = after.version

    def consumed_since(self, fld: str, keys: Iterable[str], after: int) -> set[str] | None:
        """Which of ``keys`` a commit *after* version ``after`` consumed, from what this process
        replayed; None when it did not see every version since ``after`` (ask the store instead)."""
        if self._seen_after is None or after < self._seen_after:
            return None
        seen = self._consumed_seen.get(fld, {})
        return {k for k in keys if seen.get(k, -1) > after}

    def cached(self) -> State:
        """The state this process last saw (no request once loaded); ``state()`` for the latest."""
        return self._state if self._state is not None else self.state()

    def in_memory(self) -> State | None:
        """The state this process holds, or None before its first read: never a request. What
        reprs show (a repr must not read: see ``docs/guarantees.md``, "Looking changes nothing")."""
        return self._state

    # -- history (maintenance paths: they may read the whole log) ----------------------------
    def latest_version(self) -> int:
        """The newest committed version (0 before the first commit)."""
        return self.state().version

    def version_at(self, when: datetime) -> int:
        """The newest version committed at or before ``when`` (0 if none), by binary search over
        the log's ``committedAt`` (O(log n) reads; assumes committers' clocks roughly agree)."""
        if when.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        lo, hi = 0, self.latest_version()
        while lo < hi:
            mid = (lo + hi + 1) // 2
            entry = self.read_entry(mid)
            if entry is not None and entry.committed_at <= when:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def state_at(self, version: int) -> State:
        """The state as committed at ``version``: the nearest earlier checkpoint plus a replay."""
        current = self.state()
        if version >= current.version:
            return current
        best = -1
        for name in self.store.listdir(P.log_dir(self.resource)):
            v = P.checkpoint_hint_version(name)
            if v is not None and best < v <= version:
                best = v
        st = self._empty()
        if best >= 0:
            try:
                st = self._from_hint(json.loads(self.store.read(P.checkpoint_hint(self.resource, best))))
            except (ValueError, KeyError, TypeError, AttributeError, CorruptObjectError) as exc:
                log.warning("Ignoring unreadable checkpoint %d of %s (%s); replaying the log.", best, self.resource, exc)
        while st.version < version:
            entry = self.read_entry(st.version + 1)
            if entry is None:
                break
            st = self._apply(st, entry, None)
        return st

    def entries(self, kinds: tuple[EntryKind, ...] = (), *, upto: int | None = None) -> list[LogEntry]:
        """The log entries of versions 1 to ``upto`` (else to the newest there is), optionally of
        some kinds, oldest first: a maintenance read. Up to ``upto`` they are read
        :data:`LOG_READ_CHUNK` at a time, concurrently (on S3 each is a round trip), and each must
        exist: the state at ``upto`` was built on them, so a missing one is a
        :class:`MissingObjectError`, never the end of the log. Without ``upto`` they are read one
        after another until a version has no entry."""
        out: list[LogEntry] = []

        def keep(entry: LogEntry) -> None:
            if not kinds or entry.kind in kinds:
                out.append(entry)

        if upto is None:
            version = 1
            while (entry := self.read_entry(version)) is not None:
                keep(entry)
                version += 1
            return out
        for first in range(1, upto + 1, LOG_READ_CHUNK):
            rels = {v: P.log_entry(self.resource, v) for v in range(first, min(first + LOG_READ_CHUNK, upto + 1))}
            blobs = self.store.read_many(list(rels.values()))
            for version, rel in rels.items():
                raw = blobs.pop(rel)  # let each go once parsed
                if raw is None:
                    raise MissingObjectError(
                        f"Log entry {self.store.url(rel)} is missing, but the state at version {upto} of {self.resource} "
                        "was built on it: the log is incomplete, so nothing was read. Restore the entry (from a backup "
                        "or the bucket's versions), then check the root with `ecanalytics inspect --verify`.",
                        self.store.url(rel))
                keep(self._parse_entry(raw, version, rel))
        return out

    def read_delta(self, entry: LogEntry) -> pl.DataFrame | None:
        """The records an entry upserted (every bucket's part)."""
        frames = [self.load_part(0, Part(ref))[0] for ref in entry.record_refs()]
        return pl.concat(frames, how="vertical") if frames else None

    def _read_ref(self, ref: str) -> pl.DataFrame:
        """A frame a log entry names: an object's path, or the frame itself inline."""
        if ref.startswith(_INLINE):
            return decode_parquet(base64.b64decode(ref[len(_INLINE):]), self._where(ref))
        try:
            return self.store.read_parquet(ref)
        except MissingObjectError:
            raise
        except FileNotFoundError as exc:  # named by the log, so its absence is corruption, never "no rows"
            raise MissingObjectError(
                f"{self.store.url(ref)} is named by the commit log of {self.resource} but is missing; nothing was "
                "committed. Restore it (from a backup or the bucket's versions), then check the root with "
                "`ecanalytics inspect --verify`.", self.store.url(ref)) from exc

    def _where(self, ref: str) -> str:
        return f"a frame inside the log of {self.resource}" if ref.startswith(_INLINE) else self.store.url(ref)

    def set_schema(self, schema: Schema) -> None:
        """Use ``schema`` from now on (schema evolution): the cached state is reloaded, so records
        stored without a new attribute read its default."""
        with self._state_lock:
            self.schema, self._state = schema, None

    def state(self) -> State:
        """The latest committed state (reads only the log entries newer than the cached version)."""
        with self._state_lock:
            st = self._state if self._state is not None else self._load_checkpoint()
            st = self._replay(st)
            self._state = st
            return st

    # -- writing ---------------------------------------------------------------------------
    def fault_point(self, step: str) -> None:
        """Call the fault hook (tests and the simulator inject crashes here) at ``step``."""
        if self.fault is not None:
            self.fault(step)

    def commit(self, build: Callable[[State], Commit | None]) -> tuple[State, Commit] | None:
        """Build and commit the next version, retrying on a lost race. None if ``build`` had nothing to do.

        ``build`` is called with the latest state on every attempt and must be free of side effects
        that matter if its commit loses (it may run several times).
        """
        props = self.properties
        for attempt in range(props.max_attempts):
            with self._commit_lock:
                st = self.state()
                try:
                    change = build(st)
                except FileNotFoundError:
                    # An object the build read went away. After a newer commit that is a race (a
                    # maintenance job replaced it, a sweep removed a run fenced by the version we
                    # lost): build again on the new state. At the latest version it is corruption.
                    if self.latest_version() > st.version:
                        continue
                    raise
                if change is None:
                    return None
                prepared = self._prepare(st, change)
                # Side by side: on S3 a commit's object per bucket is a round trip each, on local
                # disk mostly encoding, which Polars does without the GIL (the simulator's executor
                # runs them in order, so its runs stay replayable).
                _runtime.each(lambda item: self.store.write_parquet(*item), list(prepared.files.items()),
                              WRITE_THREADS if self.store.remote else LOCAL_WRITE_THREADS)
                self.fault_point("after_delta")
                if not self._create_entry(prepared.entry):
                    self.store.delete([*prepared.files, *change.written])
                    _runtime.backoff(attempt, props.backoff_s, props.max_backoff_s)
                    continue
                self.fault_point("after_log")
                return self._post_commit(st, prepared), change
        raise CommitConflictError(
            f"Gave up committing to {self.resource!r} after {props.max_attempts} lost races; "
            "too many concurrent consolidators. Retry later or run fewer at once."
        )

    def _prepare(self, st: State, change: Commit) -> PreparedCommit:
        """The entry of ``change`` as the next version after ``st``, and the frames it names: those
        too big to travel inside the entry become objects named for this version and attempt."""
        version, token = st.version + 1, _runtime.token()
        files: dict[str, pl.DataFrame] = {}
        frames: dict[str, pl.DataFrame] = {}  # every frame written, by the reference the entry holds

        def ref(kind: str, frame: pl.DataFrame) -> str:
            # Frames this small travel inside the entry: a small commit is one PUT.
            name = _inline(frame, self.properties.inline_rows) or P.data_file(self.resource, version, token, kind)
            if not name.startswith(_INLINE):
                files[name] = frame
            frames[name] = frame
            return name

        n = st.n_buckets
        deltas: dict[int, str] = {}
        marks: dict[int, str] = {}
        if change.upserts is not None:
            upserts = change.upserts.select(list(self.schema.polars_schema))
            for k, part in split(upserts, "id", n).items():
                deltas[k] = ref(f"delta-b{k}", part)
        if change.marks is not None:
            mks = change.marks.select(list(MARKS_SCHEMA)).cast(MARKS_SCHEMA)  # type: ignore[arg-type]
            for k, part in split(mks, "id", n).items():
                marks[k] = ref(f"marks-b{k}", part)
        for k, prt in (change.parts or {}).items():
            if prt.records:
                deltas[k] = prt.records
            if prt.marks:
                marks[k] = prt.marks
        # Only caller-supplied keys need remembering: generated ids are unique by construction.
        ids = None
        if change.applied_ids is not None:
            ids = change.applied_ids.filter(~pl.col("id").str.starts_with(AUTO_ID_PREFIX)).select(
                list(APPLIED_KEY_SCHEMA)).cast(APPLIED_KEY_SCHEMA)  # type: ignore[arg-type]
        fld = change.field
        entry = LogEntry(
            version=version, committed_at=_runtime.now(), kind=change.kind, token=token, field=fld,
            buckets=len(change.rebase) if change.rebase is not None else n,
            delta=dict(sorted(deltas.items())), marks=dict(sorted(marks.items())), deletes=tuple(change.deletes),
            rebase=change.rebase,
            ids=ref("ids", ids) if ids is not None and ids.height else None,
            # The consumed and unlisted sets travel as their change since ``st``, so an entry grows
            # with what it did, not with what is carried.
            consumed=SetChange.between(st.consumed.get(fld or ""), change.consumed),
            unlisted=SetChange.between(st.unlisted.get(fld or ""), change.unlisted),
            manifest=ManifestChange(dict(change.applied), tuple(change.unapplied))
            if change.applied or change.unapplied else None,
            held=FieldFrame(fld, ref("held", change.held) if change.held.height else None)
            if change.held is not None and fld is not None else None,
            hidden=FieldFrame(fld, ref("hidden", change.hidden.cast(HIDDEN_SCHEMA)))  # type: ignore[arg-type]
            if change.hidden is not None and change.hidden.height and fld is not None else None,
            conflicts=FieldFrame(fld, ref("conflicts", change.conflicts.tail(MAX_CONFLICTS)))
            if change.conflicts is not None and change.conflicts.height and fld is not None else None,
            retention=change.retention, compaction=change.compaction, stats=change.stats)
        return PreparedCommit(entry, files, frames, ids)

    def _post_commit(self, st: State, prepared: PreparedCommit) -> State:
        """After the entry is created: the state at its version (advanced in memory from ``st``
        with the frames just written, when nobody moved the cache meanwhile), and a checkpoint
        when one is due."""
        version = prepared.entry.version
        with self._state_lock:
            if self._state is not None and self._state.version == st.version:
                self._state = self._apply(st, prepared.entry, prepared.ids, prepared.frames, read_parts=False)
                self._note_consumed(st, self._state)
            cached = self._state
        new_state = cached if cached is not None and cached.version >= version else self.state()
        self.fault_point("before_checkpoint")
        if version - new_state.checkpoint_version >= self.properties.checkpoint_interval:
            self._checkpoint(new_state)
        return new_state

    def put_part(self, version: int, token: str, names: tuple[str, str], records: pl.DataFrame | None,
                 marks: pl.DataFrame | None) -> tuple[Part, list[str]]:
        """Write one bucket's records and marks for the commit of ``version`` being built (kinds
        ``names``; an absent or empty frame is no object); returns the part and the objects written."""
        refs: list[str | None] = []
        written = []
        for kind, frame in zip(names, (records, marks), strict=True):
            if frame is None or not frame.height:
                refs.append(None)
                continue
            ref, wrote = self.put_frame(P.data_file(self.resource, version, token, kind), frame)
            refs.append(ref)
            if wrote:
                written.append(ref)
        return Part(refs[0], refs[1]), written

    def put_frame(self, name: str, frame: pl.DataFrame) -> tuple[str, bool]:
        """Write ``frame`` for a commit that is being built (``name`` made by
        :func:`paths.data_file`); returns (the reference a log entry holds, whether an object was
        written). Frames of at most :data:`INLINE_ROWS` rows travel inside the entry instead."""
        if (inline := _inline(frame, self.properties.inline_rows)) is not None:
            return inline, False
        self.store.write_parquet(name, frame)
        return name, True

    def rebucket(self, n: int) -> State:
        """Split the records into ``n`` buckets: one commit that rewrites every bucket (readers at
        earlier versions are unaffected). Holds the whole state in memory once."""
        def build(st: State) -> Commit | None:
            if n == st.n_buckets:
                return None
            token, version = _runtime.token(), st.version + 1
            records = split(st.records, "id", n)
            marks = split(st.marks, "id", n)
            parts, written = [], []
            for k in range(n):
                part, objs = self.put_part(version, token, (f"rebucket-b{k}", f"rebucket-marks-b{k}"),
                                           records.get(k), marks.get(k))
                parts.append(part)
                written += objs
            return Commit("rebucket", rebase=tuple(parts), written=tuple(written),
                          stats={"buckets": n, "before": st.n_buckets})

        self.commit(build)
        return self.state()

    def _create_entry(self, entry: LogEntry) -> bool:
        """Create the entry's object if nobody took its version; True when it is ours (a create
        whose answer was lost but that landed reads back with our token)."""
        rel = P.log_entry(self.resource, entry.version)
        if self.store.create(rel, json.dumps(entry.to_json(), sort_keys=True).encode()):
            return True
        existing = self.read_entry(entry.version)
        return existing is not None and existing.token == entry.token

    def _rewrites(self, st: State) -> set[int]:
        """The buckets a checkpoint of ``st`` writes a new base for; every other bucket keeps its
        base and lists the commit parts after it (its chain), so a checkpoint costs the change
        since the last one, not the size of the buckets it touched (the rolling merge of an LSM
        tree, at the granularity of Paimon's fixed buckets). Rewritten:

        * a changed bucket loaded in memory with at most :data:`SMALL_BUCKET_ROWS` records and
          marks: rewriting it is cheap and keeps its reads to one object;
        * a bucket whose chain would exceed :data:`CHAIN_INTERVALS` checkpoint intervals of parts,
          or holds more than :data:`CHAIN_INLINE` inline parts (they travel in the checkpoint);
        * of the other changed buckets, the ``1/CHAIN_INTERVALS`` with the oldest bases: a rolling
          rewrite, so that a workload touching every bucket rewrites a quarter of them per
          checkpoint and each base at least every :data:`CHAIN_INTERVALS` checkpoints."""
        interval = self.properties.checkpoint_interval
        small: set[int] = set()
        forced: set[int] = set()
        big: list[int] = []
        for k, bucket in enumerate(st.buckets):
            if not bucket.changed:
                continue
            frames = bucket.frames_if_loaded
            inline = sum(1 for p in bucket.parts for ref in (p.records, p.marks) if ref and is_inline(ref))
            if frames is not None and frames[0].height + frames[1].height <= SMALL_BUCKET_ROWS:
                small.add(k)
                continue
            big.append(k)
            if len(bucket.parts) > CHAIN_INTERVALS * interval or inline > CHAIN_INLINE:
                forced.add(k)
        quota = -(-len(big) // CHAIN_INTERVALS) - len(forced)  # a quarter of the big ones, rounded up
        rolling = sorted((k for k in big if k not in forced), key=lambda k: (st.buckets[k].base_version, k))
        return small | forced | set(rolling[:max(0, quota)])

    def _checkpoint(self, st: State) -> None:
        """Snapshot the buckets changed since the last checkpoint (the others keep their objects),
        the dedup window and the consumed sets at ``st.version``."""
        cutoff = _runtime.now() - timedelta(seconds=self.properties.dedup_window_s)
        ids = st.applied_ids.filter(pl.col("committedAt") >= cutoff)
        token = _runtime.token()

        def put(kind: str, frame: pl.DataFrame) -> str | None:
            if not frame.height:
                return None
            if (inline := _inline(frame, self.properties.inline_rows)) is not None:
                return inline
            rel = P.data_file(self.resource, st.version, token, kind)
            self.store.write_parquet(rel, frame)
            return rel

        rewrite = self._rewrites(st)

        def rebase(k: int) -> Part:
            # Read and let go: checkpointing a big resource holds CHECKPOINT_THREADS buckets at a
            # time. An unreadable base is rebuilt from the log, as any reader does: the commit
            # this checkpoint follows has already been made.
            records, marks = st.bucket_frames(k, memo=False)
            return Part(put(f"checkpoint-b{k}", records), put(f"checkpoint-marks-b{k}", marks))

        rebased = dict(zip(sorted(rewrite), _runtime.each(rebase, sorted(rewrite), CHECKPOINT_THREADS), strict=True))
        bases = [rebased.get(k, bucket.base) for k, bucket in enumerate(st.buckets)]
        chains = tuple(() if k in rewrite else b.parts for k, b in enumerate(st.buckets))
        versions = tuple(st.version if k in rewrite else b.base_version for k, b in enumerate(st.buckets))
        held = {f: put(f"checkpoint-held-{f}", rows) for f, rows in st.held.items() if rows.height}
        manifest = {f: put(f"checkpoint-manifest-{f}", rows) or _inline(rows, self.properties.inline_rows)
                    for f, rows in st.manifest.items()}
        ids_ref = put("checkpoint-ids", ids) or _inline(ids, self.properties.inline_rows)
        conflicts = {f: put(f"checkpoint-conflicts-{f}", rows) for f, rows in st.conflicts.items() if rows.height}
        hidden = {f: put(f"checkpoint-hidden-{f}", rows) for f, rows in st.hidden.items() if rows.height}
        cp = Checkpoint(st.version, tuple(bases), chains, versions, str(ids_ref), _named(held), _named(conflicts),
                        _named(hidden),
                        _named(manifest), st.consumed, st.unlisted, st.retention, st.compaction, st.committed_at)
        body = json.dumps(cp.to_json()).encode()
        self.store.create(P.checkpoint_hint(self.resource, st.version), body)
        try:
            current = json.loads(self.store.read(P.last_checkpoint(self.resource)))["version"]
        except (FileNotFoundError, ValueError, KeyError):
            current = -1
        if current < st.version:  # a racing checkpointer may have gone further; never go back
            self.store.write(P.last_checkpoint(self.resource), body)
        with self._state_lock:
            if self._state is not None and self._state.version == st.version:
                buckets = tuple(b.rebased(base, None, st.version) if k in rewrite else b
                                for k, (b, base) in enumerate(zip(self._state.buckets, bases, strict=True)))
                self._state = replace(self._state, checkpoint_version=st.version, applied_ids=ids, buckets=buckets)
