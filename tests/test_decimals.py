"""Exact decimals end to end: API, Parquet, Polars reducers, DuckDB, maintenance."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from tests.conftest import Root

SPEC = {"id": "string|required", "balance": "decimal(18,2)|default:0", "fee": "decimal(6,3)"}


def setup(root: Root, **opts: Any) -> tuple[ec.Database, ec.Resource]:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="accounts", field="balance", auto_consolidate=False, **opts))
    return db, db.create_resource("accounts", SPEC)


def test_point_one_ten_times_is_exactly_one(root: Root) -> None:
    db, a = setup(root)
    for _ in range(10):
        a.add("x", 0.1)
    assert a.value("x") == Decimal("1.00") and isinstance(a.value("x"), Decimal)
    assert a.consolidate("x") == Decimal("1.00")
    assert a.get("x")["balance"] == Decimal("1.00")
    assert a.to_polars().schema["balance"] == pl.Decimal(18, 2)
    key = db.store.find("accounts_transactions_balance", ".parquet")[0]
    assert pl.read_parquet(io.BytesIO(db.store.read(key))).schema["value"] == pl.Decimal(18, 2)
    assert db.sql("SELECT typeof(value) FROM accounts_transactions_balance LIMIT 1").fetchall() == [("DECIMAL(18,2)",)]
    assert db.sql("SELECT sum(value) FROM accounts_transactions_balance").fetchall() == [(Decimal("1.00"),)]
    day = db.sql("SELECT min(cohortDate) FROM accounts_transactions_balance").fetchall()[0][0]
    assert a.plugin().get_cohort_stats(day)["totalValue"] == Decimal("1.00")
    assert a.plugin().get_analytics("day", day, day)["totalValue"].to_list() == [Decimal("1.00")]


def test_more_scale_than_declared_is_rejected(root: Root) -> None:
    db, a = setup(root)
    for bad in (0.001, Decimal("1.005"), 0.1 + 0.2, float("nan"), "1.00", True, Decimal("1e20")):
        with pytest.raises(ec.InvalidValueError):
            a.add("x", bad)
    assert db.store.find("accounts_transactions_balance", ".parquet") == []
    with pytest.raises(ec.SchemaError, match="decimal places"):
        a.insert({"id": "y", "fee": Decimal("0.0001")})
    a.insert({"id": "y", "fee": Decimal("0.125"), "balance": 3})
    assert a.get("y")["balance"] == Decimal("3.00") and a.get("y")["fee"] == Decimal("0.125")
    with pytest.raises(ec.SchemaError):
        ec.connect("memory://bad-decimal").create_resource("r", {"id": "string|required", "v": "decimal(50,2)"})


def test_sync_mode_returns_exact_values(root: Root) -> None:
    _db, a = setup(root, mode="sync")
    assert a.set("x", Decimal("10.10")) == Decimal("10.10")
    assert a.sub("x", 0.2) == Decimal("9.90")
    assert a.add("x", 3) == Decimal("12.90")


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_sum_past_the_precision_holds_its_record_and_the_others_commit(root: Root, mode: str) -> None:
    """decimal(5,2) holds up to 999.99: adds that carry a record past it hold that record back
    (an overflow, as for a non-finite float: typed errors, nothing committed for it), every other
    record commits, and a later ``set`` releases it."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="small", field="d", auto_consolidate=False, mode=mode))
    r = db.create_resource("small", {"id": "string|required", "d": "decimal(5,2)|default:0"})
    r.add("x", Decimal("999.00"))
    r.add("y", Decimal("1.00"))
    db.consolidate()
    if mode == "sync":
        with pytest.raises(ec.TransactionHeldError, match="overflow"):
            r.add("x", Decimal("1.00"))
    else:
        r.add("x", Decimal("1.00"))
    r.add("y", Decimal("2.00"))
    result = db.consolidate()[0]
    assert r.get("x")["d"] == Decimal("999.00") and r.get("y")["d"] == Decimal("3.00")
    assert result.held_records == ("x",) and result.held_reasons == {"overflow": 1}
    with pytest.raises(ec.ConsolidationError, match="overflow"):
        r.value("x")
    r.set("x", Decimal("5.00"))
    db.consolidate()
    assert r.value("x") == Decimal("5.00") and r.get("x")["d"] == Decimal("5.00") and r.plugin().inspect()["held"] == 0
    assert r.recalculate().changed == 0


@pytest.mark.parametrize("reducer", [None, "sum", "max", "min", "last"])
def test_random_decimal_history_matches_a_decimal_model(root: Root, reducer: str | None) -> None:
    rng = random.Random(17)
    db, a = setup(root, reducer=reducer, batch_transactions=True, batch_size=5, flush_interval=3600)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    txs: dict[str, list[tuple[datetime, str, str, Decimal]]] = {}
    for i in range(80):
        rid = f"r{rng.randrange(4)}"
        op = rng.choices(["add", "sub", "set"], weights=[5, 3, 1])[0]
        amount = Decimal(rng.randrange(-5000, 50000)) / 100
        ts = t0 + timedelta(minutes=rng.randrange(0, 500))
        getattr(a, op)(rid, amount, id=f"k{i:03d}", timestamp=ts)
        txs.setdefault(rid, []).append((ts, f"k{i:03d}", op, amount))
    db.consolidate()

    def fold(items: list[tuple[datetime, str, str, Decimal]]) -> Decimal:
        signed = [(-v if op == "sub" else v) for _t, _k, op, v in sorted(items)]
        if reducer is None:
            acc = Decimal("0.00")
            for _t, _k, op, v in sorted(items):
                acc = v if op == "set" else acc + v if op == "add" else acc - v
            return acc
        everything = [Decimal("0.00"), *signed]
        return {"sum": sum(everything, Decimal(0)), "max": max(everything), "min": min(everything),
                "last": signed[-1]}[reducer]

    got = a.to_polars()
    assert dict(zip(got["id"].to_list(), got["balance"].to_list(), strict=True)) == {r: fold(v) for r, v in txs.items()}
    if reducer is None:
        assert a.recalculate().changed == 0
        assert ec.reports.run(db, "reconciliation").height == 0


def test_python_reducer_sees_decimals(root: Root) -> None:
    seen: list[Any] = []

    def total(txs: list[dict[str, Any]]) -> Decimal:
        seen.extend(type(t["value"]) for t in txs)
        return sum((t["value"] for t in txs), Decimal(0))

    _db, a = setup(root, reducer=total)
    a.add("x", Decimal("0.10"))
    a.add("x", 0.2)
    assert a.consolidate("x") == Decimal("0.30")
    assert set(seen) == {Decimal}


def test_maintenance_keeps_decimals_exact(root: Root) -> None:
    db, a = setup(root, batch_transactions=True, batch_size=2, flush_interval=3600)
    now = datetime(2026, 11, 27, tzinfo=UTC)
    for day in range(40, 0, -1):
        a.add("x", 0.01, timestamp=now - timedelta(days=day))
        a.add("x", 0.02, timestamp=now - timedelta(days=day, hours=1))
    db.consolidate()
    assert a.get("x")["balance"] == Decimal("1.20")
    from ecanalytics.maintenance import retain

    assert retain(a.plugin().consolidator, 10, now=now).objects > 0
    assert a.compact(target_rows=1000).merged > 0
    assert a.recalculate().changed == 0
    assert a.get("x")["balance"] == Decimal("1.20")
    assert a.get("x", events_until=now - timedelta(days=5))["balance"] == Decimal("0.03") * 36  # days 40..5
    # The SQL views read the archive too (archive-mode retention), exactly: every cent of the 40 days.
    total = sum((Decimal(v) for _day in range(40) for v in ("0.01", "0.02")), Decimal(0))
    assert db.sql("SELECT sum(value) FROM accounts_transactions_balance").fetchall() == [(total,)]


def test_time_travel_to_a_value_that_does_not_fit_is_an_error(root: Root) -> None:
    """decimal(8,2): the event-time value at an instant where the sum is past the precision does not
    exist in the field's type: ``events_until`` raises instead of returning another number; at an
    instant where it fits, the exact value."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "balance": "decimal(8,2)|default:0"})
    now = datetime.now(UTC)
    w.insert({"id": "a", "balance": Decimal("0")})
    w.add("a", Decimal("600000.00"), timestamp=now - timedelta(days=10))
    w.add("a", Decimal("600000.00"), timestamp=now - timedelta(days=9))
    w.set("a", Decimal("5.00"), timestamp=now - timedelta(days=8))
    db.consolidate()
    assert w.get("a")["balance"] == Decimal("5.00")
    with pytest.raises(ec.ConsolidationError, match="does not fit the field") as info:
        w.to_polars(events_until=now - timedelta(days=8, hours=12))
    assert info.value.record_id == "a"
    at = w.to_polars(events_until=now - timedelta(days=9, hours=12))
    assert at["balance"].to_list() == [Decimal("600000.00")]
    assert w.to_polars(events_until=now)["balance"].to_list() == [Decimal("5.00")]


@pytest.mark.parametrize("archive", [False, True])
def test_retention_refuses_a_cut_where_a_value_does_not_fit(root: Root, archive: bool) -> None:
    """decimal(8,2): a record's value at the cut day (1,200,010.50) does not fit the field although
    its value today does: retention raises, names the record, and commits and moves nothing; a cut
    where every value fits works."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "balance": "decimal(8,2)|default:0"})
    now = datetime.now(UTC)
    w.insert({"id": "a", "balance": Decimal("10.50")})
    for days, amount in ((40, "600000.00"), (35, "600000.00"), (5, "-500000.00")):
        w.add("a", Decimal(amount), timestamp=now - timedelta(days=days))
    db.consolidate()
    assert w.get("a")["balance"] == Decimal("700010.50")
    objects = sorted(db.store.find("w_transactions_balance", ".parquet"))
    version = w.ledger.state().version
    with pytest.raises(ec.ConsolidationError, match="does not fit the field") as info:
        w.gc(30, archive=archive)
    assert info.value.record_id == "a"
    assert (w.ledger.state().version, sorted(db.store.find("w_transactions_balance", ".parquet"))) == (version, objects)
    assert w.gc(38, archive=archive).objects == 1  # before the second add: 600010.50 fits
    assert w.get("a")["balance"] == Decimal("700010.50") and w.recalculate().changed == 0
    assert ec.reports.run(db, "reconciliation").height == 0
