"""Compaction: merge the small applied objects of each partition, through the commit log."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from ecanalytics import _runtime
from ecanalytics.consolidation.cluster import FieldSpec, sweep
from ecanalytics.ledger import Commit, State
from ecanalytics.ledger.keys import hide
from ecanalytics.ledger.maintenance_records import CompactionRun, CompactionState
from ecanalytics.ledger.transactions import history_keys, read_history
from ecanalytics.storage import paths as P

if TYPE_CHECKING:
    from ecanalytics.consolidation import Field


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


def _finish_compaction(c: Field, st: State) -> None:
    """Delete sources a committed compaction replaced, and output of compactions that lost.

    An output is named with the version its compaction would commit (:func:`_run_token`), so it is
    an orphan exactly when that version is taken (at most ``st.version``) by another commit: its
    writer can never commit it, however long it was paused. Output of a version nobody took yet is
    kept (no age check, no clock)."""
    store = c.ledger.store
    info = st.compaction.get(c.field, CompactionState())
    replaced = list(info.replaced)
    for key in replaced:
        c.ledger.fault_point("compaction_delete")
        store.delete([key])
    committed = set(info.tokens)
    for key in history_keys(store, c.dataset):
        name = key.rsplit("/", 1)[-1]
        if name.startswith("c-"):
            token = name.split("-")[1]
            version = _token_version(token)
            if token not in committed and version is not None and version <= st.version:
                store.delete([key])


def _run_token(version: int) -> str:
    """A compaction run's token: the version it would commit, then randomness."""
    return f"{version:020d}{_runtime.token(12)}"


def _token_version(token: str) -> int | None:
    return int(token[:20]) if len(token) == 32 and token[:20].isdigit() else None


def merge_partition(c: Field, prefix: str, group: list[str], token: str, p: int, target_rows: int,
                    target_bytes: int, hidden: pl.DataFrame) -> dict[str, int] | None:
    """Merge one partition's objects into objects of up to ``target_rows`` rows (or about
    ``target_bytes``), named by ``token`` and the partition's index ``p`` (unique in the run),
    leaving out the ``hidden`` rows (occurrences of keys that did not count); returns each merged
    object's size, or None when merging would not reduce the object count."""
    store = c.ledger.store
    rows = hide(read_history(store, group, c.dtype), hidden).drop("cohortDate", "cohortMonth", "_object", "_row").sort(
        "timestamp", "id")
    per_row = max(1, int(rows.estimated_size()) // max(1, rows.height))
    chunk = max(1, min(target_rows, target_bytes // per_row))
    if (rows.height + chunk - 1) // chunk >= len(group):
        return None
    sizes = {}
    for j, offset in enumerate(range(0, rows.height, chunk)):
        key = P.compacted_object(prefix, token, p * 10_000 + j)
        sizes[key] = store.write_parquet(key, rows.slice(offset, chunk))
    return sizes


def _merge_task(spec: FieldSpec, prefix: str, group: list[str], token: str, p: int, target_rows: int,
                target_bytes: int, hidden: pl.DataFrame) -> dict[str, int] | None:
    """:func:`merge_partition` on a Dask worker."""
    return merge_partition(spec.consolidator(), prefix, group, token, p, target_rows, target_bytes, hidden)


def compact(c: Field, *, target_rows: int = TARGET_ROWS, target_bytes: int = TARGET_BYTES,
            client: Any = None) -> CompactionResult:
    """Merge the small applied objects of each partition into objects of up to ``target_rows`` rows
    (or about ``target_bytes``), through the commit log; see the module notes on readers.
    ``client`` (a ``distributed.Client``) merges the partitions on its workers; this process
    plans and commits."""
    started = time.perf_counter()
    sweep(c.ledger)  # what killed or outraced drivers left
    _finish_compaction(c, c.ledger.state())
    info: dict[str, int] = {"partitions": 0, "sources": 0, "merged": 0}

    def build(st: State) -> Commit | None:
        keys = st.applied_objects(c.field, archived=False)  # the manifest: never a pending object
        by_partition: dict[str, list[str]] = {}
        for key in keys:
            by_partition.setdefault(key.rsplit("/", 1)[0], []).append(key)
        token = _run_token(st.version + 1)
        groups = [(prefix, group) for prefix, group in sorted(by_partition.items()) if len(group) >= 2]
        hidden = st.hidden_of(c.field)

        def hidden_in(group: list[str]) -> pl.DataFrame:
            return hidden.filter(pl.col("key").is_in(group)) if hidden.height else hidden

        if client is None:
            outputs = [merge_partition(c, prefix, group, token, p, target_rows, target_bytes, hidden_in(group))
                       for p, (prefix, group) in enumerate(groups)]
        else:
            spec = FieldSpec.of(c)
            outputs = client.gather([client.submit(_merge_task, spec, prefix, group, token, p, target_rows, target_bytes,
                                                   hidden_in(group), key=f"ec-compact-{token}-{p}", pure=False)
                                     for p, (prefix, group) in enumerate(groups)])
        sizes: dict[str, int | None] = {}
        replaced: list[str] = []
        for (_prefix, group), merged in zip(groups, outputs, strict=True):
            if merged:
                sizes.update(merged)
                replaced.extend(group)
        if not sizes:
            return None
        info.update(partitions=sum(1 for m in outputs if m), sources=len(replaced), merged=len(sizes))
        return Commit("compact", field=c.field, stats=dict(info), applied=sizes, unapplied=tuple(replaced),
                      written=tuple(sizes),
                      compaction=CompactionRun(c.field, token, tuple(sizes), tuple(replaced)))

    committed = c.ledger.commit(build)
    if committed is not None:
        _finish_compaction(c, committed[0])
    return CompactionResult(c.ledger.resource, c.field, committed[0].version if committed else None,
                            info["partitions"], info["sources"], info["merged"], time.perf_counter() - started)
