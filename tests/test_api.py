"""The reference plugin's scenarios, through the public API, on local disk, memory:// and S3."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from tests.conftest import WALLETS, Root


def wallets_db(root: Root, **plugin: Any) -> tuple[ec.Database, ec.Resource, ec.EventualConsistencyPlugin]:
    db = root.connect()
    options = {"mode": "sync", "auto_consolidate": False, **plugin}
    p = db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", **options))
    return db, db.create_resource("wallets", WALLETS), p


def test_basic_wallet_sync(root: Root) -> None:
    _db, wallets, _ = wallets_db(root)
    wallets.insert({"id": "w1", "userId": "u1", "balance": 0, "currency": "USD"})
    assert wallets.set("w1", 1000) == 1000
    assert wallets.add("w1", 250) == 1250
    assert wallets.sub("w1", 100) == 1150
    assert wallets.consolidate("w1") == 1150
    assert wallets.get("w1") == {"id": "w1", "userId": "u1", "balance": 1150.0, "currency": "USD"}


def test_async_mode_applies_only_on_consolidate(root: Root) -> None:
    _db, wallets, plugin = wallets_db(root, mode="async")
    wallets.insert({"id": "w1", "userId": "u1", "balance": 10, "currency": "USD"})
    assert wallets.add("w1", 5) is None
    assert wallets.sub("w1", -2) is None  # a negative sub adds
    assert wallets.get("w1")["balance"] == 10  # nothing consolidated yet
    assert wallets.value("w1") == 17  # read-your-writes folds pending on the fly
    assert wallets.value("w1", consistent=False) == 10
    assert plugin.pending().height == 2
    assert wallets.consolidate("w1") == 17
    assert plugin.pending().height == 0


def test_multi_field_accounts(root: Root) -> None:
    db = root.connect()
    accounts = db.create_resource("accounts", {
        "id": "string|required", "userId": "string|required", "balance": "number|default:0",
        "points": "number|default:0", "credits": "number|default:0"})
    for f in ("balance", "points"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="accounts", field=f, mode="sync", auto_consolidate=False))
    accounts.insert({"id": "acc-001", "userId": "user-123", "balance": 1000, "points": 500})
    accounts.add("acc-001", "balance", 300)
    accounts.add("acc-001", "points", 150)
    accounts.sub("acc-001", "balance", 100)
    assert accounts.consolidate("acc-001", "balance") == 1200
    assert accounts.consolidate("acc-001", "points") == 650
    with pytest.raises(ec.FieldRequiredError, match=r"Multiple fields have eventual consistency\. Please specify the field"):
        accounts.add("acc-001", 100)
    with pytest.raises(ec.FieldRequiredError, match="Please specify the field"):
        accounts.consolidate("acc-001")
    with pytest.raises(ec.UnknownFieldError, match="credits"):
        accounts.add("acc-001", "credits", 5)
    assert accounts.get("acc-001")["credits"] == 0


def test_dynamic_field_detection(root: Root) -> None:
    db = root.connect()
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    wallets.add("w-1", 100)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="points", auto_consolidate=False))
    with pytest.raises(ec.FieldRequiredError, match="Multiple fields have eventual consistency"):
        wallets.add("w-1", 100)
    wallets.add("w-1", "balance", 100)
    wallets.add("w-1", "points", 50)
    assert wallets.consolidate("w-1", "balance") == 200
    assert wallets.consolidate("w-1", "points") == 50


def test_custom_python_reducer_points_only_increase(root: Root) -> None:
    def points(txs: list[dict[str, Any]]) -> float:
        total = 0.0
        for t in txs:
            if t["operation"] == "set":
                total = max(total, t["value"])
            elif t["operation"] == "add":
                total += t["value"]
        return total

    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="users", field="points", reducer=points, auto_consolidate=False))
    users = db.create_resource("users", {"id": "string|required", "points": "number|default:0"})
    users.add("user-123", 100)
    users.add("user-123", 50)
    users.sub("user-123", 30)  # ignored by this reducer
    assert users.consolidate("user-123") == 150
    users.set("user-123", 120)  # lower than current: max keeps 150
    users.add("user-123", 1)
    assert users.consolidate("user-123") == 151


@pytest.mark.parametrize("name", ["sum", "max", "min", "last"])
def test_builtin_reducers_match_their_python_definition(root: Root, name: str) -> None:
    from ecanalytics.consolidation import python_reference

    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="scores", field="score", reducer=name, auto_consolidate=False))
    scores = db.create_resource("scores", {"id": "string|required", "score": "number|default:3"})
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ops = [("a", "add", 5), ("a", "sub", 9), ("a", "set", 4), ("b", "sub", 2), ("a", "add", 1), ("c", "set", 7)]
    for i, (rid, op, v) in enumerate(ops):
        getattr(scores, op)(rid, v, timestamp=t0 + timedelta(seconds=i))
    scores.plugin().consolidate()
    ref = python_reference(name)
    for rid in "abc":
        txs = [{"operation": "set", "value": 3.0}] + [{"operation": op, "value": float(v)} for r, op, v in ops if r == rid]
        assert scores.get(rid)["score"] == ref(txs), rid


def test_inventory_sync_with_timezone(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="inventory", field="quantity", mode="sync",
                                               cohort={"timezone": "America/New_York"}, auto_consolidate=False))
    inventory = db.create_resource("inventory", {"id": "string|required", "quantity": "number|default:0"})
    inventory.insert({"id": "item-001", "quantity": 40})
    assert inventory.sub("item-001", 5) == 35
    assert inventory.consolidate("item-001") == 35
    # 03:30 UTC on Nov 27 is still Nov 26 in New York
    inventory.add("item-001", 1, timestamp=datetime(2026, 11, 27, 3, 30, tzinfo=timezone.utc))
    txs = db.resources["inventory_transactions_quantity"].query({"cohortDate": "2026-11-26"})
    assert txs["value"].to_list() == [1.0]


def test_deferred_setup(root: Root) -> None:
    db = root.connect()
    plugin = db.use_plugin(ec.EventualConsistencyPlugin(resource="future_resource", field="counter", auto_consolidate=False))
    with pytest.raises(ec.ConfigurationError, match="waiting for its resource"):
        plugin.consolidate()
    db.create_resource("other_resource", {"id": "string|required"})
    future = db.create_resource("future_resource", {"id": "string|required", "counter": "number|default:0"})
    future.add("rec-1", 10)
    assert future.consolidate("rec-1") == 10
    assert "future_resource_transactions_counter" in db.resources


def test_batching_writes_one_object_per_batch(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="metrics", field="count", batch_transactions=True,
                                               batch_size=500, auto_consolidate=False, flush_interval=3600))
    metrics = db.create_resource("metrics", {"id": "string|required", "count": "number|default:0"})
    ts = datetime(2026, 11, 27, 12, tzinfo=timezone.utc)
    for i in range(1200):
        metrics.add(f"metric-{i % 10}", 1, timestamp=ts)
    store = root.store()
    objects = store.find("metrics_transactions_count", ".parquet")
    assert len(objects) == 2  # two full batches; 200 still buffered
    db.flush()
    assert len(store.find("metrics_transactions_count", ".parquet")) == 3
    metrics.plugin().consolidate()
    assert metrics.to_polars()["count"].to_list() == [120.0] * 10


def test_close_flushes_batches(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="metrics", field="count", batch_transactions=True,
                                               batch_size=1000, auto_consolidate=False, flush_interval=3600))
    metrics = db.create_resource("metrics", {"id": "string|required", "count": "number|default:0"})
    for _ in range(7):
        metrics.add("m", 2)
    db.close()
    db2 = root.connect()
    db2.consolidate()
    assert db2.resources["metrics"].get("m")["count"] == 14  # type: ignore[union-attr]


def test_flush_interval_flushes_in_background(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="metrics", field="count", batch_transactions=True,
                                               batch_size=1000, auto_consolidate=False, flush_interval=0.1))
    metrics = db.create_resource("metrics", {"id": "string|required", "count": "number|default:0"})
    metrics.add("m", 2)
    deadline = time.monotonic() + 10
    while not root.store().find("metrics_transactions_count", ".parquet") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(root.store().find("metrics_transactions_count", ".parquet")) == 1


def test_adds_go_on_while_a_flush_writes(root: Root) -> None:
    """A flush holds the buffer only to take its rows: while its object is being written (held
    here mid-write), other threads' adds return, a second flush waits for the first, and every
    add counts exactly once afterwards."""
    db = root.connect()
    plugin = db.use_plugin(ec.EventualConsistencyPlugin(resource="metrics", field="count", batch_transactions=True,
                                                        batch_size=1000, auto_consolidate=False, flush_interval=3600))
    metrics = db.create_resource("metrics", {"id": "string|required", "count": "number|default:0"})
    original, writing, release = db.store.write_parquet, threading.Event(), threading.Event()

    def held_write(rel: str, df: Any, *, create: bool = False) -> Any:
        if "_transactions_" in rel and not release.is_set():
            writing.set()
            assert release.wait(30)
        return original(rel, df, create=create)

    db.store.write_parquet = held_write  # type: ignore[method-assign]
    for _ in range(3):
        metrics.add("m", 2)
    first = threading.Thread(target=plugin.flush)
    first.start()
    assert writing.wait(30)
    added = threading.Thread(target=lambda: [metrics.add("m", 5) for _ in range(4)])
    added.start()
    added.join(10)
    assert not added.is_alive()  # the adds did not wait for the write
    second = threading.Thread(target=plugin.flush)
    second.start()
    second.join(0.2)
    assert second.is_alive()  # one flush at a time
    release.set()
    for t in (first, second):
        t.join(30)
    db.store.write_parquet = original  # type: ignore[method-assign]
    assert len(root.store().find("metrics_transactions_count", ".parquet")) == 2
    db.consolidate()
    assert metrics.get("m")["count"] == 3 * 2 + 4 * 5  # type: ignore[index]


def test_parallel_operations_on_two_fields(root: Root) -> None:
    db = root.connect()
    metrics = db.create_resource("metrics", {"id": "string|required", "views": "number|default:0", "clicks": "number|default:0"})
    for f in ("views", "clicks"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="metrics", field=f, auto_consolidate=False))
    calls = [("views", 100), ("views", 200), ("clicks", 10), ("clicks", 20)] * 5
    threads = [threading.Thread(target=metrics.add, args=("page-1", f, v)) for f, v in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert metrics.consolidate("page-1", "views") == 1500
    assert metrics.consolidate("page-1", "clicks") == 150


def test_sync_writers_share_a_group_commit(root: Root) -> None:
    _db, wallets, plugin = wallets_db(root)
    wallets.insert({"id": "w1", "userId": "u1", "currency": "USD"})
    versions: list[int] = []
    plugin.on("eventual-consistency.consolidated", lambda e: versions.append(e["version"]))
    results: list[float | None] = []
    lock = threading.Lock()

    def writer(k: int) -> None:
        for _ in range(5):
            v = wallets.add("w1", k)
            with lock:
                results.append(v)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = 5 * sum(range(1, 9))
    assert wallets.get("w1")["balance"] == expected
    assert max(r for r in results if r is not None) == expected
    assert len(versions) < 40  # 40 sync writes coalesced into fewer commits
    assert len(versions) == len(set(versions))


def test_manual_control_and_background_consolidation(root: Root) -> None:
    db, wallets, plugin = wallets_db(root, mode="async", auto_consolidate=True, consolidation_interval=0.2)
    done = threading.Event()
    payloads: list[dict[str, Any]] = []
    plugin.on("eventual-consistency.consolidated", lambda e: (payloads.append(e), done.set()))
    wallets.insert({"id": "w1", "userId": "u1", "currency": "USD"})
    wallets.add("w1", 42)
    assert done.wait(15), "background consolidation did not run"
    assert wallets.get("w1")["balance"] == 42
    assert payloads[0]["recordCount"] == 1 and payloads[0]["transactionCount"] == 1
    db.close()
    assert plugin._thread is not None and not plugin._thread.is_alive()


def test_idempotency_keys(root: Root) -> None:
    _db, wallets, _ = wallets_db(root, mode="async")
    wallets.insert({"id": "w1", "userId": "u1", "currency": "USD"})
    wallets.add("w1", 10, id="pay-1")
    wallets.add("w1", 10, id="pay-1")  # retry while pending
    assert wallets.consolidate("w1") == 10
    wallets.add("w1", 10, id="pay-1")  # retry after it was applied
    wallets.add("w1", 1, id="pay-2")
    assert wallets.consolidate("w1") == 11


def test_backfill_timestamp_sets_cohort_and_order(root: Root) -> None:
    db, wallets, _ = wallets_db(root, mode="async", cohort={"timezone": "America/Sao_Paulo"})
    day = datetime(2025, 3, 10, 2, 0, tzinfo=timezone.utc)  # 23:00 on Mar 9 in Sao Paulo
    wallets.insert({"id": "w1", "userId": "u1", "currency": "USD"})
    wallets.set("w1", 50, timestamp=day + timedelta(hours=1))
    wallets.add("w1", 7, timestamp=day)  # earlier event: the later set overrides it
    assert wallets.consolidate("w1") == 50
    txs = db.resources["wallets_transactions_balance"]
    assert isinstance(txs, ec.TransactionDataset)
    got = txs.query({"cohortMonth": "2025-03"})
    # 02:00 UTC is 23:00 on Mar 9 in Sao Paulo (UTC-3); 03:00 UTC is already Mar 10 there.
    assert sorted(map(str, got["cohortDate"].to_list())) == ["2025-03-09", "2025-03-10"]
    assert got["applied"].to_list() == [True, True]


def test_records_created_by_transactions_get_defaults(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:5",
                                             "currency": "string|default:USD", "vip": "boolean|default:false"})
    wallets.add("new", 3)
    assert wallets.consolidate("new") == 8
    assert wallets.get("new") == {"id": "new", "balance": 8.0, "currency": "USD", "vip": False}


def test_crud_and_query(root: Root) -> None:
    db, wallets, _ = wallets_db(root)
    wallets.insert({"id": "w1", "userId": "u1", "balance": 1, "currency": "USD"})
    wallets.insert({"id": "w2", "userId": "u2", "currency": "EUR"})
    with pytest.raises(ec.RecordExistsError):
        wallets.insert({"id": "w1", "userId": "u1", "currency": "USD"})
    with pytest.raises(ec.SchemaError, match="required"):
        wallets.insert({"id": "w3", "currency": "USD"})
    with pytest.raises(ec.SchemaError, match="set/add/sub"):
        wallets.update("w1", {"balance": 3})
    wallets.update("w1", {"currency": "EUR"})
    assert wallets.query({"currency": "EUR"})["id"].to_list() == ["w1", "w2"]
    assert wallets.query({"currency": ["USD"]}).height == 0
    wallets.delete("w2")
    with pytest.raises(ec.RecordNotFoundError):
        wallets.get("w2")
    with pytest.raises(KeyError):  # RecordNotFoundError is a KeyError too
        wallets.delete("w2")
    assert wallets.to_polars().to_dicts() == [{"id": "w1", "userId": "u1", "balance": 1.0, "currency": "EUR"}]
    assert isinstance(wallets.scan(), pl.LazyFrame)
    assert db.resources["wallets"] is wallets


def test_transaction_dataset_columns_and_applied(root: Root) -> None:
    db, wallets, _ = wallets_db(root, mode="async")
    wallets.insert({"id": "w1", "userId": "u1", "balance": 0, "currency": "USD"})
    ts = datetime(2026, 11, 27, 15, tzinfo=timezone.utc)
    wallets.add("w1", 5, timestamp=ts, source="checkout")
    wallets.consolidate("w1")
    wallets.sub("w1", 2, timestamp=ts + timedelta(minutes=1))
    txs = db.resources["wallets_transactions_balance"].query({"cohortDate": "2026-11-27"})  # type: ignore[union-attr]
    assert txs.columns == ["id", "originalId", "field", "value", "operation", "timestamp", "cohortDate",
                           "cohortMonth", "source", "applied"]
    assert txs.select("originalId", "field", "value", "operation", "source", "applied").rows() == [
        ("w1", "balance", 5.0, "add", "checkout", True), ("w1", "balance", 2.0, "sub", "api", False)]
    assert txs["cohortMonth"].to_list() == ["2026-11", "2026-11"]
    assert db.resources["wallets_transactions_balance"].query({"cohortDate": "2026-11-26"}).height == 0  # type: ignore[union-attr]


def test_reopen_from_catalog_in_a_new_connection(root: Root) -> None:
    def halve(txs: list[dict[str, Any]]) -> float:
        return sum(t["value"] for t in txs) / 2

    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", mode="sync", auto_consolidate=False,
                                               cohort={"timezone": "Asia/Tokyo"}))
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="points", reducer=halve, auto_consolidate=False))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    wallets.add("w1", "balance", 7)
    db.close()

    db2 = root.connect()
    w2 = db2.resources["wallets"]
    assert isinstance(w2, ec.Resource)
    assert w2.get("w1")["balance"] == 7
    assert w2.plugins["balance"].mode == "sync" and w2.plugins["balance"].timezone == "Asia/Tokyo"
    assert w2.add("w1", "balance", 1) == 8
    w2.add("w1", "points", 10)  # writes work without the reducer
    with pytest.raises(ec.ReducerRequiredError, match="halve"):
        w2.consolidate("w1", "points")
    db2.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="points", reducer=halve, auto_consolidate=False))
    assert w2.consolidate("w1", "points") == 5


def test_events_report_transaction_errors(root: Root) -> None:
    _db, wallets, plugin = wallets_db(root, mode="async")
    errors: list[dict[str, Any]] = []
    plugin.on("eventual-consistency.transaction-error", errors.append)
    wallets.add("w1", 1)
    store = plugin.consolidator.store
    key = store.find("wallets_transactions_balance", ".parquet")[0]
    store.write(key, b"not parquet")
    with pytest.raises(ec.CorruptObjectError, match="not a readable Parquet"):
        wallets.consolidate("w1")
    assert errors and errors[0]["stage"] == "consolidate"
    with pytest.raises(ec.ConfigurationError):
        plugin.on("no-such-event", print)


def test_create_resource_is_idempotent_but_checks_schema(root: Root) -> None:
    db = root.connect()
    a = db.create_resource("wallets", WALLETS)
    assert db.create_resource("wallets", WALLETS) is a
    with pytest.raises(ec.ResourceExistsError):
        db.create_resource("wallets", {"id": "string|required"})


def test_interpreter_exit_flushes_batches(root: Root) -> None:
    if root.kind == "memory":
        pytest.skip("memory:// does not outlive the child process that would write it")
    import subprocess
    import sys

    script = (
        "import sys, ecanalytics as ec\n"
        "db = ec.connect(sys.argv[1], endpoint_url=sys.argv[2] or None)\n"
        "db.use_plugin(ec.EventualConsistencyPlugin(resource='m', field='n', batch_transactions=True,"
        " batch_size=1000, flush_interval=3600, auto_consolidate=False))\n"
        "m = db.create_resource('m', {'id': 'string|required', 'n': 'number|default:0'})\n"
        "for _ in range(9):\n"
        "    m.add('x', 3)\n"
        "# no flush, no close: interpreter exit must write the buffer\n"
    )
    subprocess.run([sys.executable, "-c", script, root.uri, root.endpoint_url or ""], check=True, timeout=120)
    db = root.connect()
    db.consolidate()
    assert db.resources["m"].get("x")["n"] == 27  # type: ignore[union-attr]
