"""Garbage collection is fenced by versions, never by age or a clock: a writer paused for any
length of time before its commit never finds what it wrote deleted, and a commit never names an
object that is gone. A named object that is gone anyway is corruption: every reader raises a typed
error naming it, and nothing is committed."""

from __future__ import annotations

import collections
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from ecanalytics.consolidation import cluster
from ecanalytics.ledger.transactions import history_keys
from tests.conftest import Root
from tests.model import LedgerModel, Tx

DATASET = "acc_transactions_balance"


def open_db(root: Root) -> ec.Database:
    db = root.connect()
    for f in ("balance", "points"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field=f, auto_consolidate=False))
    db.create_resource("acc", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    return db


def traffic(db: ec.Database, model: LedgerModel, seed: int, n: int, records: int = 300) -> None:
    rng = random.Random(seed)
    t0 = datetime(2026, 5, 1, tzinfo=UTC)
    rows: dict[str, list[dict[str, Any]]] = {"balance": [], "points": []}
    for i in range(n):
        f = rng.choice(["balance", "points"])
        tx = Tx(f"s{seed}-{i}", f"a{rng.randrange(records)}", f, rng.choice(["add", "add", "sub", "set"]),
                float(rng.randrange(1, 90)), t0 + timedelta(minutes=rng.randrange(3000)))
        model.write(tx)
        rows[f].append({"id": tx.key, "originalId": tx.record, "value": tx.value, "operation": tx.op,
                        "timestamp": tx.ts})
    for f, batch in rows.items():
        db.resources["acc"].write_transactions(batch, f)  # type: ignore[union-attr]


def table(db: ec.Database, f: str) -> dict[str, float]:
    got = db.resources["acc"].to_polars()  # type: ignore[union-attr]
    return {k: v for k, v in zip(got["id"], got[f], strict=True) if v}


def expected(model: LedgerModel, f: str) -> dict[str, float]:
    return {k: v for k, v in model.table(f).items() if v}


class Pause:
    """A fault hook that runs ``meanwhile`` (other processes' work) at ``step``, once: a pause of
    any length, since nothing in ecanalytics may depend on how long it was."""

    def __init__(self, step: str, meanwhile: Any) -> None:
        self.step, self.meanwhile, self.done = step, meanwhile, False

    def __call__(self, step: str) -> None:
        if step == self.step and not self.done:
            self.done = True
            self.meanwhile()


@pytest.mark.parametrize("other_commit", [False, True], ids=["version-free", "version-taken"])
def test_a_paused_consolidator_never_loses_its_deltas_to_a_sweep(root: Root, other_commit: bool) -> None:
    """Issue case 1: a consolidator writes its bucket deltas (a spilled fold writes them before
    the commit), then pauses; meanwhile compaction sweeps. Its deltas stay while their version is
    free; if another commit takes the version, the sweep may remove them, and the paused
    consolidator's create-only entry then fails and it folds again: every transaction once."""
    db = open_db(root)
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    traffic(db, model, 1, 3000)
    plugin = db.resources["acc"].plugins["balance"]  # type: ignore[union-attr]
    plugin.consolidator.budget_rows = 400  # spill: deltas are written per bucket before the commit
    other = root.connect()

    def meanwhile() -> None:
        if other_commit:
            other.consolidate(resource="acc", field="points")  # takes the version the paused one wanted
        for f in ("balance", "points"):
            other.resources["acc"].compact(f)  # type: ignore[union-attr]  # sweeps orphans
        assert cluster.sweep(other.resources["acc"].ledger) == 0 or other_commit  # type: ignore[union-attr]

    ledger = db.resources["acc"].ledger  # type: ignore[union-attr]
    ledger.fault = Pause("after_delta", meanwhile)
    result = db.consolidate(resource="acc", field="balance")[0]
    ledger.fault = None
    assert result.transactions == sum(1 for tx in model.pending if tx.field == "balance")
    model.consolidate("balance")
    if other_commit:
        model.consolidate("points")
    fresh = root.connect()
    assert table(fresh, "balance") == expected(model, "balance")
    assert table(fresh, "points") == (expected(model, "points") if other_commit else {})
    # Every object the state names exists: nothing the commit named was swept.
    assert fresh.resources["acc"].verify() == []  # type: ignore[union-attr]


def small_objects(db: ec.Database, days: int = 3, per_day: int = 10) -> dict[str, float]:
    w = db.resources["acc"]
    t0 = datetime(2026, 11, 20, 12, tzinfo=UTC)
    sums: dict[str, float] = collections.defaultdict(float)
    for i in range(days * per_day):
        rid = f"a{i % 10}"
        w.add(rid, "balance", float(i + 1), id=f"k{i:03d}", timestamp=t0 + timedelta(days=i % days, minutes=i))  # type: ignore[union-attr]
        sums[rid] += i + 1
    db.consolidate()
    return dict(sums)


def test_a_paused_compaction_never_deletes_the_winners_output(root: Root) -> None:
    """Issue case 2: a compaction pauses after merging; a second one (another machine, with
    whatever clock) merges and commits the same partitions. The paused run's commit then loses,
    it drops only its own output, and every reader keeps every transaction."""
    db = open_db(root)
    sums = small_objects(db)
    other = root.connect()
    results = []

    def meanwhile() -> None:
        results.append(other.resources["acc"].compact("balance", target_rows=100))  # type: ignore[union-attr]

    ledger = db.resources["acc"].ledger  # type: ignore[union-attr]
    ledger.fault = Pause("after_delta", meanwhile)
    paused = db.resources["acc"].compact("balance", target_rows=100)  # type: ignore[union-attr]
    ledger.fault = None
    assert results[0].sources == 30 and results[0].merged == 3
    assert paused.version is None  # it lost, and found nothing left to merge
    fresh = root.connect()
    counts = fresh.sql(f"SELECT originalId, sum(value) FROM {DATASET} GROUP BY 1").fetchall()
    assert dict(counts) == sums
    assert fresh.resources["acc"].recalculate(field="balance").changed == 0  # type: ignore[union-attr]
    assert table(fresh, "balance") == sums
    keys = history_keys(fresh.store, DATASET)
    assert len(keys) == 3 and all(k.rsplit("/", 1)[-1].startswith("c-") for k in keys)
    assert fresh.resources["acc"].verify() == []  # type: ignore[union-attr]


def test_a_crashed_compactions_output_goes_only_once_its_version_is_taken(root: Root) -> None:
    db = open_db(root)
    sums = small_objects(db)

    class Crash(BaseException):
        pass

    def crash(step: str) -> None:
        if step == "after_delta":
            raise Crash

    ledger = db.resources["acc"].ledger  # type: ignore[union-attr]
    ledger.fault = crash
    with pytest.raises(Crash):
        db.resources["acc"].compact("balance", target_rows=100)  # type: ignore[union-attr]
    ledger.fault = None
    orphans = [k for k in history_keys(db.store, DATASET) if k.rsplit("/", 1)[-1].startswith("c-")]
    assert len(orphans) == 3
    version = ledger.state().version
    other = root.connect()
    seen: list[bool] = []
    # The next compaction sweeps first, while the crashed run's version is still free: the orphans
    # stay (a paused run could still commit them). Then it takes that version itself, and its
    # clean-up after the commit removes them.
    other.resources["acc"].ledger.fault = Pause(  # type: ignore[union-attr]
        "after_delta", lambda: seen.append(all(other.store.exists(k) for k in orphans)))
    assert other.resources["acc"].compact("balance", target_rows=100).version == version + 1  # type: ignore[union-attr]
    assert seen == [True]
    assert not any(other.store.exists(k) for k in orphans)
    assert table(root.connect(), "balance") == sums


def test_a_missing_applied_object_is_a_typed_error_and_commits_nothing(root: Root) -> None:
    """Issue case 3: with one applied object gone, every history reader raises
    :class:`ec.MissingObjectError` naming it, and recalculation commits nothing."""
    db = open_db(root)
    small_objects(db)
    w = db.resources["acc"]
    assert isinstance(w, ec.Resource)
    gone = history_keys(db.store, DATASET)[0]
    db.store.delete([gone])
    version = w.ledger.state().version
    problems = w.verify()
    assert [p.key for p in problems] == [db.store.url(gone)]
    for read in (lambda: w.recalculate(field="balance"), lambda: db.resources[DATASET].query(),  # type: ignore[union-attr]
                 lambda: w.to_polars(events_until=datetime(2027, 1, 1, tzinfo=UTC)),
                 lambda: w.gc(1, field="balance"), lambda: w.compact("balance", target_rows=100)):
        with pytest.raises(ec.MissingObjectError) as info:
            read()
        assert gone.rsplit("/", 1)[-1] in str(info.value) and "inspect --verify" in str(info.value)
    assert w.ledger.state().version == version
    assert pl.Series([version]).item() == root.connect().resources["acc"].ledger.state().version  # type: ignore[union-attr]


def test_a_relation_kept_across_compaction_says_to_rerun(root: Root) -> None:
    """Issue case 5: a relation built before a compaction (kept in a notebook) reads files the
    compaction deleted: a typed SnapshotGoneError that says to re-run, never a raw DuckDB or s3fs
    error and never a wrong number; re-running gives the right one."""
    db = open_db(root)
    sums = small_objects(db)
    query = f"SELECT count(*) AS n, sum(value) AS total FROM {DATASET}"
    kept = db.sql(query)
    assert db.resources["acc"].compact("balance", target_rows=100).sources == 30  # type: ignore[union-attr]
    for fetch in (lambda: kept.fetchall(), lambda: kept.pl(), lambda: kept.filter("n > 0").fetchall()):
        with pytest.raises(ec.SnapshotGoneError) as info:
            fetch()
        assert "re-run the query" in str(info.value)
    assert db.sql(query).fetchall() == [(30, sum(sums.values()))]
    assert ec.reports.run(db, "daily_totals", start="2026-11-01", end="2026-11-30")["transactionCount"].sum() == 30
    assert db.resources["acc"].plugins["balance"].get_cohort_stats("2026-11-21")["transactionCount"] == 10  # type: ignore[union-attr]


def test_a_missing_state_object_is_a_typed_error(root: Root) -> None:
    """A delta the commit log names that is gone raises MissingObjectError (also a
    FileNotFoundError) naming it, from a fresh connection's reads and from consolidation."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="one", field="balance", auto_consolidate=False))
    one = db.create_resource("one", {"id": "string|required", "balance": "number|default:0"}, buckets=1)
    one.write_transactions([{"originalId": f"r{i}", "value": float(i)} for i in range(200)])  # a delta object, not inline
    db.consolidate()
    deltas = [k for k in db.store.find("one/_data") if ".delta-b" in k]
    assert deltas
    db.store.delete(deltas)
    fresh = root.connect()
    with pytest.raises(ec.MissingObjectError) as info:
        fresh.resources["one"].to_polars()  # type: ignore[union-attr]
    assert deltas[0].rsplit("/", 1)[-1] in str(info.value) and "inspect --verify" in str(info.value)
    assert [p.key for p in fresh.resources["one"].verify()] == [fresh.store.url(k) for k in deltas]  # type: ignore[union-attr]
