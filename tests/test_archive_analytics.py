"""The SQL views read the archive: cohort stats, rollups, ``ec_transactions`` and the reports give
the same numbers after ``gc`` (archive mode), also while a move is unfinished; after a
``delete``-mode ``gc`` the deleted days are gone and the retention base stands for them."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import ecanalytics as ec
from ecanalytics.storage import paths as P
from tests.conftest import Root

NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
OLD = NOW - timedelta(days=90)
# (record, operation, value, timestamp)
WRITES = [
    ("a", "add", 10.0, OLD), ("a", "sub", 3.0, OLD + timedelta(minutes=1)), ("b", "set", 7.0, OLD + timedelta(minutes=2)),
    ("b", "add", 1.5, OLD + timedelta(minutes=3)), ("a", "add", 4.0, NOW), ("b", "sub", 2.0, NOW + timedelta(minutes=1)),
]


def setup(root: Root) -> tuple[ec.Database, ec.Resource, ec.EventualConsistencyPlugin]:
    db = root.connect()
    plugin = db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    w.insert({"id": "a", "balance": 5})
    w.insert({"id": "b", "balance": 1})
    for i, (rid, op, value, ts) in enumerate(WRITES):
        getattr(w, op)(rid, value, id=f"t{i}", timestamp=ts)
    db.consolidate()
    return db, w, plugin


def expected(day: date) -> dict[str, Any]:
    rows = [(op, v) for _r, op, v, ts in WRITES if ts.date() == day]
    return {"date": day.isoformat(), "transactionCount": len(rows),
            "byOperation": {op: sum(o == op for o, _ in rows) for op in ("set", "add", "sub")},
            "totalValue": sum(-v if op == "sub" else v for op, v in rows)}


def numbers(db: ec.Database, plugin: ec.EventualConsistencyPlugin) -> tuple[Any, ...]:
    stats = plugin.get_cohort_stats(OLD.date())
    rollup = plugin.get_analytics("day", OLD.date(), NOW.date())
    old_row = rollup.filter(rollup["cohort"] == OLD.date().isoformat()).to_dicts()
    ((count,),) = db.sql("SELECT count(*) FROM ec_transactions").fetchall()
    return stats, old_row, rollup["transactionCount"].sum(), count


def test_archived_days_are_read_by_default(root: Root) -> None:
    db, w, plugin = setup(root)
    before = numbers(db, plugin)
    stats, old_row, total, count = before
    assert stats == expected(OLD.date())
    assert old_row and old_row[0]["transactionCount"] == 4 and old_row[0]["totalValue"] == 10 - 3 + 7 + 1.5
    assert total == count == len(WRITES)
    assert ec.reports.run(db, "reconciliation").height == 0

    result = w.gc(30)
    assert result.mode == "archive" and result.objects > 0
    assert numbers(db, plugin) == before  # not zeros
    assert plugin.get_cohort_stats(NOW.date()) == expected(NOW.date())
    assert plugin.get_top_records("day", OLD.date())["originalId"].to_list() == ["a", "b"]
    assert ec.reports.run(db, "reconciliation").height == 0
    dataset = plugin.dataset
    ((archived,),) = db.sql(f"SELECT count(*) FROM \"{dataset}\" WHERE cohortDate = DATE '{OLD.date()}'").fetchall()
    assert archived == 4

    # A move in progress. The archive copies are made (and checked) before the commit and the live
    # copies removed after it, so the manifest names exactly one copy of each object at every step:
    # with the live copies still there, each transaction still counts once.
    keys = db.resources["wallets"].ledger.state().retention["balance"].archived
    assert len(keys) > 1
    for key in keys:
        db.store.copy(P.archive_key(key), key)
    assert numbers(db, plugin) == before
    assert ec.reports.run(db, "reconciliation").height == 0
    w.gc(30)  # finishes the move
    assert numbers(db, plugin) == before
    assert not any(db.store.exists(k) for k in keys) and all(db.store.exists(P.archive_key(k)) for k in keys)


def test_deleted_days_are_gone(root: Root) -> None:
    db, w, plugin = setup(root)
    values = w.to_polars()
    result = w.gc(30, archive=False)
    assert result.mode == "delete" and result.objects > 0
    # As the SqlEngine docstring says: the deleted days count zero, the rest is unchanged ...
    assert plugin.get_cohort_stats(OLD.date()) == {**expected(OLD.date()), "transactionCount": 0, "totalValue": 0,
                                                    "byOperation": {"set": 0, "add": 0, "sub": 0}}
    assert plugin.get_cohort_stats(NOW.date()) == expected(NOW.date())
    ((count,),) = db.sql("SELECT count(*) FROM ec_transactions").fetchall()
    assert count == sum(ts.date() == NOW.date() for *_x, ts in WRITES)
    # ... and ec_bases holds the retention base (the old days folded), so reconciliation agrees.
    bases = dict(db.sql("SELECT id, value FROM ec_bases ORDER BY id").fetchall())
    assert bases == {"a": 5 + 10 - 3, "b": 7 + 1.5}
    assert ec.reports.run(db, "reconciliation").height == 0
    assert w.to_polars().equals(values)
