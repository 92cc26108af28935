"""SQL on a big day: ecanalytics' cohort stats and the ``daily_totals`` report against the same SQL
run by plain DuckDB on the same Parquet objects.

Writes ``--n`` applied transactions on one cohort day (generated ids, objects of 100k rows, as
``bench/consolidate.py`` does) plus an idempotent retry (one keyed write written twice, which
must count once), consolidates, then times each query in a fresh process, side by side:

* ``plain duckdb``: ``duckdb.connect()`` and the cohort-stats SQL over ``read_parquet`` of the
  day's objects (it counts the retry twice: plain DuckDB knows no key rule); then a new
  connection and the report SQL. Each side opens DuckDB inside its timing, once per query, as
  ecanalytics does (its engine opens on the first query);
* ``get_cohort_stats``: ``ec.connect`` then ``plugin.get_cohort_stats(day)`` (the connect and the
  import of DuckDB are not timed: they are the CLI's and the notebook's start-up, as the plain
  child's ``import duckdb`` is);
* ``daily_totals``: ``ec.reports.run(db, "daily_totals", ...)`` (what ``ecanalytics sql run
  daily_totals`` runs, minus the CLI's start-up) against the same report SQL by plain DuckDB.

Prints seconds and the ratio to plain DuckDB. Usage: ``python bench/sql_day.py [--n 1e7]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime

DAY = "2026-11-27"
STATS_SQL = """SELECT count(*), count(*) FILTER (operation = 'set'), count(*) FILTER (operation = 'add'),
       count(*) FILTER (operation = 'sub'), sum(CASE WHEN operation = 'sub' THEN -value ELSE value END)
FROM {source} WHERE cohortDate = DATE '{day}'"""
REPORT_SQL = """SELECT cohortDate, count(*) AS transactionCount, count(*) FILTER (operation = 'set') AS setCount,
       count(*) FILTER (operation = 'add') AS addCount, count(*) FILTER (operation = 'sub') AS subCount,
       sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) AS totalValue, count(DISTINCT originalId) AS recordCount
FROM {source} WHERE cohortDate >= DATE '{day}' GROUP BY cohortDate ORDER BY cohortDate"""


def generate(root: str, n: int) -> None:
    import polars as pl

    import ecanalytics as ec
    from ecanalytics.ledger.transactions import write_transactions

    db = ec.connect(root)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    start = int(datetime(2026, 11, 27, 3, tzinfo=UTC).timestamp() * 1e6)
    for offset in range(0, n, 100_000):
        m = min(100_000, n - offset)
        rnd = (pl.col("i") * 2654435761) % 1_000_000_007
        frame = pl.DataFrame({"i": pl.int_range(offset, offset + m, eager=True)}).select(
            id=pl.format("auto-{}", pl.col("i").cast(pl.String).str.zfill(20)),
            originalId=pl.format("acc-{}", (rnd % 100_000).cast(pl.String)), field=pl.lit("balance"),
            value=((rnd * 7) % 1000).cast(pl.Float64),
            operation=pl.when(rnd % 20 == 0).then(pl.lit("set")).when(rnd % 20 < 7).then(pl.lit("sub")).otherwise(pl.lit("add")),
            timestamp=(start + (rnd * 3600_000_000 // 1_000_000_007)).cast(pl.Datetime("us", "UTC")),
            source=pl.lit("bench"))
        write_transactions(db.store, "wallets_transactions_balance", "UTC", frame)
    for _ in range(2):  # a client retry: the same key twice, counted once
        wallets.add("acc-1", 5, id="retry-1", timestamp=datetime(2026, 11, 27, 5, tzinfo=UTC))
    db.consolidate()
    db.close()


def child(code: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, default=1e7)
    args = parser.parse_args()
    root = tempfile.mkdtemp(prefix="ec-sqlday-") + "/root"
    generate(root, int(args.n))
    source = f"read_parquet('{root}/wallets_transactions_balance/**/*.parquet', hive_partitioning = true)"
    # Each side opens its DuckDB connection inside the timing, as each query does in a fresh
    # process: ecanalytics opens its engine on the first query (and again after the reconnect
    # before the report), so plain DuckDB connects afresh for each query too. The first
    # connection of a process costs about 40 ms; "connect" reports it.
    plain = f"""
        import duckdb, json, time
        t = time.perf_counter(); con = duckdb.connect(); c = time.perf_counter() - t
        stats = con.sql({STATS_SQL.format(source=source, day=DAY)!r}).fetchall()
        s = time.perf_counter() - t
        t = time.perf_counter(); con = duckdb.connect()
        report = con.sql({REPORT_SQL.format(source=source, day=DAY)!r}).fetchall()
        print(json.dumps({{"stats": s, "report": time.perf_counter() - t, "count": stats[0][0], "connect": c}}))
    """
    ours = f"""
        import ecanalytics as ec, json, time
        import ecanalytics.analytics, pyarrow  # DuckDB and Arrow: start-up, as the plain child's import is
        db = ec.connect({root!r}, create=False)
        plugin = db.resources["wallets"].plugins["balance"]
        t = time.perf_counter(); stats = plugin.get_cohort_stats({DAY!r}); s = time.perf_counter() - t
        db.close(); db = ec.connect({root!r}, create=False)
        t = time.perf_counter(); report = ec.reports.run(db, "daily_totals", start={DAY!r})
        print(json.dumps({{"stats": s, "report": time.perf_counter() - t, "count": stats["transactionCount"],
                           "reportCount": int(report["transactionCount"][0])}}))
    """
    try:
        base, got = child(plain), child(ours)
    finally:
        shutil.rmtree(root.rsplit("/", 1)[0], ignore_errors=True)
    n = int(args.n)
    assert got["count"] == got["reportCount"] == n + 1, got  # the retry counts once
    assert base["count"] == n + 2  # plain DuckDB counts it twice
    print(f"{n:,} applied transactions on {DAY} (and a retried keyed write), each engine in a fresh process")
    print(f"{'query':<34}{'plain duckdb s':>16}{'ecanalytics s':>16}{'ratio':>8}")
    for name, key in (("get_cohort_stats(day)", "stats"), ("daily_totals report", "report")):
        print(f"{name:<34}{base[key]:>16.3f}{got[key]:>16.3f}{got[key] / base[key]:>8.2f}")
    print(f"(both include opening DuckDB; the first duckdb.connect() of the plain process took {base['connect']:.3f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
