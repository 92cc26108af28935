"""Checkpoints, typed: a state at one version as the frames it names, so a reader replays only
the log entries after it.

A checkpoint is ``_log/{version}.checkpoint.json`` (created once) plus ``_log/_last_checkpoint``
(the newest, never moved back), both holding :meth:`Checkpoint.to_json`. Its frames (each
changed bucket's records and marks, the dedup window's keys, and per field the held rows, the
manifest, key conflicts and hidden rows) are objects of their own, or inline when small. An
unreadable checkpoint only costs a longer replay: the log is complete on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ecanalytics.ledger.buckets import Part
from ecanalytics.ledger.maintenance_records import CompactionState, RetentionCut

FORMAT = 2


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint of ``version`` holds (frames by reference)."""

    version: int
    buckets: tuple[Part, ...]  # every bucket's base (records and marks)
    ids: str  # caller-supplied keys applied within the dedup window
    held: dict[str, str]
    conflicts: dict[str, str]
    hidden: dict[str, str]
    manifest: dict[str, str]
    consumed: dict[str, frozenset[str]]
    unlisted: dict[str, frozenset[str]]
    retention: dict[str, RetentionCut]
    compaction: dict[str, CompactionState]
    committed_at: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": self.version,
            "buckets": [{"records": b.records, "marks": b.marks} for b in self.buckets],
            "ids": self.ids, "held": self.held, "conflicts": self.conflicts, "hidden": self.hidden,
            "manifest": self.manifest,
            "consumed": {f: sorted(k) for f, k in self.consumed.items()},
            "unlisted": {f: sorted(k) for f, k in self.unlisted.items()},
            "retention": {f: r.as_json() for f, r in self.retention.items()},
            "compaction": {f: c.as_json() for f, c in self.compaction.items()},
            "committedAt": self.committed_at.isoformat() if self.committed_at else None,
        }

    @classmethod
    def from_json(cls, raw: Any) -> Checkpoint:
        """Parse a checkpoint; anything else raises ``ValueError``, ``KeyError``, ``TypeError``
        or :class:`~ecanalytics.errors.CorruptObjectError` (the reader then replays the log)."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"checkpoint format {raw.get('format') if isinstance(raw, dict) else raw!r} is not {FORMAT}")
        buckets = tuple(Part(b["records"], b["marks"]) for b in raw["buckets"])
        if not buckets:
            raise ValueError("a checkpoint without buckets")
        return cls(
            version=int(raw["version"]), buckets=buckets, ids=str(raw["ids"]),
            held=_refs(raw.get("held", {})), conflicts=_refs(raw.get("conflicts", {})),
            hidden=_refs(raw.get("hidden", {})), manifest=_refs(raw.get("manifest", {})),
            consumed={f: frozenset(keys) for f, keys in raw.get("consumed", {}).items()},
            unlisted={f: frozenset(keys) for f, keys in raw.get("unlisted", {}).items()},
            retention={f: RetentionCut.from_json(r) for f, r in raw.get("retention", {}).items()},
            compaction={f: CompactionState.from_json(c) for f, c in raw.get("compaction", {}).items()},
            committed_at=datetime.fromisoformat(raw["committedAt"]) if raw.get("committedAt") else None,
        )


def _refs(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise TypeError("a checkpoint's frames are named by strings, per field")
    return dict(raw)
