"""Storage faults are retried or surfaced, and never corrupt committed state."""

from __future__ import annotations

from typing import Any

import pytest

import ecanalytics as ec
from tests.conftest import Root


def wallets(root: Root) -> tuple[ec.Database, ec.Resource]:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    return db, db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})


def test_timeout_while_committing_is_surfaced_then_recovered(root: Root) -> None:
    db, w = wallets(root)
    w.add("a", 3)
    w.add("b", 4)
    store = db.store
    original = store.create
    calls = {"n": 0}

    def flaky_create(rel: str, data: bytes) -> bool:
        calls["n"] += 1
        raise TimeoutError("simulated read timeout")

    store.create = flaky_create  # type: ignore[method-assign]
    with pytest.raises(ec.ConsolidationFailedError) as info:
        db.consolidate()
    assert isinstance(info.value.failures["wallets.balance"], TimeoutError)
    assert isinstance(info.value.__cause__, TimeoutError)
    store.create = original  # type: ignore[method-assign]
    assert calls["n"] == 1
    with pytest.raises(ec.RecordNotFoundError):
        w.get("a")  # nothing was committed
    db.consolidate()
    assert (w.get("a")["balance"], w.get("b")["balance"]) == (3, 4)


def test_a_lost_answer_to_a_successful_commit_is_recognised(root: Root) -> None:
    """The PUT of the log entry succeeded but its answer was lost; the retry saw 412 (False)."""
    db, w = wallets(root)
    w.add("a", 3)
    store = db.store
    original = store.create

    def create_then_report_conflict(rel: str, data: bytes) -> bool:
        original(rel, data)
        return False

    store.create = create_then_report_conflict  # type: ignore[method-assign]
    result = db.consolidate()[0]
    store.create = original  # type: ignore[method-assign]
    assert result.version == 1 and result.transactions == 1
    assert w.get("a")["balance"] == 3
    db.consolidate()
    assert ec.connect(root.uri, endpoint_url=root.endpoint_url).resources["wallets"].get("a")["balance"] == 3  # type: ignore[union-attr]


def test_failed_read_of_a_pending_object_is_surfaced(root: Root) -> None:
    db, w = wallets(root)
    w.add("a", 3)
    store = db.store
    original = store.read_many

    def failing(rels: Any) -> Any:
        raise ec.StorageError("simulated 503 SlowDown after retries")

    store.read_many = failing  # type: ignore[method-assign]
    with pytest.raises(ec.ConsolidationFailedError) as info:
        db.consolidate()
    assert isinstance(info.value.failures["wallets.balance"], ec.StorageError)
    with pytest.raises(ec.StorageError):
        w.plugin().consolidate()  # one field's own call raises the original error
    store.read_many = original  # type: ignore[method-assign]
    db.consolidate()
    assert w.get("a")["balance"] == 3


def test_one_records_overflow_is_held_and_the_others_commit(root: Root) -> None:
    """A poison pill: two add(x, 1e308) overflow x's fold. x's rows are held back (pending, shown in
    the result), every other record commits, and x folds again once it can."""
    db, w = wallets(root)
    w.set("a", 1e308)
    db.consolidate()
    w.add("a", 1e308)
    w.add("b", 7)
    result = db.consolidate()[0]
    assert (w.get("a")["balance"], w.get("b")["balance"]) == (1e308, 7)
    assert (result.held, result.held_records, result.held_reasons) == (1, ("a",), {"overflow": 1})
    assert result.as_dict()["heldRecords"] == ["a"]
    w.add("b", 1)
    again = db.consolidate()[0]
    assert w.get("b")["balance"] == 8 and again.held_records == ("a",)  # still stuck, still reported
    w.set("a", 5)  # dated after the overflowing add, so the fold is finite again
    last = db.consolidate()[0]
    assert w.get("a")["balance"] == 5 and last.held == 0
    assert w.recalculate().changed == 0


def test_wrong_call_shapes_are_typed_errors(root: Root) -> None:
    db, w = wallets(root)
    for args in [(), (1, 2, 3)]:
        with pytest.raises(ec.ArgumentError):
            w.add("a", *args)
    with pytest.raises(TypeError):  # ArgumentError is a TypeError too
        w.sub("a")
    assert db.store.find("wallets_transactions_balance", ".parquet") == []


def test_analytics_on_an_empty_dataset(root: Root) -> None:
    db, w = wallets(root)
    plugin = w.plugin()
    assert plugin.get_cohort_stats("2026-11-27") == {
        "date": "2026-11-27", "transactionCount": 0, "byOperation": {"set": 0, "add": 0, "sub": 0}, "totalValue": 0.0}
    assert plugin.get_analytics("day", "2026-11-01", "2026-11-03").height == 0
    assert plugin.get_analytics("day", "2026-11-01", "2026-11-03", fill_gaps=True)["transactionCount"].to_list() == [0, 0, 0]
    assert db.sql("SELECT count(*) FROM ec_transactions").fetchall() == [(0,)]
    w.add("a", 2)  # the dataset view appears once the first object exists
    assert db.sql("SELECT count(*) FROM wallets_transactions_balance").fetchall() == [(1,)]
