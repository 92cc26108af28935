"""One truth: every reader sees the same transactions, and a key means the same whatever the timing.

The readers (the Python dataset, the SQL view, cohort stats, reports) are compared row for row on a
history with pending, applied, held, archived (both retention modes) and compacted objects,
idempotent retries across cohort days and keys reused for other records. The key rule is checked
against a plain-Python model on the in-memory, spilled and Dask paths, with consolidation run at
random moments.
"""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from tests.conftest import Root

DATASET = "acc_transactions_balance"
# The history ends a few days ago, so that retention (relative to now) cuts it in the middle.
T0 = (datetime.now(UTC) - timedelta(days=45)).replace(hour=12, minute=0, second=0, microsecond=0)
SPEC = {"id": "string|required", "owner": "string|required", "balance": "number|default:0"}


def open_db(root: Root, **kwargs: Any) -> tuple[ec.Database, ec.Resource]:
    db = root.connect(**kwargs)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", auto_consolidate=False))
    acc = db.create_resource("acc", SPEC)
    return db, acc


def history(root: Root, mode: str) -> tuple[ec.Database, ec.Resource]:
    """A history with every kind of object and row a reader can meet."""
    db, acc = open_db(root)
    acc.insert_many([{"id": f"r{i}", "owner": "o"} for i in range(6)])
    for day in range(40):  # forty cohort days; old ones are archived or deleted by retention
        ts = T0 + timedelta(days=day)
        acc.add(f"r{day % 6}", "balance", day + 1, timestamp=ts)  # generated id
        acc.add(f"r{(day + 1) % 6}", "balance", 100 + day, id=f"k{day}", timestamp=ts + timedelta(hours=1))
        if day % 7 == 0:  # an idempotent retry, written on another cohort day
            acc.add(f"r{(day + 1) % 6}", "balance", 100 + day, id=f"k{day}", timestamp=ts + timedelta(days=1))
        if day % 11 == 0:  # the key reused for another record: a conflict, never applied
            acc.add("r5", "balance", 5000, id=f"k{day}", timestamp=ts + timedelta(hours=2))
        if day in (10, 30):
            db.consolidate()
    acc.add("ghost", "balance", 7, timestamp=T0 + timedelta(days=35))  # held: no such record, owner required
    db.consolidate()
    acc.gc(20, archive=mode == "archive")  # relative to now: the first 25 days go to the archive, or away
    db.consolidate()
    acc.compact(target_rows=3)
    # Pending: a retry of an applied key, two occurrences of a new key, and plain writes.
    acc.add("r1", "balance", 101, id="k1", timestamp=T0 + timedelta(days=50))
    acc.add("r2", "balance", 9, id="fresh", timestamp=T0 + timedelta(days=41))
    acc.add("r2", "balance", 9, id="fresh", timestamp=T0 + timedelta(days=42))
    acc.add("r3", "balance", 3, timestamp=T0 + timedelta(days=41))
    return db, acc


COLUMNS = ["id", "originalId", "operation", "value", "timestamp", "cohortDate", "applied"]


@pytest.mark.parametrize("mode", ["archive", "delete"])
def test_every_reader_sees_the_same_rows(root: Root, mode: str) -> None:
    db, acc = history(root, mode)
    dataset = db.resources[DATASET]
    python = dataset.query().select(COLUMNS).sort("id", "timestamp")  # type: ignore[union-attr]
    sql = db.sql(f"SELECT {', '.join(COLUMNS)} FROM {DATASET}").pl().sort("id", "timestamp")
    assert python.height > 20 and python.equals(sql.cast(python.schema)), (python, sql)  # type: ignore[arg-type]
    first_day = python["cohortDate"].min()
    assert first_day == (T0.date() if mode == "archive" else (datetime.now(UTC) - timedelta(days=20)).date()), first_day
    assert python["id"].n_unique() == python.height  # the id is the primary key
    assert python.filter(pl.col("id") == "k0")["originalId"].to_list() in ([], ["r1"])  # the conflict never shows
    assert python.filter(pl.col("originalId") == "ghost")["applied"].to_list() == [False]  # held
    pending = python.filter(~pl.col("applied") & (pl.col("originalId") != "ghost"))
    assert pending.filter(~pl.col("id").str.starts_with("auto-"))["id"].to_list() == ["fresh"]  # k1's retry: no row
    assert pending.height == 2
    # ec_pending shows those same pending rows (the key rule applied), and when each was written.
    started = datetime.now(UTC)
    waiting = db.sql("SELECT resource, id, originalId, operation, value, timestamp, writtenAt FROM ec_pending").pl()
    shown = waiting.select(pending.drop("cohortDate", "applied").columns).sort("id", "timestamp")
    assert shown.equals(pending.drop("cohortDate", "applied").cast(shown.schema)), (shown, pending)  # type: ignore[arg-type]
    assert waiting["resource"].to_list() == ["acc"] * 2
    assert waiting["writtenAt"].is_not_null().all() and (waiting["writtenAt"] <= started).all()
    # Per cohort day: the dataset, cohort stats and the report count the same rows.
    per_day = Counter(str(d) for d in python["cohortDate"].to_list())
    plugin = acc.plugin("balance")
    report = ec.reports.run(db, "daily_totals", start=(T0 - timedelta(days=5)).date().isoformat(), field="balance")
    by_report = dict(zip((str(d) for d in report["cohortDate"].to_list()), report["transactionCount"].to_list(),
                         strict=True))
    assert by_report == dict(per_day)
    for day in sorted(per_day)[:: 5]:
        assert plugin.get_cohort_stats(day)["transactionCount"] == per_day[day]
        assert dataset.query({"cohortDate": day}).height == per_day[day]  # type: ignore[union-attr]
    # The applied rows are the history the values come from.
    assert acc.recalculate(field="balance").changed == 0
    db.consolidate()  # the pending ones apply as the dataset said: once each
    again = root.connect().resources[DATASET].query().select(COLUMNS).sort("id", "timestamp")  # type: ignore[union-attr]
    assert again.drop("applied").equals(python.drop("applied"))
    assert again.filter(pl.col("originalId") != "ghost")["applied"].all()


# -- the key rule, whatever the timing --------------------------------------------------------
def plan(seed: int) -> list[tuple[str, str, str, float, datetime]]:
    """Writes with keys reused for the same record (retries, any timestamp) and for others."""
    rng = random.Random(seed)
    out = []
    for _ in range(160):
        key = f"key{rng.randrange(70)}"
        record = f"r{rng.randrange(12)}"
        op = rng.choice(["add", "add", "sub", "set"])
        out.append((key, record, op, float(rng.randrange(1, 60)), T0 + timedelta(minutes=rng.randrange(3000))))
        if rng.random() < 0.3:  # an exact retry, written later with another timestamp
            out.append((key, record, op, out[-1][3], T0 + timedelta(minutes=rng.randrange(3000))))
    return out


def model(writes: list[tuple[str, str, str, float, datetime]]) -> dict[str, float]:
    """The rule in plain Python: per key the earliest occurrence by (timestamp, record, operation,
    value) counts; then each record folds its transactions in (timestamp, id) order."""
    first: dict[str, tuple[datetime, str, str, float]] = {}
    for key, record, op, value, ts in writes:
        cand = (ts, record, op, value)
        if key not in first or cand < first[key]:
            first[key] = cand
    out: dict[str, float] = {}
    for _key, (_ts, record, op, value) in sorted(first.items(), key=lambda kv: (kv[1][0], kv[0])):
        cur = out.get(record, 0.0)
        out[record] = value if op == "set" else cur + value if op == "add" else cur - value
    return out


@pytest.mark.parametrize("path", ["memory", "spilled"])
def test_a_key_means_one_thing_whatever_the_timing(root: Root, path: str) -> None:
    """The same writes, consolidated at different random moments (all at once, after each write,
    at random), give the model's values: a key counts once, the earliest occurrence wins, and a
    reuse for another record, operation or amount is reported, never applied. The exception the
    rule documents (an earlier-dated occurrence arriving after its key was applied) is avoided
    here by writing each key's occurrences in timestamp order."""
    writes = plan(3)
    ordered = sorted(writes, key=lambda w: (w[0], w[4], w[1], w[2], w[3]))
    by_key: dict[str, list[Any]] = {}
    for w in ordered:
        by_key.setdefault(w[0], []).append(w)
    rng = random.Random(9)
    sequence = []  # interleave keys, keeping each key's occurrences in timestamp order
    queues = [list(v) for v in by_key.values()]
    while queues:
        q = rng.choice(queues)
        sequence.append(q.pop(0))
        if not q:
            queues.remove(q)
    results = []
    for timing in ("once", "every", "random"):
        db, acc = open_db(Root(root.kind, f"{root.uri}-{timing}", endpoint_url=root.endpoint_url))
        acc.insert_many([{"id": f"r{i}", "owner": "o"} for i in range(12)])
        if path == "spilled":
            acc.plugin("balance").consolidator.budget_rows = 16
        conflicts = 0
        for key, record, op, value, ts in sequence:
            getattr(acc, op)(record, "balance", value, id=key, timestamp=ts)
            if timing == "every" or (timing == "random" and rng.random() < 0.2):
                conflicts += sum(r.conflicts.height for r in db.consolidate() if r.conflicts is not None)
        conflicts += sum(r.conflicts.height for r in db.consolidate() if r.conflicts is not None)
        table = acc.to_polars().select("id", "balance").sort("id")
        results.append((table, conflicts))
    want = model(writes)
    expected_conflicts = sum(1 for w in writes if (w[4], w[1], w[2], w[3]) != min(
        (x[4], x[1], x[2], x[3]) for x in by_key[w[0]]) and (w[1], w[2], w[3]) != min(
        (x[4], x[1], x[2], x[3]) for x in by_key[w[0]])[1:])
    for table, conflicts in results:
        assert table.equals(results[0][0])
        assert {k: v for k, v in zip(table["id"], table["balance"], strict=True) if k in want} == want
        assert conflicts == expected_conflicts


def test_a_key_reused_after_the_dedup_window_counts_again_for_every_reader(root: Root) -> None:
    """``dedup_window=0`` (keys forgotten at the next checkpoint, one per commit here): a key sent
    again after it was forgotten is a second transaction. Consolidation counts it, and so do the
    Python dataset, the SQL view, cohort stats, the reconciliation report and recalculate."""
    db, acc = open_db(root, dedup_window=0, checkpoint_interval=1)
    acc.insert({"id": "r1", "owner": "o"})
    acc.add("r1", "balance", 5, id="k")
    db.consolidate()
    acc.add("r1", "balance", 1)
    db.consolidate()  # a checkpoint after the window: k is forgotten
    acc.add("r1", "balance", 5, id="k")
    assert db.consolidate()[0].duplicates == 0
    assert acc.get("r1")["balance"] == 11
    rows = db.resources[DATASET].query().select("id", "value", "applied")  # type: ignore[union-attr]
    sql = db.sql(f"SELECT id, value, applied FROM {DATASET}").pl()
    assert sorted(rows.filter(pl.col("id") == "k")["value"].to_list()) == [5.0, 5.0] and rows["applied"].all()
    assert rows.sort(rows.columns).equals(sql.sort(sql.columns))
    day = rows.height and db.sql(f"SELECT min(cohortDate) FROM {DATASET}").fetchall()[0][0]
    assert acc.plugin("balance").get_cohort_stats(day)["totalValue"] == 11
    assert ec.reports.run(db, "reconciliation").height == 0
    assert acc.recalculate(field="balance").changed == 0


def test_a_sync_write_whose_key_conflicts_says_so(root: Root) -> None:
    """In sync mode a reused key with another record, operation or amount raises KeyConflictError
    (stored, never applied; the reason says what differs); a retry returns the value as before."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", mode="sync"))
    acc = db.create_resource("acc", {"id": "string|required", "balance": "number|default:0"})
    assert acc.add("r1", 5, id="k") == 5
    assert acc.add("r1", 5, id="k") == 5  # a retry
    for call, reason in [(lambda: acc.add("r1", 7, id="k"), "exists_with_different_amount"),
                         (lambda: acc.add("r2", 5, id="k"), "exists_with_different_record"),
                         (lambda: acc.sub("r1", 5, id="k"), "exists_with_different_operation")]:
        with pytest.raises(ec.KeyConflictError, match="Send a new id") as info:
            call()
        assert info.value.reason == reason
    assert acc.get("r1")["balance"] == 5 and acc.value("r2") == 0
    assert acc.add("r1", 1, id="k2") == 6
    health = acc.plugin("balance").inspect()
    assert health["conflicts"] == 3
    assert [(c["originalId"], c["operation"], c["reason"]) for c in health["latestConflicts"]] == [
        ("r1", "add", "exists_with_different_amount"), ("r2", "add", "exists_with_different_record"),
        ("r1", "sub", "exists_with_different_operation")]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_key_held_on_a_record_awaiting_its_insert_stands_in_both_modes(root: Root, mode: str) -> None:
    """A held row (its record awaits an insert) stands like an applied occurrence of its key: a
    reuse of the key for an existing record is a conflict in sync mode as in async mode, and a
    retry of the held write is held (not mistaken for that conflict)."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", mode=mode, auto_consolidate=False))
    acc = db.create_resource("acc", SPEC)
    acc.insert({"id": "a", "owner": "o"})
    t = datetime.now(UTC) - timedelta(hours=1)
    writes = [lambda: acc.add("missing", 309, id="k0", timestamp=t),
              lambda: acc.sub("a", 299, id="k0", timestamp=t),
              lambda: acc.add("missing", 309, id="k0", timestamp=t),  # the held write, retried
              lambda: acc.add("missing", 309, id="k0")]  # retried again later: a new timestamp
    expected: list[type[Exception] | None] = ([ec.TransactionHeldError, ec.KeyConflictError, ec.TransactionHeldError,
                                               ec.TransactionHeldError] if mode == "sync" else [None] * 4)
    for write, error in zip(writes, expected, strict=True):
        if error is None:
            write()
        else:
            with pytest.raises(error):
                write()
        if mode == "async":
            db.consolidate()
    assert acc.get("a")["balance"] == 0
    acc.insert({"id": "missing", "owner": "o"})
    db.consolidate()
    assert (acc.get("missing")["balance"], acc.get("a")["balance"]) == (309, 0)
    rows = db.sql(f"SELECT id, originalId, value, applied FROM {DATASET}").pl()
    assert rows.rows() == [("k0", "missing", 309.0, True)]
    assert acc.recalculate(field="balance").changed == 0


def test_a_key_whose_row_had_no_effect_before_a_delete_cut_is_used(root: Root) -> None:
    """A keyed row dated before a delete-mode retention cut has no effect, but its key is used: a
    retry of it later, dated after the cut, is a retry (counts once: never)."""
    db, acc = open_db(root)
    acc.insert({"id": "r1", "owner": "o"})
    now = datetime.now(UTC)
    acc.add("r1", "balance", 10, timestamp=now - timedelta(days=40))
    db.consolidate()
    acc.gc(30, archive=False)
    acc.add("r1", "balance", 388, id="k15", timestamp=now - timedelta(days=35))  # no effect
    db.consolidate()
    acc.add("r1", "balance", 388, id="k15", timestamp=now - timedelta(days=5))  # the same transaction again
    result = db.consolidate()[0]
    assert (result.duplicates, acc.get("r1")["balance"]) == (1, 10)
    assert db.resources[DATASET].query().filter(pl.col("id") == "k15").height == 1  # type: ignore[union-attr]
    assert acc.recalculate(field="balance").changed == 0 and ec.reports.run(db, "reconciliation").height == 0
