"""The commit log's entries, typed: one class per action, one codec.

An entry is one JSON object under ``_log/`` (created once, never replaced). In memory it is a
:class:`LogEntry` whose parts are typed actions: bucket upserts and marks, the field's consumed
and unlisted sets *as changes* (:class:`SetChange`), manifest changes, held and hidden rows and key
conflicts (:class:`FieldFrame`), a retention cut or a compaction
(:mod:`~ecanalytics.ledger.maintenance_records`). Everyone reads entries through
:meth:`LogEntry.from_json` and writes them through :meth:`LogEntry.to_json`; nothing else looks at
the JSON. The wire format is the one earlier versions wrote, so existing roots read unchanged.

An entry's size follows its change: the sets travel as what was added and removed, frames of at
most ``INLINE_ROWS`` rows inside the entry, bigger ones as objects it names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, cast, get_args

from ecanalytics.errors import CorruptObjectError
from ecanalytics.ledger.buckets import Part, buckets_of
from ecanalytics.ledger.maintenance_records import CompactionRun, RetentionCut

EntryKind = Literal["insert", "update", "delete", "consolidate", "recalculate", "retention", "compact", "rebucket"]
ENTRY_KINDS: tuple[str, ...] = get_args(EntryKind)
REQUIRED_KEYS = ("version", "committedAt", "kind", "token")


@dataclass(frozen=True)
class SetChange:
    """How a field's set of object keys changes in one entry. ``whole``: the entry stores the new
    set itself (entries written before sets travelled as changes)."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()
    whole: bool = False

    @classmethod
    def between(cls, old: frozenset[str] | None, new: frozenset[str] | None) -> SetChange | None:
        """The change from ``old`` to ``new`` (None: the entry leaves the set as it is)."""
        if new is None:
            return None
        before = old or frozenset()
        return cls(tuple(sorted(new - before)), tuple(sorted(before - new)))

    def apply(self, old: frozenset[str] | None) -> frozenset[str]:
        if self.whole:
            return frozenset(self.add)
        return ((old or frozenset()) - frozenset(self.remove)) | frozenset(self.add)

    def to_json(self) -> Any:
        return list(self.add) if self.whole else {"add": list(self.add), "remove": list(self.remove)}

    @classmethod
    def from_json(cls, raw: Any) -> SetChange:
        if isinstance(raw, dict):
            return cls(_strings(raw.get("add", [])), _strings(raw.get("remove", [])))
        return cls(_strings(raw), whole=True)


@dataclass(frozen=True)
class ManifestChange:
    """Transaction objects that join the field's manifest (with their sizes) and that leave it."""

    add: Mapping[str, int | None] = dataclasses.field(default_factory=dict)
    remove: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"add": dict(sorted(self.add.items())), "remove": sorted(self.remove)}

    @classmethod
    def from_json(cls, raw: Any) -> ManifestChange:
        if not isinstance(raw, dict):
            raise TypeError("a manifest change is an object")
        add = raw.get("add") or {}
        if not isinstance(add, dict):
            raise TypeError("manifest additions map keys to sizes")
        return cls({str(k): (int(v) if v is not None else None) for k, v in add.items()}, _strings(raw.get("remove") or []))


@dataclass(frozen=True)
class FieldFrame:
    """A frame of one field an entry carries (held rows, hidden occurrences, key conflicts):
    ``path`` names it (an object, or the frame inline); None clears it (held rows only)."""

    field: str
    path: str | None

    def to_json(self) -> dict[str, Any]:
        return {"field": self.field, "path": self.path}

    @classmethod
    def from_json(cls, raw: Any) -> FieldFrame:
        if not isinstance(raw, dict) or not isinstance(raw.get("field"), str):
            raise TypeError("a field frame names its field")
        path = raw.get("path")
        if path is not None and not isinstance(path, str):
            raise TypeError("a field frame's path is a string")
        return cls(raw["field"], path)


@dataclass(frozen=True)
class LogEntry:
    """One committed version: what it changed, typed (see the module docstring)."""

    version: int
    committed_at: datetime
    kind: EntryKind
    token: str  # unique per attempt: tells a retried create of this entry from a rival's
    field: str | None = None
    buckets: int | None = None  # the bucket count its parts were split by
    delta: Mapping[int, str] = dataclasses.field(default_factory=dict)  # bucket -> upserted records
    marks: Mapping[int, str] = dataclasses.field(default_factory=dict)  # bucket -> upserted event-time marks
    deletes: tuple[str, ...] = ()  # record ids deleted
    rebase: tuple[Part, ...] | None = None  # every bucket replaced (a change of the bucket count)
    ids: str | None = None  # caller-supplied keys applied, with their signature
    consumed: SetChange | None = None
    unlisted: SetChange | None = None
    manifest: ManifestChange | None = None
    held: FieldFrame | None = None
    hidden: FieldFrame | None = None
    conflicts: FieldFrame | None = None
    retention: RetentionCut | None = None
    compaction: CompactionRun | None = None
    stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def bucket_part(self, k: int, n: int) -> Part:
        """Bucket ``k``'s part of this entry for a state of ``n`` buckets (an entry cut for another
        count changes no bucket of it)."""
        if self.rebase is not None:
            return self.rebase[k] if len(self.rebase) == n else Part()
        if (self.buckets or n) != n:
            return Part()
        return Part(self.delta.get(k), self.marks.get(k), self.deletes_of(n).get(k, ()))

    def deletes_of(self, n: int) -> dict[int, tuple[str, ...]]:
        """The deleted record ids by bucket of ``n``."""
        if not self.deletes:
            return {}
        out: dict[int, list[str]] = {}
        for rid, k in zip(self.deletes, buckets_of(list(self.deletes), n).to_list(), strict=True):
            out.setdefault(k, []).append(rid)
        return {k: tuple(v) for k, v in out.items()}

    def record_refs(self) -> list[str]:
        """The objects (or inline frames) of the records this entry upserted, every bucket."""
        if self.rebase is not None:
            return [p.records for p in self.rebase if p.records]
        return [self.delta[k] for k in sorted(self.delta)]

    def parts(self) -> frozenset[str]:
        """Every object this entry names that was written for its version (deltas, marks, ids,
        held rows, a retention base, ...): what a sweep must keep among that version's objects."""
        names: set[str] = set()
        names.update(self.delta.values())
        names.update(self.marks.values())
        for p in self.rebase or ():
            names.update(r for r in (p.records, p.marks) if r)
        names.update(f.path for f in (self.held, self.hidden, self.conflicts) if f is not None and f.path)
        if self.ids:
            names.add(self.ids)
        if self.retention is not None:
            names.update((self.retention.base, *self.retention.archived))
        if self.compaction is not None:
            names.update((*self.compaction.merged, *self.compaction.replaced))
        return frozenset(names)

    # -- the codec -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version, "committedAt": self.committed_at.isoformat(), "kind": self.kind,
            "token": self.token, "field": self.field, "deletes": list(self.deletes), "stats": dict(self.stats),
            "buckets": self.buckets,
            "delta": {str(k): v for k, v in sorted(self.delta.items())},
            "marks": {str(k): v for k, v in sorted(self.marks.items())},
            "consumed": self.consumed.to_json() if self.consumed is not None else None,
            "unlisted": self.unlisted.to_json() if self.unlisted is not None else None,
            "ids": self.ids,
            "retention": self.retention.as_json() if self.retention else None,
            "compaction": self.compaction.as_json() if self.compaction else None,
            "held": self.held.to_json() if self.held is not None else None,
            "manifest": self.manifest.to_json() if self.manifest is not None else None,
        }
        if self.rebase is not None:
            out["rebase"] = [{"records": p.records, "marks": p.marks} for p in self.rebase]
        if self.hidden is not None:
            out["hidden"] = self.hidden.to_json()
        if self.conflicts is not None:
            out["conflicts"] = self.conflicts.to_json()
        return out

    @classmethod
    def from_json(cls, raw: Any, version: int, where: str) -> LogEntry:
        """Parse and check an entry (``where`` names it in errors): anything that is not an
        ecanalytics log entry of ``version`` raises :class:`CorruptObjectError`."""
        if not isinstance(raw, dict) or any(k not in raw for k in REQUIRED_KEYS) or raw["version"] != version:
            raise CorruptObjectError(
                f"Log entry {where} is JSON but not an ecanalytics log entry (it needs the keys "
                f"{list(REQUIRED_KEYS)} and version {version}); committed state cannot be read past it. "
                "Restore it from a backup.")
        try:
            committed_at = datetime.fromisoformat(raw["committedAt"])
        except (TypeError, ValueError) as exc:
            raise CorruptObjectError(f"Log entry {where} has an unreadable committedAt ({exc}); committed state "
                                     "cannot be read past it. Restore it from a backup.") from exc
        delta, marks = raw.get("delta") or {}, raw.get("marks") or {}
        if not isinstance(delta, dict) or not isinstance(marks, dict):
            raise CorruptObjectError(
                f"Log entry {where} was written by an ecanalytics without buckets; this version cannot read it "
                "(there is no migration): keep using the older version for this root.")
        try:
            rebase = raw.get("rebase")
            return cls(
                version=version, committed_at=committed_at, kind=_kind(raw["kind"]), token=str(raw["token"]),
                field=_optional_str(raw.get("field")),
                buckets=int(raw["buckets"]) if raw.get("buckets") else None,
                delta={int(k): str(v) for k, v in delta.items() if v},
                marks={int(k): str(v) for k, v in marks.items() if v},
                deletes=_strings(raw.get("deletes") or []),
                rebase=tuple(Part(_optional_str(b.get("records")), _optional_str(b.get("marks"))) for b in rebase)
                if rebase is not None else None,
                ids=_optional_str(raw.get("ids")),
                consumed=SetChange.from_json(raw["consumed"]) if raw.get("consumed") is not None else None,
                unlisted=SetChange.from_json(raw["unlisted"]) if raw.get("unlisted") is not None else None,
                manifest=ManifestChange.from_json(raw["manifest"]) if raw.get("manifest") else None,
                held=FieldFrame.from_json(raw["held"]) if raw.get("held") else None,
                hidden=FieldFrame.from_json(raw["hidden"]) if raw.get("hidden") else None,
                conflicts=FieldFrame.from_json(raw["conflicts"]) if raw.get("conflicts") else None,
                retention=RetentionCut.from_json(raw["retention"]) if raw.get("retention") else None,
                compaction=CompactionRun.from_json(raw["compaction"]) if raw.get("compaction") else None,
                stats=dict(raw.get("stats") or {}),
            )
        except (CorruptObjectError, TypeError, ValueError, AttributeError, KeyError) as exc:
            raise CorruptObjectError(
                f"Log entry {where} has a part this version cannot read ({type(exc).__name__}: {exc}); committed "
                "state cannot be read past it. Restore it from a backup.") from exc


def _kind(value: Any) -> EntryKind:
    if value not in ENTRY_KINDS:
        raise ValueError(f"unknown entry kind {value!r}")
    return cast(EntryKind, value)


def _optional_str(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _strings(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list | tuple) or not all(isinstance(k, str) for k in raw):
        raise TypeError("expected a list of strings")
    return tuple(raw)

