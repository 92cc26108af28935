"""Time travel (commit time and event time) and recalculation, against an independent model."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from ecanalytics.ledger import Commit
from tests.conftest import Root


def event_fold(base: float, txs: list[tuple[datetime, str, str, float]]) -> float:
    """Independent event-order fold: (timestamp, key) order, set replaces, add/sub."""
    value = base
    for _ts, _key, op, v in sorted(txs):
        value = v if op == "set" else value + v if op == "add" else value - v
    return value


def setup(root: Root, **opts: Any) -> tuple[ec.Database, ec.Resource]:
    db = root.connect(checkpoint_interval=3)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False, **opts))
    return db, db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "tag": "string"})


def test_as_of_returns_what_was_committed_then(root: Root) -> None:
    db, w = setup(root)
    moments, expected = [], []
    w.insert({"id": "a", "balance": 10, "tag": "x"})
    for i in range(8):  # crosses several checkpoints (interval 3)
        w.add("a", i + 1)
        db.consolidate()
        time.sleep(0.01)
        moments.append(datetime.now(UTC))
        expected.append(10 + sum(range(1, i + 2)))
        time.sleep(0.01)
    w.update("a", {"tag": "y"})
    for when, value in zip(moments, expected, strict=True):
        assert w.get("a", as_of=when)["balance"] == value
        assert w.get("a", as_of=when)["tag"] == "x"
    assert w.get("a")["tag"] == "y"
    with pytest.raises(ec.RecordNotFoundError):
        w.get("a", as_of=datetime(2000, 1, 1, tzinfo=UTC))
    assert w.to_polars(as_of=datetime(2000, 1, 1, tzinfo=UTC)).height == 0
    with pytest.raises(ec.InvalidValueError):
        w.get("a", as_of=datetime(2026, 1, 1))  # naive
    with pytest.raises(ec.ArgumentError):
        w.to_polars(as_of=moments[0], events_until=moments[0])


def test_events_until_folds_transactions_dated_by_then(root: Root) -> None:
    db, w = setup(root)
    w.insert({"id": "a", "balance": 100, "tag": "x"})
    t0 = datetime(2026, 6, 1, tzinfo=UTC)
    txs: dict[str, list[tuple[datetime, str, str, float]]] = {"a": [], "b": []}
    rng = random.Random(5)
    for i in range(40):
        rid = rng.choice("ab")
        op = rng.choice(["add", "add", "sub", "set"])
        ts = t0 + timedelta(hours=rng.randrange(0, 96))
        key = f"k{i:03d}"
        getattr(w, op)(rid, float(i), id=key, timestamp=ts)
        txs[rid].append((ts, key, op, float(i)))
        if i == 25:
            db.consolidate()  # some applied, the rest pending: both count by event time
    for hours in (0, 10, 47, 200):
        until = t0 + timedelta(hours=hours)
        got = w.to_polars(events_until=until)
        expected = {}
        for rid, base in (("a", 100.0), ("b", 0.0)):  # both exist today, so both appear
            expected[rid] = event_fold(base, [t for t in txs[rid] if t[0] <= until])
        assert dict(zip(got["id"].to_list(), got["balance"].to_list(), strict=True)) == expected, hours
    assert w.get("a", events_until=t0 + timedelta(hours=200))["tag"] == "x"


def test_recalculate_repairs_a_corrupted_value(root: Root) -> None:
    db, w = setup(root)
    for rid in "abc":
        w.insert({"id": rid, "balance": 5, "tag": rid})
        w.add(rid, 7)
    db.consolidate()
    w.ledger.commit(lambda st: Commit("update", upserts=st.records.filter(pl.col("id") == "b").with_columns(balance=pl.lit(-1.0))))
    assert w.get("b")["balance"] == -1
    result = w.recalculate()
    assert (result.changed, result.checked) == (1, 3)
    assert result.values.rows() == [("b", -1.0, 12.0)]
    assert [w.get(r)["balance"] for r in "abc"] == [12, 12, 12]
    assert w.recalculate().version is None  # nothing left to repair


def test_recalculate_applies_event_order_to_late_arrivals(root: Root) -> None:
    db, w = setup(root)
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    w.set("a", 50, timestamp=t0 + timedelta(hours=2))
    w.add("z", 1, timestamp=t0)
    db.consolidate()
    w.add("a", 5, timestamp=t0 + timedelta(hours=1))  # arrives late, dated before the set
    w.add("z", 1, timestamp=t0)
    result = db.consolidate()[0]
    assert w.get("a")["balance"] == 50  # event order: the later set wins, without a recalculation
    assert result.late == 1 and result.as_dict()["late"] == 1
    assert w.recalculate(id="a").changed == 0
    assert w.get("z")["balance"] == 2


@pytest.mark.parametrize("seed", [3])
def test_recalculate_matches_the_event_order_model(root: Root, seed: int) -> None:
    rng = random.Random(seed)
    db, w = setup(root, batch_transactions=True, batch_size=4, flush_interval=3600)
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    bases = {f"r{i}": float(rng.randrange(0, 50)) for i in range(8)}
    for rid, base in bases.items():
        w.insert({"id": rid, "balance": base, "tag": None})
    txs: dict[str, list[tuple[datetime, str, str, float]]] = {rid: [] for rid in bases}
    for i in range(120):
        rid = rng.choice(sorted(bases))
        op = rng.choices(["add", "sub", "set"], weights=[5, 3, 1])[0]
        ts, key, v = t0 + timedelta(minutes=rng.randrange(0, 3000)), f"k{i:04d}", float(rng.randrange(1, 90))
        getattr(w, op)(rid, v, id=key, timestamp=ts)
        txs[rid].append((ts, key, op, v))
        if rng.random() < 0.1:
            db.consolidate()
    db.consolidate()

    expected = {rid: event_fold(bases[rid], txs[rid]) for rid in bases}

    def table() -> dict[str, float]:
        return dict(zip(w.to_polars()["id"].to_list(), w.to_polars()["balance"].to_list(), strict=True))

    # Consolidation alone gives the event-order fold from the inserted base, which is what the
    # reconciliation report and recalculation recompute too: nothing differs.
    assert table() == expected
    assert w.recalculate().changed == 0
    assert ec.reports.run(db, "reconciliation").height == 0
    w.ledger.commit(lambda st: Commit("update", upserts=st.records.filter(pl.col("id") == "r1").with_columns(balance=pl.lit(-7.0))))
    report = ec.reports.run(db, "reconciliation")
    assert report.select("id", "consolidated", "recomputed").rows() == [("r1", -7.0, expected["r1"])]

    def crash(step: str) -> None:
        if step == "after_delta":
            raise RuntimeError("simulated crash")

    w.ledger.fault = crash
    with pytest.raises(RuntimeError):
        w.recalculate()
    w.ledger.fault = None
    assert w.recalculate().changed == 1
    assert table() == expected
    assert ec.reports.run(db, "reconciliation").height == 0
