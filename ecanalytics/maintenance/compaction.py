"""Compaction: merge the small applied objects of each partition, through the commit log."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ecanalytics.ledger import Commit, State
from ecanalytics.ledger.transactions import history_keys, read_history
from ecanalytics.storage import parquet_bytes
from ecanalytics.storage import paths as P

if TYPE_CHECKING:
    from ecanalytics.consolidation import Consolidator


COMPACT_GRACE_S = 3600
TARGET_ROWS = 1_000_000
TARGET_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CompactionResult:
    """What one compaction run merged for one field."""

    resource: str
    field: str
    version: int | None
    partitions: int
    sources: int
    merged: int
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        return {"resource": self.resource, "field": self.field, "version": self.version,
                "partitions": self.partitions, "sources": self.sources, "merged": self.merged,
                "durationMs": round(self.duration_s * 1000, 3)}


def _finish_compaction(c: Consolidator, st: State) -> None:
    """Delete sources a committed compaction replaced, and old output of uncommitted ones."""
    store = c.ledger.store
    info = st.compaction.get(c.field, {})
    replaced = [k for k in info.get("replaced", []) if isinstance(k, str)]
    for key in replaced:
        c.ledger._fault("compaction_delete")
        store.delete([key])
    dataset = c.dataset
    committed = set(info.get("tokens", []))
    now_ns = time.time_ns()
    for key in history_keys(store, dataset):
        name = key.rsplit("/", 1)[-1]
        if name.startswith("c-"):
            token = name.split("-")[1]
            if token not in committed and now_ns - int(token[:20]) > COMPACT_GRACE_S * 1_000_000_000:
                store.delete([key])  # output of a compaction that died before committing


def compact(c: Consolidator, *, target_rows: int = TARGET_ROWS,
            target_bytes: int = TARGET_BYTES) -> CompactionResult:
    """Merge the small applied objects of each partition into objects of up to ``target_rows`` rows
    (or about ``target_bytes``), through the commit log; see the module notes on readers."""
    store = c.ledger.store
    started = time.perf_counter()
    _finish_compaction(c, c.ledger.state())
    info: dict[str, int] = {"partitions": 0, "sources": 0, "merged": 0}

    def build(st: State) -> Commit | None:
        keys = st.applied_objects(c.field, archived=False)  # the manifest: never a pending object
        by_partition: dict[str, list[str]] = {}
        for key in keys:
            by_partition.setdefault(key.rsplit("/", 1)[0], []).append(key)
        token = P.new_file_id().replace("-", "")[:20] + uuid.uuid4().hex[:12]
        merged: list[str] = []
        replaced: list[str] = []
        sizes: dict[str, int | None] = {}
        partitions = 0
        for prefix, group in sorted(by_partition.items()):
            if len(group) < 2:
                continue
            rows = read_history(store, group, c.dtype).drop("cohortDate", "cohortMonth", "_object").sort("timestamp", "id")
            per_row = max(1, int(rows.estimated_size()) // max(1, rows.height))
            chunk = max(1, min(target_rows, target_bytes // per_row))
            if (rows.height + chunk - 1) // chunk >= len(group):
                continue  # merging would not reduce the number of objects
            for offset in range(0, rows.height, chunk):
                # Run-wide numbering: object names must be unique in the dataset (views match names).
                key = f"{prefix}/c-{token}-{len(merged):06d}.parquet"
                data = parquet_bytes(rows.slice(offset, chunk))
                store.write(key, data)
                merged.append(key)
                sizes[key] = len(data)
            replaced.extend(group)
            partitions += 1
        if not merged:
            return None
        info.update(partitions=partitions, sources=len(replaced), merged=len(merged))
        return Commit("compact", field=c.field, stats=dict(info), applied=sizes, unapplied=tuple(replaced),
                      written=tuple(merged),
                      compaction={"field": c.field, "token": token, "merged": merged, "replaced": replaced})

    committed = c.ledger.commit(build)
    if committed is not None:
        _finish_compaction(c, committed[0])
    return CompactionResult(c.ledger.resource, c.field, committed[0].version if committed else None,
                            info["partitions"], info["sources"], info["merged"], time.perf_counter() - started)
