"""Maintenance jobs that read the whole history: recalculation and event-time travel.

Both fold a field's transactions in ``(timestamp, id)`` order, a repeated id counting once (the
first by ``(timestamp, id, object)``), with the field's reducer, starting from each record's
*base*: the retention base, else the managed value it was last inserted with, else the attribute
default. Consolidation folds late data in event order too, so a recalculation after it finds
nothing to change; it repairs values that were changed by hand or by an older version.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import polars as pl

from ecanalytics.consolidation.eventorder import marks_from_history
from ecanalytics.errors import ValidationError
from ecanalytics.ledger import Commit, State
from ecanalytics.ledger.transactions import TX_SCHEMA, history_keys, read_history
from ecanalytics.storage import paths as P

if TYPE_CHECKING:
    from ecanalytics.plugin import EventualConsistencyPlugin
    from ecanalytics.resource import Resource


@dataclass(frozen=True)
class RecalculationResult:
    """What ``recalculate`` checked and changed. ``version`` is None when nothing differed."""

    resource: str
    field: str
    version: int | None
    checked: int
    changed: int
    transactions: int
    duration_s: float
    values: pl.DataFrame  # id, before, after of the changed records

    def as_dict(self) -> dict[str, object]:
        return {"resource": self.resource, "field": self.field, "version": self.version, "checked": self.checked,
                "changed": self.changed, "transactions": self.transactions,
                "durationMs": round(self.duration_s * 1000, 3)}


def base_values(resource: Resource, field: str, st: State | None = None) -> pl.DataFrame:
    """``originalId, current``: where a rebuild of ``field`` starts (see :meth:`Consolidator.base`)."""
    return resource.plugin(field).consolidator.base(st or resource.ledger.state())


def retention_cut(resource: Resource, field: str) -> dt.date | None:
    """The cohort day before which ``field``'s history was archived or deleted (None if never)."""
    retention = resource.ledger.state().retention.get(field)
    return dt.date.fromisoformat(retention["cut"]) if retention else None


def field_history(plugin: EventualConsistencyPlugin, st: State, *, applied_only: bool) -> pl.DataFrame:
    """Every transaction of the field, deduplicated by id: the applied ones, plus (unless
    ``applied_only``) the pending ones and the rows held back."""
    c = plugin.consolidator
    if applied_only:
        return c.history(st, frozenset(c.pending_objects(st)))
    rows = c.history(st, frozenset()).select(list(TX_SCHEMA))
    held = c.held_frame(st).drop("_reason").cast(rows.schema)  # type: ignore[arg-type]
    return pl.concat([rows, held]).sort(["timestamp", "id"]).unique("id", keep="first", maintain_order=True)


def recalculate(resource: Resource, field: str | None = None, record_id: str | None = None) -> RecalculationResult:
    """Rebuild ``field`` from its applied history and commit only the records that differ."""
    plugin = resource.plugin(field)
    started = time.perf_counter()
    consolidator = plugin.consolidator
    outcome: dict[str, object] = {}

    def build(st: State) -> Commit | None:
        rows = field_history(plugin, st, applied_only=True)
        records = st.records
        if record_id is not None:
            rows = rows.filter(pl.col("originalId") == record_id)
            records = records.filter(pl.col("id") == record_id)
        base = consolidator.base(st)
        new = consolidator._reducer()(rows, base, consolidator.default)
        default = pl.lit(consolidator.default).cast(consolidator.dtype)
        current = records.select("id", pl.col(plugin.field).fill_null(default).alias("before"))
        # A record without history (e.g. all of it archived by retention) keeps its base.
        diff = (
            current.join(new.rename({"originalId": "id", "value": "after"}), on="id", how="left")
            .join(base.rename({"originalId": "id", "current": "_base"}), on="id", how="left")
            .select("id", "before", pl.coalesce("after", "_base", default).alias("after"))
            .filter(pl.col("before") != pl.col("after"))
        )
        outcome.update(checked=records.height, transactions=rows.height, diff=diff)
        if diff.height == 0:
            return None
        upserts = (
            records.join(diff.select("id", "after"), on="id", how="inner")
            .with_columns(pl.col("after").alias(plugin.field)).drop("after")
        )
        changed = rows.filter(pl.col("originalId").is_in(diff["id"].implode()))
        return Commit("recalculate", upserts=upserts, field=None, stats={"changed": diff.height},
                      marks=marks_from_history(changed, plugin.field))

    committed = resource.ledger.commit(build)
    diff = outcome["diff"]
    assert isinstance(diff, pl.DataFrame)
    return RecalculationResult(
        resource.name, plugin.field, committed[0].version if committed else None, int(outcome["checked"]),  # type: ignore[call-overload]
        diff.height, int(outcome["transactions"]), time.perf_counter() - started, diff,  # type: ignore[call-overload]
    )


def records_at_events(resource: Resource, until: datetime) -> pl.DataFrame:
    """Records as if exactly the transactions with event time ``<= until`` had been applied.

    Every managed field is folded from its base (the value the record was inserted with, or the
    default) over those transactions, applied or still pending. The records are today's records
    plus any record with a transaction by then (a deleted one is rebuilt from defaults);
    unmanaged attributes are today's. Insert times play no part: this axis is event time only.
    """
    if until.tzinfo is None:
        raise ValidationError("events_until must be timezone-aware.")
    st = resource.ledger.state()
    for name, plugin in resource.plugins.items():
        cut = retention_cut(resource, name)
        deleted = st.retention.get(name, {}).get("mode") == "delete"
        if cut is not None and deleted and until < datetime.combine(cut, dt.time(), ZoneInfo(plugin.timezone)):
            raise ValidationError(
                f"The history of {plugin.dataset} before {cut} was deleted by retention; events_until must "
                f"be on or after {cut}. (Retention in 'archive' mode keeps it readable.)"
            )
    present: set[str] = set(st.records["id"].to_list())
    histories = {
        name: field_history(plugin, st, applied_only=False).filter(pl.col("timestamp") <= until)
        for name, plugin in resource.plugins.items()
    }
    for rows in histories.values():
        present.update(rows["originalId"].unique().to_list())
    out = st.records.filter(pl.col("id").is_in(list(present)))
    missing = sorted(present - set(out["id"].to_list()))
    if missing:
        schema = resource.schema
        out = pl.concat([out, schema.frame([schema.new_record({"id": rid}, check_required=False) for rid in missing])])
    for name, plugin in resource.plugins.items():
        c = plugin.consolidator
        base = c.base(st)
        new = c._reducer()(histories[name], base, c.default).rename({"originalId": "id", "value": "_new"})
        out = (
            out.join(new, on="id", how="left")
            .join(base.rename({"originalId": "id", "current": "_base"}), on="id", how="left")
            .with_columns(pl.coalesce("_new", "_base", pl.lit(c.default).cast(c.dtype)).alias(name))
            .drop("_new", "_base")
        )
    return out.sort("id")


@dataclass(frozen=True)
class RetentionResult:
    """What a retention run archived (or deleted) for one field."""

    resource: str
    field: str
    version: int | None
    cut: str
    objects: int
    transactions: int
    mode: str
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        return {"resource": self.resource, "field": self.field, "version": self.version, "cut": self.cut,
                "objects": self.objects, "transactions": self.transactions, "mode": self.mode,
                "durationMs": round(self.duration_s * 1000, 3)}


def _finish_moves(resource: Resource, retention: dict[str, object]) -> None:
    """Complete the object moves of a committed retention entry (idempotent: safe after a crash)."""
    store = resource.ledger.store
    keys = [k for k in retention["archived"] if isinstance(k, str)]  # type: ignore[attr-defined]
    present = {k for k, blob in store.read_many(keys).items() if blob is not None}
    for key in sorted(present):
        if retention["mode"] == "archive" and not store.exists(P.archive_key(key)):
            store.copy(key, P.archive_key(key))
        resource.ledger._fault("retention_move")
        store.delete([key])


def retain(resource: Resource, field: str | None, days: int, *, archive: bool = True,
           now: datetime | None = None) -> RetentionResult:
    """Archive (or delete) the applied transaction objects of cohort days older than ``days``.

    Nothing changes any value: the commit first records, for every record, the base a rebuild
    starts from (everything before the cut, folded in event order), then the objects move. Pending
    objects are never touched. A crash anywhere is finished by the next run.
    """
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValidationError(f"retain must be a positive number of days; got {days!r}.")
    plugin = resource.plugin(field)
    c = plugin.consolidator
    store = resource.ledger.store
    started = time.perf_counter()
    previous = resource.ledger.state().retention.get(plugin.field)
    if previous:
        _finish_moves(resource, previous)
    today = (now or datetime.now(dt.UTC)).astimezone(ZoneInfo(plugin.timezone)).date()
    cut = today - dt.timedelta(days=days)
    mode = "archive" if archive else "delete"
    info: dict[str, object] = {"objects": 0, "transactions": 0}

    def build(st: State) -> Commit | None:
        prev = st.retention.get(plugin.field)
        if prev and dt.date.fromisoformat(prev["cut"]) >= cut:
            return None
        done = set(prev["archived"]) if prev else set()
        pending = plugin.consolidator.pending_objects(st)
        prefixes = [
            P.partition_dir(plugin.dataset, day.split("=", 1)[1])
            for month in store.listdirs(plugin.dataset) if month.startswith("cohortMonth=")
            for day in store.listdirs(f"{plugin.dataset}/{month}")
            if day.startswith("cohortDate=") and dt.date.fromisoformat(day.split("=", 1)[1]) < cut
        ]
        keys = [k for k in st.visible(plugin.field, history_keys(store, plugin.dataset, prefixes))
                if k not in pending and k not in done]
        if not keys:
            return None
        rows = read_history(store, keys, c.dtype).sort(["timestamp", "id", "_object"]).unique("id", keep="first", maintain_order=True)
        start = c.base(st)
        folded = c._reducer()(rows, start, c.default).rename({"value": "current"})
        base = pl.concat([folded, start.join(folded.select("originalId"), on="originalId", how="anti")])
        base_rel = P.data_file(resource.name, st.version + 1, uuid.uuid4().hex, f"base-{plugin.field}")
        store.write_parquet(base_rel, base)
        info.update(objects=len(keys), transactions=rows.height)
        return Commit("retention", stats={"objects": len(keys), "transactions": rows.height},
                      retention={"field": plugin.field, "cut": cut.isoformat(), "base": base_rel,
                                 "archived": keys, "mode": mode})

    committed = resource.ledger.commit(build)
    if committed is not None:
        entry = committed[0].retention[plugin.field]
        _finish_moves(resource, entry)
    return RetentionResult(resource.name, plugin.field, committed[0].version if committed else None, cut.isoformat(),
                           int(info["objects"]), int(info["transactions"]), mode, time.perf_counter() - started)  # type: ignore[call-overload]


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


def _finish_compaction(resource: Resource, field: str, st: State) -> None:
    """Delete sources a committed compaction replaced, and old output of uncommitted ones."""
    store = resource.ledger.store
    info = st.compaction.get(field, {})
    replaced = [k for k in info.get("replaced", []) if isinstance(k, str)]
    for key in replaced:
        resource.ledger._fault("compaction_delete")
        store.delete([key])
    dataset = resource.plugin(field).dataset
    committed = set(info.get("tokens", []))
    now_ns = time.time_ns()
    for key in history_keys(store, dataset):
        name = key.rsplit("/", 1)[-1]
        if name.startswith("c-"):
            token = name.split("-")[1]
            if token not in committed and now_ns - int(token[:20]) > COMPACT_GRACE_S * 1_000_000_000:
                store.delete([key])  # output of a compaction that died before committing


def compact(resource: Resource, field: str | None = None, *, target_rows: int = TARGET_ROWS,
            target_bytes: int = TARGET_BYTES) -> CompactionResult:
    """Merge the small applied objects of each partition into objects of up to ``target_rows`` rows
    (or about ``target_bytes``), through the commit log; see the module notes on readers."""
    plugin = resource.plugin(field)
    store = resource.ledger.store
    started = time.perf_counter()
    _finish_compaction(resource, plugin.field, resource.ledger.state())
    info: dict[str, int] = {"partitions": 0, "sources": 0, "merged": 0}

    def build(st: State) -> Commit | None:
        pending = plugin.consolidator.pending_objects(st)
        keys = [k for k in st.visible(plugin.field, history_keys(store, plugin.dataset)) if k not in pending]
        by_partition: dict[str, list[str]] = {}
        for key in keys:
            by_partition.setdefault(key.rsplit("/", 1)[0], []).append(key)
        token = P.new_file_id().replace("-", "")[:20] + uuid.uuid4().hex[:12]
        merged: list[str] = []
        replaced: list[str] = []
        partitions = 0
        for prefix, group in sorted(by_partition.items()):
            if len(group) < 2:
                continue
            rows = read_history(store, group, plugin.consolidator.dtype).drop("cohortDate", "cohortMonth", "_object").sort("timestamp", "id")
            per_row = max(1, int(rows.estimated_size()) // max(1, rows.height))
            chunk = max(1, min(target_rows, target_bytes // per_row))
            if (rows.height + chunk - 1) // chunk >= len(group):
                continue  # merging would not reduce the number of objects
            for offset in range(0, rows.height, chunk):
                # Run-wide numbering: object names must be unique in the dataset (views match names).
                key = f"{prefix}/c-{token}-{len(merged):06d}.parquet"
                store.write_parquet(key, rows.slice(offset, chunk))
                merged.append(key)
            replaced.extend(group)
            partitions += 1
        if not merged:
            return None
        info.update(partitions=partitions, sources=len(replaced), merged=len(merged))
        return Commit("compact", stats=dict(info),
                      compaction={"field": plugin.field, "token": token, "merged": merged, "replaced": replaced})

    committed = resource.ledger.commit(build)
    if committed is not None:
        _finish_compaction(resource, plugin.field, committed[0])
    return CompactionResult(resource.name, plugin.field, committed[0].version if committed else None,
                            info["partitions"], info["sources"], info["merged"], time.perf_counter() - started)
