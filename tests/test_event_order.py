"""Values users can trust: late data in event order, retention that keeps values through every
maintenance path, and records that do not exist yet. Checked against plain-Python folds."""

from __future__ import annotations

import itertools
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import ecanalytics as ec
from ecanalytics.consolidation import python_reference
from tests.conftest import Root

NOW = datetime.now(UTC).replace(microsecond=0)


def reference(reducer: str, txs: list[tuple[datetime, str, str, float]], start: float = 0.0) -> float:
    """The reducer's plain-Python definition over every transaction in event order."""
    rows = [{"operation": "set", "value": start, "synthetic": True}]
    rows += [{"operation": op, "value": v, "id": key} for _ts, key, op, v in sorted(txs)]
    return float(python_reference(reducer)(rows))


def make(root: Root, reducer: Any = None, **schema: str) -> tuple[ec.Database, ec.Resource]:
    db = root.connect(checkpoint_interval=3)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               reducer=reducer))
    return db, db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", **schema})


def test_the_issue_example_late_add_before_a_consolidated_set(root: Root) -> None:
    db, w = make(root)
    w.set("x", 100, timestamp=datetime(2026, 11, 10, tzinfo=UTC))
    db.consolidate()
    w.add("x", 5, timestamp=datetime(2026, 11, 1, tzinfo=UTC))
    result = db.consolidate()[0]
    assert w.get("x")["balance"] == 100 and result.late == 1
    w.set("x", 7, timestamp=datetime(2026, 11, 5, tzinfo=UTC))  # a late set: older than the applied one
    db.consolidate()
    assert w.get("x")["balance"] == 100
    w.add("x", 2, timestamp=datetime(2026, 11, 12, tzinfo=UTC))
    w.set("x", 50, timestamp=datetime(2026, 11, 11, tzinfo=UTC))  # a late set after the last applied one
    db.consolidate()
    assert w.get("x")["balance"] == 52  # 50, then the applied add of Nov 12
    assert w.to_polars(events_until=NOW).filter(ec_id("x"))["balance"].to_list() == [52]
    assert w.recalculate().changed == 0


def ec_id(rid: str) -> Any:
    import polars as pl

    return pl.col("id") == rid


def custom_default(txs: list[dict[str, Any]]) -> float:
    """The default fold, as a Python callable: the slow path must give the same values."""
    return float(python_reference("default")(txs))


@pytest.mark.parametrize("reducer", ["default", "sum", "max", "min", "last", "python"])
def test_random_backfills_give_event_order_values_for_every_reducer(root: Root, reducer: str) -> None:
    rng = random.Random(sum(map(ord, reducer)))
    db, w = make(root, custom_default if reducer == "python" else reducer)
    txs: dict[str, list[tuple[datetime, str, str, float]]] = {f"r{i}": [] for i in range(4)}
    t0 = NOW - timedelta(days=40)
    for step in range(70):
        rid = rng.choice(sorted(txs))
        op = rng.choices(["add", "sub", "set"], weights=[5, 2, 2])[0]
        # Three waves: recent traffic, then backfills weeks earlier, then recent again.
        wave = (step // 20) % 3
        ts = t0 + timedelta(days=rng.randrange(30, 40) if wave != 1 else rng.randrange(0, 30), minutes=step)
        key, v = f"k{step:03d}", float(rng.randrange(1, 60))
        getattr(w, op)(rid, v, id=key, timestamp=ts)
        txs[rid].append((ts, key, op, v))
        if rng.random() < 0.25:
            db.consolidate()
    db.consolidate()
    name = "default" if reducer == "python" else reducer
    expected = {rid: reference(name, t) for rid, t in txs.items() if t}
    got = w.to_polars()
    assert dict(zip(got["id"].to_list(), got["balance"].to_list(), strict=True)) == expected
    assert w.recalculate().changed == 0
    assert ec.reports.run(db, "reconciliation").height == 0


def test_retention_then_recalculation_keeps_values(root: Root) -> None:
    """The issue's data-loss case: a record whose whole history was archived keeps its value."""
    db, w = make(root)
    old = NOW - timedelta(days=90)
    for i in range(8):
        w.add(f"w{i % 2}", i + 1, timestamp=old + timedelta(hours=i))
    assert w.consolidate("w0") == 16
    w.add("w1", 1000, timestamp=NOW - timedelta(days=1))
    assert w.gc(30).objects > 0
    assert w.consolidate("w0") == 16
    w.recalculate(field="balance")
    assert w.get("w0")["balance"] == 16 and w.get("w1")["balance"] == 1020
    assert w.to_polars(events_until=NOW)["balance"].to_list() == [16, 1020]
    assert ec.reports.run(db, "reconciliation").height == 0


OPS = ("gc", "compact", "recalculate", "consolidate")


ORDERS = list(itertools.permutations(OPS))


@pytest.mark.parametrize("order", ORDERS, ids="-".join)
def test_every_maintenance_order_matches_the_model(order: tuple[str, ...]) -> None:
    """All 24 orders of gc, compact, recalculate and consolidate (then gc again), on memory://."""
    check_maintenance_order(Root("memory", f"memory://orders-{uuid.uuid4().hex}"), order)


@pytest.mark.parametrize("order", [o for o in ORDERS if o[0] == "gc"], ids="-".join)
def test_maintenance_orders_on_every_backend(root: Root, order: tuple[str, ...]) -> None:
    """The six orders that start with gc on local disk, memory:// and S3 (the 24 take minutes on S3;
    the storage calls are the same whatever the order)."""
    check_maintenance_order(root, order)


def check_maintenance_order(root: Root, order: tuple[str, ...]) -> None:
    rng = random.Random(sum(OPS.index(o) * 10**i for i, o in enumerate(order)))
    db, w = make(root)
    txs: dict[str, list[tuple[datetime, str, str, float]]] = {f"r{i}": [] for i in range(3)}

    def write(days_ago: range, n: int) -> None:
        for _ in range(n):
            rid, op = rng.choice(sorted(txs)), rng.choices(["add", "sub", "set"], weights=[5, 2, 1])[0]
            ts = NOW - timedelta(days=rng.choice(days_ago), minutes=len(txs[rid]))
            key, v = f"k{sum(map(len, txs.values())):03d}", float(rng.randrange(1, 50))
            getattr(w, op)(rid, v, id=key, timestamp=ts)
            txs[rid].append((ts, key, op, v))

    write(range(40, 80), 12)
    db.consolidate()
    for op in (*order, "gc"):
        write(range(0, 70), 4)  # new traffic and backfills on both sides of the retention cut
        if op == "gc":
            w.gc(30)
        elif op == "compact":
            w.compact()
        elif op == "recalculate":
            w.recalculate()
        else:
            db.consolidate()
        db.consolidate()
        got = w.to_polars()
        expected = {rid: reference("default", t) for rid, t in txs.items() if t}
        assert dict(zip(got["id"].to_list(), got["balance"].to_list(), strict=True)) == expected, op
        assert w.recalculate().changed == 0, op
        assert w.to_polars(events_until=NOW + timedelta(days=1)).equals(got), op


def test_missing_records_count_as_the_default(root: Root) -> None:
    _db, w = make(root)
    assert w.consolidate("nobody") == 0 and w.value("nobody") == 0
    with pytest.raises(ec.RecordNotFoundError):
        w.get("nobody")
    _db2, w2 = make_with_default(root)
    assert w2.value("nobody") == 5 and w2.consolidate("nobody") == 5


def make_with_default(root: Root) -> tuple[ec.Database, ec.Resource]:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="points", field="score", auto_consolidate=False))
    return db, db.create_resource("points", {"id": "string|required", "score": "number|default:5"})


def test_transactions_wait_for_a_record_with_required_attributes(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "userId": "string|required",
                                       "balance": "number|default:0", "currency": "string|default:USD"})
    w.add("ghost", 7)
    w.add("real", 1)
    w.insert({"id": "real", "userId": "u1"})
    result = db.consolidate()[0]
    assert result.held_reasons == {"awaiting-record": 1} and result.held_records == ("ghost",)
    with pytest.raises(ec.RecordNotFoundError):
        w.get("ghost")  # not created with userId None
    assert w.get("real")["balance"] == 1
    health = w.plugin().inspect()
    assert health["heldReasons"] == {"awaiting-record": 1} and health["heldRecords"] == ["ghost"]
    w.add("ghost", 3)
    db.consolidate()
    w.insert({"id": "ghost", "userId": "u2", "balance": 100})
    assert w.value("ghost") == 110  # read-your-writes folds the waiting rows in
    assert db.consolidate()[0].held == 0
    assert w.get("ghost") == {"id": "ghost", "userId": "u2", "balance": 110.0, "currency": "USD"}
    # A fresh connection (checkpoint + log replay) agrees, and nothing is left waiting.
    again = root.connect().resources["wallets"]
    assert isinstance(again, ec.Resource) and again.plugin().inspect()["held"] == 0


def test_delete_mode_retention_keeps_every_reader_consistent(root: Root) -> None:
    """After gc(archive=False), a transaction dated before the cut arrives late: the retention base
    stands at the cut like a set, so it has no effect in consolidation, time travel, recalculation
    and the reconciliation report alike."""
    rng = random.Random(4)
    db, w = make(root)
    for step in range(40):
        op = rng.choice(["add", "add", "sub", "set"])
        getattr(w, op)(f"r{rng.randrange(3)}", float(rng.randrange(1, 50)), id=f"k{step}",
                       timestamp=NOW - timedelta(days=rng.randrange(0, 80), minutes=step))
        if step == 20:
            db.consolidate()
            w.gc(30, archive=False)
    result = db.consolidate()[0]
    assert result.late > 0
    state = w.to_polars()
    assert w.to_polars(events_until=NOW + timedelta(days=1)).equals(state)
    assert w.recalculate().changed == 0
    assert ec.reports.run(db, "reconciliation").height == 0


def test_held_rows_survive_retention_and_reads_say_why(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="bal", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "owner": "string|required", "bal": "number|default:0"})
    old = NOW - timedelta(days=60)
    w.insert({"id": "x", "owner": "o"})
    w.add("x", 1e308, timestamp=old)
    w.add("x", 1e308, timestamp=old + timedelta(hours=1))
    w.add("ghost", 7, timestamp=old)
    assert db.consolidate()[0].held == 3
    assert w.value("ghost") == 7  # a read previews the waiting rows on the default
    with pytest.raises(ec.ConsolidationError, match="overflow"):
        w.value("x")
    for archive in (True, False):
        w.gc(30, archive=archive)  # objects with held rows are not applied: they stay
    w.insert({"id": "ghost", "owner": "g", "bal": 100})
    db.consolidate()
    assert (w.get("ghost")["bal"], w.get("x")["bal"]) == (107, 0)
    assert w.recalculate().changed == 0 and ec.reports.run(db, "reconciliation").height == 0


def test_sync_write_that_is_held_raises(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="bal", mode="sync"))
    w = db.create_resource("w", {"id": "string|required", "owner": "string|required", "bal": "number|default:0"})
    with pytest.raises(ec.TransactionHeldError, match="insert it"):
        w.add("ghost", 7)
    w.insert({"id": "x", "owner": "o"})
    assert w.add("x", 1e308) == 1e308
    with pytest.raises(ec.TransactionHeldError, match="cannot be folded"):
        w.add("x", 1e308)
    w.insert({"id": "ghost", "owner": "g"})
    assert w.add("ghost", 1) == 8  # the held 7 is applied with it


def test_archive_then_delete_retention_chains_the_base(root: Root) -> None:
    """A delete-mode run after an archive-mode one starts from the previous retention base, so the
    days archived first still count (recalculate used to drop them)."""
    db, w = make(root)
    for days, amount in ((80, 1), (60, 10), (40, 100), (5, 1000)):
        w.add("a", amount, timestamp=NOW - timedelta(days=days))
    db.consolidate()
    w.gc(70)
    w.gc(30, archive=False)
    assert w.get("a")["balance"] == 1111
    assert w.recalculate().changed == 0 and w.get("a")["balance"] == 1111
    assert ec.reports.run(db, "reconciliation").height == 0
