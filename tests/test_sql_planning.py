"""The SQL engine plans only what a query names: a query of one resource reads no state of another."""

from __future__ import annotations

from typing import Any

import ecanalytics as ec
from tests.conftest import Root


def two_resources(root: Root) -> ec.Database:
    db = root.connect()
    for name in ("alpha", "beta"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource=name, field="balance", auto_consolidate=False))
        res = db.create_resource(name, {"id": "string|required", "balance": "number|default:0"})
        for i in range(5):
            res.add(f"r{i}", i + 1)
        db.consolidate(name)
        res.add("r0", 100)  # pending
    db.close()
    return root.connect()


def touched(db: ec.Database) -> list[str]:
    """Record every key the store reads or lists."""
    seen: list[str] = []
    store = db.store
    for name in ("read", "read_many", "find", "listdir", "listdir_times", "listdir_sizes", "exists", "size"):
        real = getattr(store, name)

        def wrapper(arg: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            seen.extend([arg] if isinstance(arg, str) else list(arg))
            return _real(arg, *args, **kwargs)

        setattr(store, name, wrapper)
    return seen


def test_a_query_of_one_resource_reads_no_state_of_another(root: Root) -> None:
    db = two_resources(root)
    seen = touched(db)
    got = db.sql("SELECT count(*), sum(value) FROM alpha_transactions_balance").fetchall()
    assert got == [(6, 115.0)]
    assert seen and not [k for k in seen if k.startswith("beta")], seen
    seen.clear()
    assert db.sql("SELECT sum(balance) FROM beta").fetchall() == [(15.0,)]
    assert not [k for k in seen if k.startswith("alpha")], seen
    seen.clear()
    assert db.resources["beta"].plugins["balance"].get_cohort_stats(  # type: ignore[union-attr]
        ec.reports.run(db, "daily_totals", start="2020-01-01")["cohortDate"][0])["transactionCount"] == 6
    # A query of the ec_* views spans every resource, so it reads both.
    seen.clear()
    assert db.sql("SELECT count(*) FROM ec_transactions").fetchall() == [(12,)]
    assert [k for k in seen if k.startswith("alpha")] and [k for k in seen if k.startswith("beta")]


def test_reports_over_the_transactions_load_no_records(root: Root, monkeypatch: Any) -> None:
    """``daily_totals`` reads ``ec_transactions`` only: no resource's records (every bucket of its
    state) are loaded for it; ``ec_values`` and a resource's table load them."""
    from ecanalytics.ledger.state import State

    loads: list[int] = []
    real = State.records

    def counting(self: State) -> Any:
        loads.append(1)
        return real.fget(self)  # type: ignore[attr-defined]

    db = two_resources(root)
    monkeypatch.setattr(State, "records", property(counting))
    totals = ec.reports.run(db, "daily_totals", start="2020-01-01")
    assert sorted(totals["transactionCount"].to_list()) == [6, 6]
    assert loads == []
    assert db.sql("SELECT resource, sum(value) FROM ec_values GROUP BY 1 ORDER BY 1").fetchall() == [
        ("alpha", 15.0), ("beta", 15.0)]
    assert len(loads) == 2
    assert db.sql("SELECT sum(balance) FROM alpha").fetchall() == [(15.0,)]


def test_a_kept_relation_still_reads_every_day_after_a_one_day_query(root: Root) -> None:
    """Cohort stats plan one day's objects in a view of their own: a relation built earlier on
    the dataset (DuckDB binds its views again when it runs) still reads every day."""
    import datetime as dt

    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "balance": "number|default:0"})
    for day, amount in ((1, 1.0), (2, 2.0), (2, 4.0), (3, 8.0)):
        w.add("a", amount, timestamp=dt.datetime(2026, 11, day, 12, tzinfo=dt.UTC))
    db.consolidate()
    kept = db.sql("SELECT count(*), sum(value) FROM w_transactions_balance")
    plugin = db.resources["w"].plugins["balance"]
    assert plugin.get_cohort_stats("2026-11-02")["transactionCount"] == 2  # type: ignore[union-attr]
    assert plugin.get_analytics("day", "2026-11-01", "2026-11-01")["transactionCount"].to_list() == [1]  # type: ignore[union-attr]
    assert kept.fetchall() == [(4, 15.0)]


def test_view_sql_does_not_grow_with_history(root: Root) -> None:
    """A dataset view's SQL names no object (the lists live in DuckDB variables), so a history of
    many days gives the same view text as one day, and the view still reads every object."""
    import datetime as dt

    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
    res = db.create_resource("w", {"id": "string|required", "balance": "number|default:0"})
    start = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)

    def write_day(day: int) -> None:
        res.write_transactions([{"originalId": f"r{day % 3}", "value": day + 1.0,
                                 "timestamp": start + dt.timedelta(days=day)}], "balance")

    def view_sql() -> str:
        got = db.sql("SELECT sql FROM duckdb_views() WHERE view_name = 'w_transactions_balance'").fetchall()
        return str(got[0][0])

    write_day(0)
    db.consolidate("w")
    write_day(1)  # one applied object, one pending
    small = view_sql()
    for day in range(2, 40):
        write_day(day)
        if day % 10 == 0:
            db.consolidate("w")
    big = view_sql()
    assert len(big) == len(small), (small, big)
    expected = sum(d + 1.0 for d in range(40))
    assert db.sql("SELECT count(*), sum(value) FROM w_transactions_balance").fetchall() == [(40, expected)]
    assert db.sql("SELECT count(DISTINCT cohortDate) FROM w_transactions_balance WHERE applied").fetchall() == [(31,)]


def test_a_wrong_query_and_a_corrupt_object_get_their_own_errors(root: Root) -> None:
    """A misspelled table or column is DuckDB's own error, never "replaced by maintenance"; an
    object that is not Parquet is a CorruptObjectError naming it, from ``db.sql``, the reports and
    cohort stats of its day alike, and the committed values stay as they were."""
    import duckdb
    import pytest

    db = two_resources(root)
    with pytest.raises(duckdb.CatalogException, match="alpha_transactions_balanc"):
        db.sql("SELECT * FROM alpha_transactions_balanc").fetchall()
    with pytest.raises(duckdb.BinderException, match="nocolumn"):
        db.sql("SELECT nocolumn FROM alpha_transactions_balance").fetchall()
    values = db.sql("SELECT id, value FROM ec_values ORDER BY ALL").fetchall()
    assert values == sorted([(f"r{i}", float(i + 1)) for i in range(5)] * 2)
    applied = db.resources["alpha"].ledger.state().applied_objects("balance")  # type: ignore[union-attr]
    bad = applied[0]
    day = bad.split("cohortDate=", 1)[1][:10]
    plugin = db.resources["alpha"].plugins["balance"]  # type: ignore[union-attr]
    reads = (lambda: db.sql("SELECT count(*) FROM alpha_transactions_balance").fetchall(),
             lambda: ec.reports.run(db, "daily_totals", start=day, end=day, field="balance"),
             lambda: plugin.get_cohort_stats(day))
    db.store.write(bad, b"x" * len(db.store.read(bad)))  # garbage of the same size: DuckDB names the file
    for read in reads:
        with pytest.raises(ec.CorruptObjectError) as info:
            read()
        assert str(info.value).startswith(db.store.url(bad)) and "restore it from a backup." in str(info.value)
    db.store.write(bad, b"not parquet")  # shorter: through fsspec DuckDB reads the size it was told, unnamed
    for read in reads:
        with pytest.raises(ec.CorruptObjectError, match="restore it from a backup"):
            read()
    assert db.resources["alpha"].to_polars().sort("id")["balance"].to_list() == [1.0, 2.0, 3.0, 4.0, 5.0]  # type: ignore[union-attr]
    assert db.sql("SELECT count(*) FROM beta_transactions_balance").fetchall() == [(6,)]  # another dataset still reads
