"""Group commit of sync writes: concurrent writers share one object and one commit per batch,
every writer gets its committed value, and a batch that fails fails for every writer in it."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

import ecanalytics as ec
from tests.conftest import Root


def wallets(root: Root) -> tuple[ec.Database, Any]:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", mode="sync"))
    return db, db.create_resource("w", {"id": "string|required", "balance": "number|default:0"})


def test_concurrent_sync_writers_share_objects_and_commits(root: Root) -> None:
    _db, w = wallets(root)
    results: dict[int, float] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(12)

    def writer(i: int) -> None:
        try:
            start.wait()
            for j in range(5):
                results[i * 10 + j] = w.add(f"r{i % 3}", 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    got = w.to_polars()
    expected = Counter(f"r{i % 3}" for i in range(12) for _ in range(5))
    assert dict(zip(got["id"], got["balance"], strict=True)) == {k: float(v) for k, v in expected.items()}
    objects = [k for k in root.store().find("w_transactions_balance", ".parquet") if "/_inbox" not in k]
    assert len(objects) < 60 and w.ledger.state().version < 60  # batches, not one object and commit per add
    # Every writer got a committed value that includes its own adds (writers of one batch share
    # the value after the batch), and the last one of each record is the total.
    per_record: dict[str, list[float]] = {}
    for key, value in results.items():
        assert value >= key % 10 + 1  # this writer's own adds so far, at least
        per_record.setdefault(f"r{(key // 10) % 3}", []).append(value)
    assert all(max(v) == expected[r] and min(v) >= 1 for r, v in per_record.items())


def test_a_failed_batch_fails_every_writer_in_it(root: Root) -> None:
    db, w = wallets(root)
    w.add("r0", 1)
    store = db.store
    real = store.write_parquet
    gate = threading.Event()
    calls: list[str] = []

    def failing(rel: str, df: Any, *, create: bool = False) -> int:
        if "w_transactions_balance/cohort" in rel:
            calls.append(rel)
            gate.wait(5)  # hold the batch so that the other writers join the next one
            raise OSError("disk full")
        return real(rel, df, create=create)

    store.write_parquet = failing  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            w.add(f"r{i}", 1)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    store.write_parquet = real  # type: ignore[method-assign]
    assert len(errors) == 6 and all(isinstance(e, OSError) for e in errors)  # nobody was told it committed
    assert len(calls) < 6  # the writers were batched
    assert w.get("r0")["balance"] == 1.0
    with pytest.raises(ec.errors.RecordNotFoundError):
        w.get("r3")
