"""Exactly once: concurrent writers and consolidators, and crashes at every step of the commit."""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections import defaultdict
from pathlib import Path

import pytest

import ecanalytics as ec
from ecanalytics.ledger.transactions import Inbox
from ecanalytics.storage import paths as P
from tests import workers
from tests.conftest import Root

STEPS = ["after_delta", "after_log", "before_checkpoint"]


class SimulatedCrash(BaseException):
    """Raised by the fault hook; BaseException so no library code can swallow it."""


def expected_from_plans(writers: int, n: int, records: int) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for w in range(writers):
        for _key, rid, op, amount in workers.plan(w, n, records):
            totals[rid] += amount if op == "add" else -amount
    return dict(totals)


def make_wallets(root: Root) -> ec.Database:
    db = root.connect(checkpoint_interval=4)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    return db


def values(db: ec.Database) -> dict[str, float]:
    table = db.resources["wallets"].to_polars()  # type: ignore[union-attr]
    return dict(zip(table["id"].to_list(), table["balance"].to_list(), strict=True))


def test_concurrent_consolidators_in_threads(root: Root) -> None:
    """Two independent connections (no shared locks) race for versions while three threads write."""
    make_wallets(root).close()
    stop = threading.Event()
    errors: list[BaseException] = []

    def consolidate_loop() -> None:
        db = root.connect(checkpoint_interval=4)
        try:
            while not stop.is_set():
                db.consolidate()
            db.consolidate()
        except BaseException as exc:
            errors.append(exc)

    consolidators = [threading.Thread(target=consolidate_loop) for _ in range(2)]
    writers = [threading.Thread(target=workers.writer, args=(root.uri, root.endpoint_url, w, 40, 6, w == 1)) for w in range(3)]
    for t in consolidators + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in consolidators:
        t.join()
    assert not errors
    db = root.connect()
    db.consolidate()
    assert values(db) == expected_from_plans(3, 40, 6)
    log = [db.resources["wallets"].ledger.read_entry(v) for v in range(1, 200)]  # type: ignore[union-attr]
    # The objects a consolidation applied join the manifest in its entry. No object was applied
    # by two commits, and every applied one was consumed.
    applied: list[str] = []
    consumed: set[str] = set()
    for e in log:
        if e is not None and e.kind == "consolidate":
            applied += sorted(e.manifest.add if e.manifest else ())
            consumed |= set(e.consumed.add if e.consumed else ())
    assert applied and len(applied) == len(set(applied))
    assert set(applied) <= consumed


@pytest.mark.s3
@pytest.mark.slow
def test_three_writer_and_two_consolidator_processes_on_s3(s3_root: Root, tmp_path: Path) -> None:
    make_wallets(s3_root).close()
    ctx = mp.get_context("spawn")
    stop_file = str(tmp_path / "stop")
    consolidators = [ctx.Process(target=workers.consolidator, args=(s3_root.uri, s3_root.endpoint_url, stop_file)) for _ in range(2)]
    writers = [ctx.Process(target=workers.writer, args=(s3_root.uri, s3_root.endpoint_url, w, 50, 8, w == 2)) for w in range(3)]
    for p in consolidators + writers:
        p.start()
    for p in writers:
        p.join(timeout=300)
        assert p.exitcode == 0
    Path(stop_file).touch()
    for p in consolidators:
        p.join(timeout=300)
        assert p.exitcode == 0
    db = s3_root.connect()
    db.consolidate()
    assert values(db) == expected_from_plans(3, 50, 8)


@pytest.mark.parametrize("step", STEPS)
def test_crash_at_each_commit_step_then_rerun(root: Root, step: str) -> None:
    db = make_wallets(root)
    wallets = db.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    expected: dict[str, float] = defaultdict(float)
    for round_ in range(6):  # several rounds so that a checkpoint falls inside the crashes
        for i in range(5):
            wallets.add(f"r{i}", round_ * 10 + i)
            expected[f"r{i}"] += round_ * 10 + i

        def crash(at: str) -> None:
            if at == step:
                raise SimulatedCrash(at)

        wallets.ledger.fault = crash
        with pytest.raises(SimulatedCrash):
            db.consolidate()
        wallets.ledger.fault = None
        # A new connection stands for a restarted process: no in-memory state survives.
        db = root.connect(checkpoint_interval=4)
        wallets = db.resources["wallets"]  # type: ignore[assignment]
        assert isinstance(wallets, ec.Resource)
        db.consolidate()
        db.consolidate()  # a second run must find nothing left to apply
        assert values(db) == dict(expected)
    assert Inbox.scan(root.store(), "wallets_transactions_balance").markers == {}  # every marker cleaned up


@pytest.mark.s3
@pytest.mark.parametrize("step", STEPS)
def test_killed_process_at_each_commit_step_on_s3(s3_root: Root, step: str) -> None:
    db = make_wallets(s3_root)
    wallets = db.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    for i in range(4):
        wallets.add(f"r{i}", i + 1)
    wallets.add("r0", 100, id="once")
    ctx = mp.get_context("spawn")
    p = ctx.Process(target=workers.crash_at, args=(s3_root.uri, s3_root.endpoint_url, step))
    p.start()
    p.join(timeout=120)
    assert p.exitcode == 17  # it really died at that step
    wallets.add("r0", 100, id="once")  # a retry after the crash
    db2 = s3_root.connect()
    db2.consolidate()
    assert values(db2) == {"r0": 101.0, "r1": 2.0, "r2": 3.0, "r3": 4.0}


def test_a_writer_paused_between_marker_and_object_is_never_lost(root: Root) -> None:
    """A marker without its object may be a dead writer's or a paused one's; no age tells them
    apart (a process can stop for days, clocks disagree). So consolidation skips such a marker and
    never deletes it, and the paused writer's object is applied once it lands, however late."""
    from datetime import UTC, datetime

    from ecanalytics.ledger.transactions import plan_objects, tx_frame

    db = make_wallets(root)
    wallets = db.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    store = root.store()
    dataset = "wallets_transactions_balance"
    rows = tx_frame([{"id": "paused-1", "originalId": "r2", "field": "balance", "value": 7.0, "operation": "add",
                      "timestamp": datetime(2026, 11, 27, 10, tzinfo=UTC), "source": "test"}])
    (paused,) = plan_objects(dataset, "UTC", rows)
    store.write(paused.marker, b"")  # the writer stops here (SIGSTOP, a VM suspend)
    wallets.add("r1", 5)
    for _ in range(3):  # however many runs pass meanwhile
        db.consolidate()
    assert values(db) == {"r1": 5.0}
    assert paused.key in Inbox.scan(store, dataset).markers  # kept: the writer may still come back
    store.write_parquet(paused.key, paused.rows)  # it wakes up and finishes its write
    db.consolidate()
    assert values(db) == {"r1": 5.0, "r2": 7.0}
    assert root.connect().resources["wallets_transactions_balance"].query()["id"].to_list().count("paused-1") == 1  # type: ignore[union-attr]
    assert paused.key not in Inbox.scan(store, dataset).markers  # consumed: its marker went after the commit


def test_log_entries_grow_with_their_change_not_with_the_carry(root: Root) -> None:
    """Consumed keys stay carried until a LIST shows their markers gone; the entries record only
    what changed, so the 300th sync write's entry is no bigger than the 3rd's."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", mode="sync", auto_consolidate=False))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    sizes = {}
    store = root.store()
    for i in range(1, 301):
        wallets.add(f"r{i % 7}", 1)
        if i in (3, 300):
            version = wallets.ledger.state().version
            sizes[i] = len(store.read(P.log_entry("wallets", version)))
    assert wallets.ledger.state().consumed["balance"]  # keys are carried between commits
    assert sizes[300] <= sizes[3] + 200, sizes  # ids and timestamps differ in length by a few bytes
    assert values(db) == {f"r{k}": float(len([i for i in range(1, 301) if i % 7 == k])) for k in range(7)}
