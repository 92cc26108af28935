"""DuckDB views, cohort stats and rollups, SQL reports: checked against an independent Python
computation from the transactions the test wrote."""

from __future__ import annotations

import collections
import datetime as dt
import json
import subprocess
import sys
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cli
from tests.conftest import Root

TZ = "America/New_York"
UTC = dt.UTC


def signed(op: str, v: float) -> float:
    return -v if op == "sub" else v


def build(root: Root, n: int = 120, *, consolidate_some: bool = True) -> tuple[ec.Database, ec.EventualConsistencyPlugin, list[dict[str, Any]]]:
    """Deterministic traffic over Nov 1-14 2026 (DST ends Nov 1 in New York), mostly batched."""
    db = root.connect()
    plugin = db.use_plugin(ec.EventualConsistencyPlugin(
        resource="wallets", field="balance", auto_consolidate=False, cohort={"timezone": TZ},
        batch_transactions=True, batch_size=25, flush_interval=3600))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    written = []
    start = dt.datetime(2026, 11, 1, 2, tzinfo=UTC)
    for i in range(n):
        op = ("add", "add", "sub", "set", "add")[i % 5]
        row = {"record": f"w{(i * 7) % 6}", "op": op, "value": float((i * 13) % 50 + 1),
               "ts": start + dt.timedelta(minutes=163 * i)}
        getattr(wallets, op)(row["record"], row["value"], timestamp=row["ts"])
        written.append(row)
        if consolidate_some and i == n // 2:
            db.consolidate()
    db.flush()
    return db, plugin, written


def local(row: dict[str, Any]) -> dt.datetime:
    ts: dt.datetime = row["ts"]
    return ts.astimezone(ZoneInfo(TZ))


def key(period: str, row: dict[str, Any]) -> str:
    t = local(row)
    return {"hour": t.strftime("%Y-%m-%dT%H"), "day": t.date().isoformat(),
            "week": f"{t.isocalendar()[0]}-W{t.isocalendar()[1]:02d}", "month": t.strftime("%Y-%m")}[period]


def test_views_match_the_written_transactions(root: Root) -> None:
    db, _plugin, written = build(root)
    got = db.sql("SELECT originalId, operation, value, timestamp, cohortDate, cohortMonth, applied "
                 "FROM wallets_transactions_balance ORDER BY timestamp").pl()
    assert got.height == len(written)
    assert got["originalId"].to_list() == [r["record"] for r in written]
    assert got["value"].to_list() == [r["value"] for r in written]
    assert got["cohortDate"].to_list() == [local(r).date() for r in written]
    assert got["cohortMonth"].to_list() == [local(r).strftime("%Y-%m") for r in written]
    # the first half (up to the mid-run consolidation) is applied, the rest pending
    applied = got["applied"].to_list()
    assert applied == [i <= len(written) // 2 for i in range(len(written))]
    records = db.sql("SELECT * FROM wallets ORDER BY id").pl()
    assert records.equals(db.resources["wallets"].to_polars())  # type: ignore[union-attr]
    assert isinstance(db.duckdb().sql("SELECT 1").fetchall(), list)


def test_cohort_stats(root: Root) -> None:
    _db, plugin, written = build(root)
    for day in ("2026-11-01", "2026-11-02", "2026-11-09", "2026-12-01"):
        rows = [r for r in written if key("day", r) == day]
        expected = {
            "date": day, "transactionCount": len(rows),
            "byOperation": {op: sum(r["op"] == op for r in rows) for op in ("set", "add", "sub")},
            "totalValue": sum(signed(r["op"], r["value"]) for r in rows),
        }
        assert plugin.get_cohort_stats(day) == expected
    assert plugin.get_cohort_stats(dt.date(2026, 11, 2))["transactionCount"] == sum(key("day", r) == "2026-11-02" for r in written)


@pytest.mark.parametrize("period", ["hour", "day", "week", "month"])
def test_analytics_rollups(root: Root, period: str) -> None:
    _db, plugin, written = build(root)
    start, end = dt.datetime(2026, 11, 1, 0, tzinfo=ZoneInfo(TZ)), dt.datetime(2026, 11, 6, 12, tzinfo=ZoneInfo(TZ))
    lo_key, hi_key = key(period, {"ts": start}), key(period, {"ts": end})
    groups: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for r in written:
        if lo_key <= key(period, r) <= hi_key:
            groups[key(period, r)].append(r)
    got = plugin.get_analytics(period, start, end)
    assert got["cohort"].to_list() == sorted(groups)
    for row in got.iter_rows(named=True):
        rs = groups[row["cohort"]]
        values = [signed(r["op"], r["value"]) for r in rs]
        assert row["transactionCount"] == len(rs)
        assert row["totalValue"] == pytest.approx(sum(values))
        assert row["avgValue"] == pytest.approx(sum(values) / len(values))
        assert (row["minValue"], row["maxValue"]) == (min(values), max(values))
        assert row["recordCount"] == len({r["record"] for r in rs})
        for op in ("set", "add", "sub"):
            assert row[f"{op}Count"] == sum(r["op"] == op for r in rs)
            assert row[f"{op}Sum"] == pytest.approx(sum(signed(op, r["value"]) for r in rs if r["op"] == op))
    filled = plugin.get_analytics(period, start, end, fill_gaps=True)
    assert filled.height >= got.height
    assert filled.filter(pl.col("transactionCount") > 0).drop("avgValue", "minValue", "maxValue").equals(
        got.drop("avgValue", "minValue", "maxValue"))
    assert filled.filter(pl.col("transactionCount") == 0)["totalValue"].to_list() == [0.0] * (filled.height - got.height)
    w2 = plugin.get_analytics(period, start, end, record_id="w2")
    assert w2["transactionCount"].sum() == sum(len([r for r in rs if r["record"] == "w2"]) for rs in groups.values())


def test_gap_filling_keys() -> None:
    from ecanalytics.analytics.cohorts import keys_between, shift

    assert keys_between("week", "2026-W52", "2027-W02", TZ) == ["2026-W52", "2026-W53", "2027-W01", "2027-W02"]
    assert keys_between("month", "2026-11", "2027-02", TZ) == ["2026-11", "2026-12", "2027-01", "2027-02"]
    hours = keys_between("hour", "2026-11-01T00", "2026-11-01T23", TZ)
    assert len(hours) == 24 and hours[1] == "2026-11-01T01" and hours[2] == "2026-11-01T02"  # 01 repeats once
    assert len(keys_between("hour", "2026-03-08T00", "2026-03-08T23", TZ)) == 23  # 02:00 does not exist
    assert shift("month", "2026-01", -2, TZ) == "2025-11" and shift("week", "2027-W01", -1, TZ) == "2026-W53"


def test_top_records_and_last_n(root: Root) -> None:
    db, plugin, written = build(root)
    rows = [r for r in written if key("week", r) == "2026-W45"]
    counts = collections.Counter(r["record"] for r in rows)
    totals: dict[str, float] = collections.defaultdict(float)
    for r in rows:
        totals[r["record"]] += signed(r["op"], r["value"])
    top = plugin.get_top_records("week", "2026-11-03", limit=3)
    expected = sorted(counts, key=lambda rid: (-counts[rid], rid))[:3]
    assert top["originalId"].to_list() == expected
    assert top["transactionCount"].to_list() == [counts[r] for r in expected]
    by_value = plugin.get_top_records("week", "2026-W45", metric="totalValue", limit=2)
    assert by_value["originalId"].to_list() == sorted(totals, key=lambda rid: (-totals[rid], rid))[:2]
    with pytest.raises(ec.ValidationError):
        plugin.get_top_records("fortnight", "2026-11-03")
    with pytest.raises(ec.ValidationError):
        plugin.get_top_records("day", "2026-11-03", metric="bogus")

    wallets = db.resources["wallets"]
    now = dt.datetime.now(UTC)
    for days_ago, amount in ((0, 5.0), (2, 7.0), (2, 1.0)):
        wallets.add("recent", amount, timestamp=now - dt.timedelta(days=days_ago))  # type: ignore[union-attr]
    db.flush()
    last = plugin.get_last_n("day", 3)
    today = now.astimezone(ZoneInfo(TZ)).date()
    assert last["cohort"].to_list() == [(today - dt.timedelta(days=d)).isoformat() for d in (2, 1, 0)]
    assert last["totalValue"].to_list() == [8.0, 0.0, 5.0]
    assert plugin.get_last_n("day", 3, fill_gaps=False)["cohort"].to_list() == [last["cohort"][0], last["cohort"][2]]


def test_reports(root: Root) -> None:
    db, _plugin, written = build(root)
    assert set(ec.reports.names()) >= {"daily_totals", "monthly_totals", "top_records", "pending_backlog", "reconciliation"}
    daily = ec.reports.run(db, "daily_totals", start="2026-11-02", end="2026-11-05")
    per_day = collections.Counter(key("day", r) for r in written if "2026-11-02" <= key("day", r) <= "2026-11-05")
    assert {str(d): n for d, n in daily.select("cohortDate", "transactionCount").iter_rows()} == dict(per_day)
    monthly = ec.reports.run(db, "monthly_totals", start_month="2026-11", end_month="2026-11")
    assert monthly["totalValue"].to_list() == [pytest.approx(sum(signed(r["op"], r["value"]) for r in written if key("month", r) == "2026-11"))]
    top = ec.reports.run(db, "top_records", start="2026-11-01", end="2026-11-30", limit=2)
    counts = collections.Counter(r["record"] for r in written if key("month", r) == "2026-11")
    assert top["transactionCount"].to_list() == sorted(counts.values(), reverse=True)[:2]

    backlog = ec.reports.run(db, "pending_backlog")
    pending_rows = [r for i, r in enumerate(written) if i > len(written) // 2]
    assert backlog.select("resource", "field", "pending", "recordCount").rows() == [
        ("wallets", "balance", len(pending_rows), len({r["record"] for r in pending_rows}))]
    assert backlog["oldestEventAt"][0] == min(r["ts"] for r in pending_rows)
    # The age is by write time (just now), not by event time (the backfilled November days).
    assert 0 <= backlog["ageSeconds"][0] < 600 < backlog["eventAgeSeconds"][0]
    health = _plugin.inspect()
    assert health["oldestEventAt"] == backlog["oldestEventAt"][0] and 0 <= health["ageSeconds"] < 600
    assert abs((health["oldestWrittenAt"] - backlog["oldestWrittenAt"][0]).total_seconds()) < 1e-3

    db.consolidate()
    assert ec.reports.run(db, "reconciliation").height == 0
    assert ec.reports.run(db, "pending_backlog")["pending"].to_list() == [0]
    # Corrupt one value behind the ledger's back: reconciliation must list exactly that record.
    from ecanalytics.ledger import Commit

    wallets = db.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    wallets.ledger.commit(lambda st: Commit("update", upserts=st.records.filter(pl.col("id") == "w3").with_columns(balance=pl.lit(-1.0))))
    diff = ec.reports.run(db, "reconciliation")
    assert diff["id"].to_list() == ["w3"] and diff["consolidated"].to_list() == [-1.0]
    with pytest.raises(ec.ValidationError, match="needs parameter 'start'"):
        ec.reports.run(db, "daily_totals", end="2026-11-05")
    with pytest.raises(ec.ValidationError, match="no parameter"):
        ec.reports.run(db, "pending_backlog", bogus=1)
    with pytest.raises(ec.ValidationError, match="No report"):
        ec.reports.run(db, "nope")


@pytest.mark.s3
def test_one_day_query_reads_only_that_days_objects(s3_root: Root) -> None:
    db, plugin, written = build(s3_root, n=200, consolidate_some=False)
    objects = db.store.find("wallets_transactions_balance", ".parquet")
    day = "2026-11-09"
    day_objects = {k.rsplit("/", 1)[-1] for k in objects if f"cohortDate={day}/" in k}
    assert day_objects and len(day_objects) < len(objects) / 5
    opened: list[str] = []
    fs = db._engine().filesystem  # the filesystem DuckDB reads through
    assert fs is not None
    original_open = fs._open

    def counting_open(path: str, *args: Any, **kwargs: Any) -> Any:
        opened.append(path.rsplit("/", 1)[-1])
        return original_open(path, *args, **kwargs)

    fs._open = counting_open
    got = db.sql(f"SELECT count(*) AS n FROM wallets_transactions_balance WHERE cohortDate = DATE '{day}'").fetchall()
    assert got == [(sum(key("day", r) == day for r in written),)]
    others = set(opened) - day_objects
    assert len(others) <= 1, f"read {len(others)} objects outside the partition"  # at most one, for the schema
    assert day_objects <= set(opened)
    opened.clear()
    stats = plugin.get_cohort_stats(day)
    assert stats["transactionCount"] == got[0][0]
    assert len(set(opened) - day_objects) <= 1


def test_cli_sql_commands(root: Root) -> None:
    db, _plugin, written = build(root)
    db.close()
    env = {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}
    runner = CliRunner()
    res = runner.invoke(cli, ["sql", "run", "daily_totals", "--root", root.uri, "-p", "start=2026-11-01",
                              "-p", "end=2026-11-30", "--output", "json"], env=env)
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]  # JSON Lines: one object per row
    assert sum(r["transactionCount"] for r in rows) == sum(key("month", r) == "2026-11" for r in written)
    res = runner.invoke(cli, ["sql", "run", "monthly_totals", "--root", root.uri, "-p", "start_month=2026-11",
                              "-p", "end_month=2026-12", "--output", "csv"], env=env)
    assert res.exit_code == 0 and res.output.splitlines()[0].startswith("resource,field,cohortMonth")
    res = runner.invoke(cli, ["sql", "shell", "--root", root.uri], env=env,
                        input=".tables\nSELECT count(*) AS n\n FROM wallets_transactions_balance;\nSELECT broken;\n.quit\n")
    assert res.exit_code == 1  # a script stops at its failing statement, with exit code 1
    assert "wallets_transactions_balance" in res.output and f"│ {len(written)} │" in res.output
    res = runner.invoke(cli, ["sql", "list"])
    assert res.exit_code == 0 and "reconciliation(" in res.output


def test_import_does_not_load_duckdb() -> None:
    code = "import sys, ecanalytics; ecanalytics.connect('memory://x'); assert 'duckdb' not in sys.modules; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "ok"


def test_duckdb_s3_path_selection() -> None:
    """httpfs cannot be installed offline, so this checks the selection logic and the secret it
    would create; the fsspec path is exercised end to end by every S3 test above."""
    import duckdb

    from ecanalytics.analytics.engine import choose_s3_path, httpfs_secret_sql
    from ecanalytics.storage import StorageConfig

    cfg = StorageConfig.from_uri("s3://bkt/p", endpoint_url="http://127.0.0.1:9000", key="AK", secret="SK")
    con = duckdb.connect()
    assert choose_s3_path(con, StorageConfig.from_uri("/tmp/x"), None) == "local"
    assert choose_s3_path(con, StorageConfig.from_uri("memory://x"), "httpfs") == "fsspec"
    assert choose_s3_path(con, cfg, "fsspec") == "fsspec"
    assert choose_s3_path(con, cfg, "auto") == "fsspec"  # LOAD httpfs fails here: fall back, download nothing
    with pytest.raises(ec.ConfigurationError, match="not installed"):
        choose_s3_path(con, cfg, "httpfs")
    with pytest.raises(ec.ConfigurationError):
        choose_s3_path(con, cfg, "ftp")
    sql = httpfs_secret_sql(cfg)
    assert "ENDPOINT '127.0.0.1:9000'" in sql and "URL_STYLE 'path'" in sql and "USE_SSL false" in sql
    assert "KEY_ID 'AK'" in sql and "SECRET 'SK'" in sql


def test_report_end_is_optional(root: Root) -> None:
    db, _plugin, written = build(root)
    open_ended = ec.reports.run(db, "daily_totals", start="2026-11-05")
    assert open_ended["transactionCount"].sum() == sum(key("day", r) >= "2026-11-05" for r in written)
    assert ec.reports.run(db, "monthly_totals", start_month="2026-11")["transactionCount"].sum() == sum(
        key("month", r) >= "2026-11" for r in written)  # 02:00 UTC on Nov 1 is still October in New York
    res = CliRunner().invoke(cli, ["sql", "run", "daily_totals", "--root", root.uri, "--param", "start=2026-11-05",
                                   "--output", "json"], env={"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {})
    assert res.exit_code == 0, res.output
    assert sum(json.loads(line)["transactionCount"] for line in res.output.splitlines()) == open_ended["transactionCount"].sum()


def test_one_vocabulary(root: Root) -> None:
    """The get_* results and the SQL reports name the same things the same way (camelCase)."""
    db, plugin, _written = build(root)
    top = plugin.get_top_records("month", "2026-11", limit=6)
    report = ec.reports.run(db, "top_records", start="2026-11-01", end="2026-11-30", limit=6)
    assert top.columns == ["originalId", "transactionCount", "totalValue"]
    assert report.columns == ["resource", "field", *top.columns]
    assert sorted(top.rows()) == sorted(report.drop("resource", "field").rows())  # ties may order differently
    rollup = plugin.get_analytics("month", "2026-11", "2026-11")
    monthly = ec.reports.run(db, "monthly_totals", start_month="2026-11", end_month="2026-11")
    shared = ["transactionCount", "setCount", "addCount", "subCount", "totalValue", "recordCount"]
    assert set(shared) <= set(rollup.columns) and set(shared) <= set(monthly.columns)
    assert rollup.select(shared).rows() == [pytest.approx(r) for r in monthly.select(shared).rows()]
    stats = plugin.get_cohort_stats("2026-11-03")
    daily = ec.reports.run(db, "daily_totals", start="2026-11-03", end="2026-11-03").row(0, named=True)
    assert (stats["transactionCount"], stats["totalValue"]) == (daily["transactionCount"], pytest.approx(daily["totalValue"]))
    names = [c for name in ec.reports.names() for c in ec.reports.run(db, name, **(
        {"start": "2026-11-01"} if "start" in {p.name for p in ec.reports.get(name).params} else
        {"start_month": "2026-11"} if "start_month" in {p.name for p in ec.reports.get(name).params} else {})).columns]
    assert all("_" not in c and c[0].islower() for c in names), names


def test_an_idempotent_retry_counts_once_in_analytics(root: Root) -> None:
    """Three writes with one idempotency key are one transaction, for the fold and for SQL alike."""
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="bal", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "bal": "number|default:0"})
    when = dt.datetime(2026, 11, 20, 12, tzinfo=dt.UTC)
    for _ in range(3):
        w.add("a", 10, id="pay-1", timestamp=when)
    w.add("a", 1, timestamp=when)
    for step in ("pending", "applied"):
        stats = w.plugin().get_cohort_stats("2026-11-20")
        assert (stats["transactionCount"], stats["totalValue"]) == (2, 11.0), step
        assert db.sql("SELECT count(*), sum(value) FROM w_transactions_bal").fetchall() == [(2, 11.0)], step
        db.consolidate()
    assert w.get("a")["bal"] == 11
