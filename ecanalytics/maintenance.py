"""Maintenance jobs that read the whole history: recalculation and event-time travel.

Both fold a field's transactions in ``(timestamp, id)`` order, a repeated id counting once (the
first by ``(timestamp, id, object)``), with the field's reducer, starting from each record's
*base*: the managed value it was last inserted with, or the attribute default. The consolidated
value can legitimately differ from this event-order fold when a transaction arrives after a
later ``set`` was already consolidated; recalculation then rewrites it to the event-order value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import polars as pl

from ecanalytics.errors import ValidationError
from ecanalytics.ledger import Commit, State
from ecanalytics.ledger.transactions import Inbox, history_keys, read_history

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


def base_values(resource: Resource, field: str) -> pl.DataFrame:
    """``originalId, current``: the value of ``field`` each record was last inserted with."""
    frames = []
    for entry in resource.ledger.entries(("insert",)):
        delta = resource.ledger.read_delta(entry)
        if delta is not None:
            frames.append(delta.select(pl.col("id").alias("originalId"), pl.col(field).alias("current")))
    if not frames:
        return pl.DataFrame(schema={"originalId": pl.String, "current": pl.Float64})
    return pl.concat(frames).unique("originalId", keep="last", maintain_order=True).drop_nulls("current")


def field_history(plugin: EventualConsistencyPlugin, st: State, *, applied_only: bool) -> pl.DataFrame:
    """Every transaction of the field, deduplicated by id; only the applied ones if asked."""
    store = plugin.consolidator.store
    rows = read_history(store, history_keys(store, plugin.dataset))
    if applied_only:
        pending = set(Inbox.scan(store, plugin.dataset).markers) - st.consumed.get(plugin.field, frozenset())
        rows = rows.filter(~pl.col("_object").is_in(list(pending)))
    return rows.sort(["timestamp", "id", "_object"]).unique("id", keep="first", maintain_order=True)


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
        new = consolidator._reducer()(rows, base_values(resource, plugin.field), consolidator.default)
        current = records.select("id", pl.col(plugin.field).fill_null(consolidator.default).alias("before"))
        diff = (
            current.join(new.rename({"originalId": "id", "value": "after"}), on="id", how="left")
            .with_columns(pl.col("after").fill_null(consolidator.default))
            .filter(pl.col("before") != pl.col("after"))
        )
        outcome.update(checked=records.height, transactions=rows.height, diff=diff)
        if diff.height == 0:
            return None
        upserts = (
            records.join(diff.select("id", "after"), on="id", how="inner")
            .with_columns(pl.col("after").alias(plugin.field)).drop("after")
        )
        return Commit("recalculate", upserts=upserts, field=None, stats={"changed": diff.height})

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
        base = base_values(resource, name)
        new = c._reducer()(histories[name], base, c.default).rename({"originalId": "id", "value": "_new"})
        out = (
            out.join(new, on="id", how="left")
            .join(base.rename({"originalId": "id", "current": "_base"}), on="id", how="left")
            .with_columns(pl.coalesce("_new", "_base", pl.lit(c.default)).alias(name))
            .drop("_new", "_base")
        )
    return out.sort("id")
