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
import dataclasses
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl

from ecanalytics.errors import CommitConflictError, CorruptObjectError
from ecanalytics.ledger.schema import Schema
from ecanalytics.storage import Store, decode_parquet, parquet_bytes
from ecanalytics.storage import paths as P

log = logging.getLogger(__name__)
FaultHook = Callable[[str], None]
IDS_SCHEMA: dict[str, pl.DataType] = {"field": pl.String(), "id": pl.String(), "committedAt": pl.Datetime("us", "UTC")}
MARKS_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(), "field": pl.String(), "setTs": pl.Datetime("us", "UTC"), "setId": pl.String(),
    "maxTs": pl.Datetime("us", "UTC"), "maxId": pl.String(),
}
_ENTRY_KEYS = ("version", "committedAt", "kind", "token")
# Frames this small travel inside the log entry (base64 Parquet, exact types) instead of as objects
# of their own: a small commit is then one PUT, not three.
INLINE_ROWS = 64
_INLINE = "inline:"
AUTO_ID_PREFIX = "auto-"


def new_tx_id() -> str:
    """A generated transaction id; time-sortable, so equal timestamps keep their write order."""
    return f"{AUTO_ID_PREFIX}{time.time_ns():020d}-{uuid.uuid4().hex[:16]}"


@dataclass(frozen=True)
class Commit:
    """What one commit changes. ``upserts`` holds full records; ``consumed`` and ``held`` replace
    the field's sets; ``marks`` upserts per-(record, field) event-time marks."""

    kind: str
    upserts: pl.DataFrame | None = None
    deletes: tuple[str, ...] = ()
    field: str | None = None
    consumed: frozenset[str] | None = None
    unlisted: frozenset[str] | None = None  # consumed keys no LIST has shown yet (the lean sync path)
    applied_ids: pl.Series | None = None
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    retention: dict[str, Any] | None = None  # {field, cut, base, archived, mode} of a retention commit
    compaction: dict[str, Any] | None = None  # {field, token, merged, replaced} of a compaction commit
    held: pl.DataFrame | None = None
    marks: pl.DataFrame | None = None


@dataclass(frozen=True)
class State:
    """The resource at one version."""

    version: int
    records: pl.DataFrame
    consumed: dict[str, frozenset[str]]
    applied_ids: pl.DataFrame
    committed_at: datetime | None
    checkpoint_version: int
    retention: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # latest per field
    # per field: committed compaction tokens, and sources replaced but maybe not deleted yet
    compaction: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    held: dict[str, pl.DataFrame] = dataclasses.field(default_factory=dict)
    marks: pl.DataFrame = dataclasses.field(default_factory=lambda: pl.DataFrame(schema=MARKS_SCHEMA))
    # Consumed keys that no LIST has shown yet (committed by a sync writer that holds them): their
    # absence from a LIST proves nothing (a LIST may lag behind the write), so they stay consumed
    # until a LIST has shown them once.
    unlisted: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)

    def visible(self, field_name: str, keys: list[str], *, hide_retained: bool = True) -> list[str]:
        """The objects a reader counts: not replaced by a committed compaction, not the output of
        a compaction that never committed, and (``hide_retained``) not a live copy that retention
        is archiving."""
        info = self.compaction.get(field_name, {})
        tokens, replaced = set(info.get("tokens", [])), set(info.get("replaced", []))
        if hide_retained:
            replaced |= set(self.retention.get(field_name, {}).get("archived", []))
        out = []
        for key in keys:
            name = key.rsplit("/", 1)[-1]
            if key in replaced or (name.startswith("c-") and name.split("-")[1] not in tokens):
                continue
            out.append(key)
        return out

    def applied_keys(self, field_name: str) -> pl.Series:
        return self.applied_ids.filter(pl.col("field") == field_name)["id"]

    def field_marks(self, field_name: str) -> pl.DataFrame:
        """``originalId, setTs, setId, maxTs, maxId`` of the records of ``field_name``."""
        return self.marks.filter(pl.col("field") == field_name).drop("field").rename({"id": "originalId"})


@dataclass(frozen=True)
class LogEntry:
    version: int
    raw: dict[str, Any]

    @property
    def committed_at(self) -> datetime:
        return datetime.fromisoformat(self.raw["committedAt"])


class Ledger:
    """Versioned record state of one resource, shared by every plugin of that resource."""

    def __init__(
        self,
        store: Store,
        resource: str,
        schema: Schema,
        *,
        checkpoint_interval: int = 10,
        dedup_window_s: float = 7 * 86400,
    ) -> None:
        self.store = store
        self.resource = resource
        self.schema = schema
        self.checkpoint_interval = checkpoint_interval
        self.dedup_window_s = dedup_window_s
        self.fault: FaultHook | None = None  # test hook: called at each commit step
        self._state: State | None = None
        self._consumed_seen: dict[str, dict[str, int]] = {}  # field -> key -> version that consumed it
        self._seen_after: int | None = None  # this process applied every version after this one
        self._state_lock = threading.Lock()
        self._commit_lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------
    def _empty(self) -> State:
        return State(0, self.schema.empty(), {}, pl.DataFrame(schema=IDS_SCHEMA), None, 0)

    def _load_checkpoint(self) -> State:
        try:
            hint = json.loads(self.store.read(P.last_checkpoint(self.resource)))
            records = self.schema.conform(self._frame(hint["records"], {"id": pl.String()}, keep=True),
                                          self.store.url(hint["records"]))
            ids = self._frame(hint["ids"], IDS_SCHEMA)
            marks = self._frame(hint["marks"], MARKS_SCHEMA) if hint.get("marks") else pl.DataFrame(schema=MARKS_SCHEMA)
            held = {f: self.store.read_parquet(rel) for f, rel in hint.get("held", {}).items()}
            consumed = {f: frozenset(keys) for f, keys in hint.get("consumed", {}).items()}
            unlisted = {f: frozenset(keys) for f, keys in hint.get("unlisted", {}).items()}
            at = datetime.fromisoformat(hint["committedAt"]) if hint.get("committedAt") else None
            return State(int(hint["version"]), records, consumed, ids, at, int(hint["version"]),
                         dict(hint.get("retention", {})), dict(hint.get("compaction", {})), held, marks, unlisted)
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
                f"{self.store.url(rel)} does not have the columns {list(schema)} ({type(exc).__name__}); "
                "it is not ecanalytics metadata. Restore it from a backup."
            ) from exc

    def read_entry(self, version: int) -> LogEntry | None:
        """The log entry of ``version``, or None if it does not exist yet."""
        rel = P.log_entry(self.resource, version)
        try:
            raw = self.store.read(rel)
        except FileNotFoundError:
            return None
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            raise CorruptObjectError(
                f"Log entry {self.store.url(rel)} is not valid JSON; committed state cannot be read past it. "
                "Restore it from a backup."
            ) from exc
        if not isinstance(parsed, dict) or any(k not in parsed for k in _ENTRY_KEYS) or parsed["version"] != version:
            raise CorruptObjectError(
                f"Log entry {self.store.url(rel)} is JSON but not an ecanalytics log entry (it needs the keys "
                f"{list(_ENTRY_KEYS)} and version {version}); committed state cannot be read past it. "
                "Restore it from a backup."
            )
        try:
            entry = LogEntry(version, parsed)
            entry.committed_at  # noqa: B018 - validates the timestamp now, not in the middle of a replay
        except (TypeError, ValueError) as exc:
            raise CorruptObjectError(f"Log entry {self.store.url(rel)} has an unreadable committedAt ({exc}).") from exc
        return entry

    def _apply(self, st: State, entry: LogEntry, upserts: pl.DataFrame | None, ids: pl.DataFrame | None,
               written: dict[str, pl.DataFrame] | None = None) -> State:
        """``st`` advanced by ``entry``; ``written`` holds objects this process just wrote (not re-read)."""
        raw = entry.raw
        written = written or {}

        def load(rel: str, schema: dict[str, pl.DataType] | None = None) -> pl.DataFrame:
            if rel in written:
                return written[rel]
            return self._frame(rel, schema) if schema else self._read_ref(rel)

        records = st.records
        changed = pl.Series("id", raw.get("deletes", []), dtype=pl.String)
        if upserts is not None and upserts.height:
            changed = pl.concat([changed, upserts["id"]])
        if changed.len():
            if records.height:
                records = records.filter(~pl.col("id").is_in(changed.implode()))
            if upserts is not None and upserts.height:
                records = pl.concat([records, upserts.select(records.columns)], how="vertical")
        consumed = st.consumed
        applied = st.applied_ids
        fld = raw.get("field")
        unlisted = st.unlisted
        if fld is not None and raw.get("unlisted") is not None:
            unlisted = {**unlisted, fld: frozenset(raw["unlisted"])}
        if fld is not None and raw.get("consumed") is not None:
            consumed = {**consumed, fld: frozenset(raw["consumed"])}
        if ids is not None and ids.height:
            applied = pl.concat([applied, ids.select(
                pl.lit(fld, pl.String).alias("field"), pl.col("id").cast(pl.String),
                pl.lit(entry.committed_at).dt.cast_time_unit("us").dt.convert_time_zone("UTC").alias("committedAt"),
            )], how="vertical")
        marks = st.marks
        if raw.get("deletes"):
            marks = marks.filter(~pl.col("id").is_in(pl.Series(raw["deletes"], dtype=pl.String).implode()))
        if raw.get("marks"):
            new_marks = load(raw["marks"], MARKS_SCHEMA)
            marks = pl.concat([marks.join(new_marks.select("id", "field"), on=["id", "field"], how="anti"), new_marks])
        held = st.held
        if isinstance(raw.get("held"), dict):
            h = raw["held"]
            held = {**held, h["field"]: load(h["path"])} if h.get("path") else {
                f: v for f, v in held.items() if f != h["field"]}
        retention = st.retention
        if raw.get("retention"):
            retention = {**retention, raw["retention"]["field"]: raw["retention"]}
        compaction = st.compaction
        if raw.get("compaction"):
            c = raw["compaction"]
            before = compaction.get(c["field"], {})
            compaction = {**compaction, c["field"]: {
                "tokens": [*before.get("tokens", []), c["token"]], "replaced": c["replaced"]}}
        return replace(st, version=entry.version, records=records, consumed=consumed, applied_ids=applied,
                       committed_at=entry.committed_at, retention=retention, compaction=compaction, held=held,
                       marks=marks, unlisted=unlisted)

    def _replay(self, st: State) -> State:
        if self._seen_after is None:
            self._seen_after = st.version
        while (entry := self.read_entry(st.version + 1)) is not None:
            ids = self._read_ref(entry.raw["ids"]) if entry.raw.get("ids") else None
            before = st
            st = self._apply(st, entry, self.read_delta(entry), ids)
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
        best: tuple[int, str, str] | None = None
        names = self.store.listdir(f"{self.resource}/_data")
        for name in names:
            if name.endswith(".checkpoint.parquet"):
                v = int(name[:20])
                ids = name.replace(".checkpoint.parquet", ".checkpoint-ids.parquet")
                if v <= version and ids in names and (best is None or v > best[0]):
                    best = (v, f"{self.resource}/_data/{name}", f"{self.resource}/_data/{ids}")
        st = self._empty()
        if best is not None:
            v, rec, ids_rel = best
            records = self.schema.conform(self.store.read_parquet(rec), self.store.url(rec))
            entry = self.read_entry(v)
            st = State(v, records, {}, self.store.read_parquet(ids_rel).cast(IDS_SCHEMA),  # type: ignore[arg-type]
                       entry.committed_at if entry else None, v)
        while st.version < version:
            entry = self.read_entry(st.version + 1)
            if entry is None:
                break
            st = self._apply(st, entry, self.read_delta(entry), None)
        return st

    def entries(self, kinds: tuple[str, ...] = ()) -> list[LogEntry]:
        """Every log entry (optionally of some kinds), oldest first: a maintenance read."""
        out, version = [], 1
        while (entry := self.read_entry(version)) is not None:
            if not kinds or entry.raw.get("kind") in kinds:
                out.append(entry)
            version += 1
        return out

    def read_delta(self, entry: LogEntry) -> pl.DataFrame | None:
        """The records an entry upserted."""
        delta = entry.raw.get("delta")
        return self.schema.conform(self._read_ref(delta), self._where(delta)) if delta else None

    def _read_ref(self, ref: str) -> pl.DataFrame:
        """A frame a log entry names: an object's path, or the frame itself inline."""
        if ref.startswith(_INLINE):
            return decode_parquet(base64.b64decode(ref[len(_INLINE):]), self._where(ref))
        return self.store.read_parquet(ref)

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
    def _fault(self, step: str) -> None:
        if self.fault is not None:
            self.fault(step)

    def commit(self, build: Callable[[State], Commit | None], *, max_attempts: int = 60) -> tuple[State, Commit] | None:
        """Build and commit the next version, retrying on a lost race. None if ``build`` had nothing to do.

        ``build`` is called with the latest state on every attempt and must be free of side effects
        that matter if its commit loses (it may run several times).
        """
        for attempt in range(max_attempts):
            with self._commit_lock:
                st = self.state()
                change = build(st)
                if change is None:
                    return None
                version, token = st.version + 1, uuid.uuid4().hex
                now = datetime.now(timezone.utc)
                raw: dict[str, Any] = {
                    "version": version, "committedAt": now.isoformat(), "kind": change.kind,
                    "token": token, "field": change.field, "deletes": list(change.deletes),
                    "delta": None, "stats": change.stats,
                    "consumed": sorted(change.consumed) if change.consumed is not None else None,
                    "unlisted": sorted(change.unlisted) if change.unlisted is not None else None,
                    "ids": None,
                    "retention": change.retention,
                    "compaction": change.compaction,
                    "marks": None,
                    "held": None,
                }
                upserts = change.upserts.select(st.records.columns) if change.upserts is not None else None
                # Only caller-supplied keys need remembering: generated ids are unique by construction.
                ids = None
                if change.applied_ids is not None:
                    ids = change.applied_ids.filter(~change.applied_ids.str.starts_with(AUTO_ID_PREFIX)).to_frame("id")
                files: dict[str, pl.DataFrame] = {}
                files_inline: dict[str, pl.DataFrame] = {}
                if upserts is not None and upserts.height:
                    files[P.data_file(self.resource, version, token, "delta")] = upserts
                    raw["delta"] = next(iter(files))
                if ids is not None and ids.height:
                    raw["ids"] = P.data_file(self.resource, version, token, "ids")
                    files[raw["ids"]] = ids
                if change.marks is not None and change.marks.height:
                    raw["marks"] = P.data_file(self.resource, version, token, "marks")
                    files[raw["marks"]] = change.marks.select(list(MARKS_SCHEMA)).cast(MARKS_SCHEMA)  # type: ignore[arg-type]
                if change.held is not None and change.field is not None:
                    held_rel = P.data_file(self.resource, version, token, "held") if change.held.height else None
                    raw["held"] = {"field": change.field, "path": held_rel}
                    if held_rel:
                        files[held_rel] = change.held
                for rel, frame in list(files.items()):
                    if frame.height <= INLINE_ROWS:
                        inline = _INLINE + base64.b64encode(parquet_bytes(frame)).decode()
                        for key in ("delta", "ids", "marks"):
                            if raw[key] == rel:
                                raw[key] = inline
                        if isinstance(raw["held"], dict) and raw["held"]["path"] == rel:
                            raw["held"]["path"] = inline
                        del files[rel]
                        files_inline[inline] = frame
                # Sequential on purpose: a deterministic order of storage calls (the simulator
                # replays it exactly); these objects are small and the delta dominates.
                for rel, frame in files.items():
                    self.store.write_parquet(rel, frame)
                self._fault("after_delta")
                if not self._create_entry(version, raw):
                    self.store.delete(list(files))
                    time.sleep(random.uniform(0, min(0.5, 0.004 * 2**attempt)))
                    continue
                self._fault("after_log")
                entry = LogEntry(version, raw)
                with self._state_lock:
                    if self._state is not None and self._state.version == st.version:
                        self._state = self._apply(st, entry, upserts, ids, {**files, **files_inline})
                        self._note_consumed(st, self._state)
                    cached = self._state
                new_state = cached if cached is not None and cached.version >= version else self.state()
                self._fault("before_checkpoint")
                if version - new_state.checkpoint_version >= self.checkpoint_interval:
                    self._checkpoint(new_state)
                return new_state, change
        raise CommitConflictError(
            f"Gave up committing to {self.resource!r} after {max_attempts} lost races; "
            "too many concurrent consolidators. Retry later or run fewer at once."
        )

    def _create_entry(self, version: int, raw: dict[str, Any]) -> bool:
        rel = P.log_entry(self.resource, version)
        if self.store.create(rel, json.dumps(raw, sort_keys=True).encode()):
            return True
        existing = self.read_entry(version)
        return existing is not None and existing.raw.get("token") == raw["token"]

    def _checkpoint(self, st: State) -> None:
        """Snapshot records, the dedup window and the consumed sets at ``st.version``."""
        cutoff = datetime.now(timezone.utc) - timedelta(seconds=self.dedup_window_s)
        ids = st.applied_ids.filter(pl.col("committedAt") >= cutoff)
        token = uuid.uuid4().hex
        records_rel = P.data_file(self.resource, st.version, token, "checkpoint")
        ids_rel = P.data_file(self.resource, st.version, token, "checkpoint-ids")
        self.store.write_parquet(records_rel, st.records.sort("id"))
        self.store.write_parquet(ids_rel, ids)
        marks_rel = P.data_file(self.resource, st.version, token, "checkpoint-marks")
        self.store.write_parquet(marks_rel, st.marks.sort("field", "id"))
        held = {}
        for f, rows in st.held.items():
            held[f] = P.data_file(self.resource, st.version, token, f"checkpoint-held-{f}")
            self.store.write_parquet(held[f], rows)
        hint = {
            "version": st.version, "records": records_rel, "ids": ids_rel, "marks": marks_rel, "held": held,
            "consumed": {f: sorted(k) for f, k in st.consumed.items()},
            "unlisted": {f: sorted(k) for f, k in st.unlisted.items()},
            "retention": st.retention,
            "compaction": st.compaction,
            "committedAt": st.committed_at.isoformat() if st.committed_at else None,
        }
        try:
            current = json.loads(self.store.read(P.last_checkpoint(self.resource)))["version"]
        except (FileNotFoundError, ValueError, KeyError):
            current = -1
        if current < st.version:  # a racing checkpointer may have gone further; never go back
            self.store.write(P.last_checkpoint(self.resource), json.dumps(hint).encode())
        with self._state_lock:
            if self._state is not None and self._state.version == st.version:
                self._state = replace(self._state, checkpoint_version=st.version, applied_ids=ids)


