"""Checkpoints, typed: a state at one version as the frames it names, so a reader replays only
the log entries after it.

A checkpoint is ``_log/{version}.checkpoint.json`` (created once) plus ``_log/_last_checkpoint``
(the newest, never moved back), both holding :meth:`Checkpoint.to_json`. Its frames (each
bucket's base records and marks, the dedup window's keys, and per field the held rows, the
manifest, key conflicts and hidden rows) are objects of their own, or inline when small. A
bucket is its base plus a chain of the commit parts applied after it (format 3; the delta
objects the log entries name, never copied): a checkpoint rewrites only the buckets whose chains
got long, so a small commit on a big resource costs its change, not its buckets. An unreadable
checkpoint only costs a longer replay: the log is complete on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ecanalytics.ledger.buckets import Part
from ecanalytics.ledger.maintenance_records import CompactionState, RetentionCut

FORMAT = 3
READABLE = (2, 3)  # format 2 had no chains: every bucket a base checkpointed at the checkpoint's version


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint of ``version`` holds (frames by reference)."""

    version: int
    buckets: tuple[Part, ...]  # every bucket's base (records and marks)
    # Per bucket, the commit parts applied after its base (oldest first), and the version its
    # base was written at: a bucket that changed little since its base keeps its base and lists
    # the parts instead of being rewritten (see ``Ledger._checkpoint``).
    chains: tuple[tuple[Part, ...], ...]
    base_versions: tuple[int, ...]
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
            "buckets": [{"records": b.records, "marks": b.marks, "baseVersion": v,
                         **({"parts": [_part_json(p) for p in chain]} if chain else {})}
                        for b, chain, v in zip(self.buckets, self.chains, self.base_versions, strict=True)],
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
        if not isinstance(raw, dict) or raw.get("format") not in READABLE:
            raise ValueError(f"checkpoint format {raw.get('format') if isinstance(raw, dict) else raw!r} is not one of {READABLE}")
        version = int(raw["version"])
        buckets = tuple(Part(b["records"], b["marks"]) for b in raw["buckets"])
        if not buckets:
            raise ValueError("a checkpoint without buckets")
        chains = tuple(tuple(_part(p) for p in b.get("parts", ())) for b in raw["buckets"])
        base_versions = tuple(int(b.get("baseVersion", version)) for b in raw["buckets"])
        if any(not 0 <= v <= version for v in base_versions):
            raise ValueError("a bucket base newer than its checkpoint")
        return cls(
            version=version, buckets=buckets, chains=chains, base_versions=base_versions, ids=str(raw["ids"]),
            held=_refs(raw.get("held", {})), conflicts=_refs(raw.get("conflicts", {})),
            hidden=_refs(raw.get("hidden", {})), manifest=_refs(raw.get("manifest", {})),
            consumed={f: frozenset(keys) for f, keys in raw.get("consumed", {}).items()},
            unlisted={f: frozenset(keys) for f, keys in raw.get("unlisted", {}).items()},
            retention={f: RetentionCut.from_json(r) for f, r in raw.get("retention", {}).items()},
            compaction={f: CompactionState.from_json(c) for f, c in raw.get("compaction", {}).items()},
            committed_at=datetime.fromisoformat(raw["committedAt"]) if raw.get("committedAt") else None,
        )


def _part_json(part: Part) -> dict[str, Any]:
    return {"records": part.records, "marks": part.marks, "deletes": list(part.deletes)}


def _part(raw: Any) -> Part:
    if not isinstance(raw, dict):
        raise TypeError("a chained part is an object")
    refs = [raw.get("records"), raw.get("marks")]
    deletes = raw.get("deletes", [])
    if not all(r is None or isinstance(r, str) for r in refs) or not all(isinstance(d, str) for d in deletes):
        raise TypeError("a chained part names its frames and deletes by strings")
    return Part(refs[0], refs[1], tuple(deletes))


def _refs(raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise TypeError("a checkpoint's frames are named by strings, per field")
    return dict(raw)
