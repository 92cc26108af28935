"""The manifest of applied objects: readers take their file lists from the committed state plus the
inbox and never list the history, so a one-day read costs the same on 3 days as on 12."""

from __future__ import annotations

import collections
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from tests.conftest import Root

DAY0 = datetime(2026, 3, 1, 12, tzinfo=UTC)


def history(root: Root, days: int) -> tuple[ec.Database, Any, dict[str, float]]:
    """``days`` cohort days of 3 objects each, consolidated, then one pending object on day 0."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "balance": "number|default:0"})
    totals: dict[str, float] = collections.defaultdict(float)
    for d in range(days):
        for part in range(3):
            rows = [{"originalId": f"r{(d + i) % 5}", "value": float(d * 10 + part + i), "timestamp": DAY0 + timedelta(days=d, minutes=i)}
                    for i in range(4)]
            w.write_transactions(pl.DataFrame(rows))
            for r in rows:
                totals[r["originalId"]] += r["value"]
    db.consolidate()
    w.write_transactions(pl.DataFrame([{"originalId": "r0", "value": 1000.0, "timestamp": DAY0}]))
    return db, w, dict(totals)


def count_listings(db: ec.Database) -> list[str]:
    """Record every listing the store makes (any prefix)."""
    seen: list[str] = []
    store = db.store
    for name in ("find", "listdir", "listdirs", "listdir_times"):
        real = getattr(store, name)

        def wrapper(rel: str, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen.append(rel)
            return _real(rel, *args, **kwargs)

        setattr(store, name, wrapper)
    return seen


def test_readers_never_list_the_history(root: Root) -> None:
    db, w, totals = history(root, 4)
    listings = count_listings(db)
    day = DAY0.date().isoformat()
    stats = w.plugin("balance").get_cohort_stats(day)
    expected_day = sum(float(p + i) for p in range(3) for i in range(4)) + 1000.0  # day 0 plus the pending row
    assert stats["transactionCount"] == 13 and stats["totalValue"] == expected_day
    one_day = db.resources["w_transactions_balance"].query({"cohortDate": day})  # type: ignore[call-arg]
    assert one_day.height == 13 and one_day.filter(~pl.col("applied")).height == 1
    assert w.recalculate(field="balance").changed == 0
    table = w.to_polars(events_until=DAY0 + timedelta(days=30))
    assert dict(zip(table["id"], table["balance"], strict=True)) == {**totals, "r0": totals["r0"] + 1000.0}
    inbox = "w_transactions_balance/_inbox"
    assert listings and all(rel == inbox for rel in listings), listings


def test_compaction_and_retention_keep_the_manifest_exact(root: Root) -> None:
    db, w, totals = history(root, 6)
    db.consolidate()
    totals["r0"] += 1000.0
    w.compact("balance")
    state = w.ledger.state()
    keys = state.applied_objects("balance")
    assert all("/c-" in k for k in keys) and len(keys) == 6  # one merged object per day
    assert sorted(db.store.find("w_transactions_balance", ".parquet")) == sorted(keys)  # sources deleted
    cut = DAY0.date() + timedelta(days=3)  # days 0, 1 and 2 go to the archive
    w.gc((datetime.now(UTC).date() - cut).days, field="balance")
    state = w.ledger.state()
    archived = state.applied_objects("balance", archived=True)
    live = state.applied_objects("balance", archived=False)
    assert len(archived) == 6 and len(live) == 3 and all(k.startswith("_archive/") for k in set(archived) - set(live))
    for conn in (db, root.connect()):
        got = conn.resources["w"].to_polars()  # type: ignore[union-attr]
        assert dict(zip(got["id"], got["balance"], strict=True)) == totals
        assert conn.resources["w"].recalculate(field="balance").changed == 0  # type: ignore[union-attr]
        first = conn.resources["w"].plugin("balance").get_cohort_stats(DAY0.date().isoformat())  # type: ignore[union-attr]
        assert first["transactionCount"] == 13


def requests_of_one_day_stats(s3_root: Root, days: int) -> dict[str, int]:
    db, w, _ = history(s3_root, days)
    plugin = w.plugin("balance")
    plugin.get_cohort_stats(DAY0.date().isoformat())  # warm: the engine and its views exist
    counts: collections.Counter[str] = collections.Counter()
    for fs in {id(f): f for f in (db.store.fs, db._engine().filesystem) if f is not None}.values():
        original = fs._call_s3

        async def counting(method: str, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            counts[method] += 1
            return await _original(method, *args, **kwargs)

        fs._call_s3 = counting
    assert plugin.get_cohort_stats((DAY0 + timedelta(days=1)).date().isoformat())["transactionCount"] == 12
    return dict(counts)


@pytest.mark.s3
def test_a_one_day_query_costs_the_same_on_3_and_on_12_days(s3_root: Root) -> None:
    few = requests_of_one_day_stats(s3_root, 3)
    other = Root("s3", s3_root.uri + "-many", endpoint_url=s3_root.endpoint_url)
    try:
        many = requests_of_one_day_stats(other, 12)
    finally:
        for db in other.opened:
            db.close()
    assert few == many, (few, many)
    # The inbox, and the one pending object's day folder (which says it exists, and its size):
    # no HEAD per pending object.
    assert few.get("list_objects_v2", 0) <= 2 and few.get("head_object", 0) == 0
