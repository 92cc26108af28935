"""One-day queries on a big root against the same queries on a tiny one, each in a fresh process.

The big root holds two resources (``wallets`` and ``points``) of ``--records`` records each
(default 10^6) with ``--days`` cohort days of applied history (default 600, ``--per-day``
transactions a day, generated ids) plus a few pending writes; the tiny root holds the same two
resources with 10 records and one day. Each query runs cold, in a fresh process, after
``ec.connect`` (connect and imports are start-up, not timed):

* ``get_cohort_stats(day)`` of ``wallets.balance`` for one day in the middle of the history;
* ``db.sql("SELECT count(*) FROM wallets_transactions_balance WHERE cohortDate = DATE ...")``.

Prints seconds for each root and the ratio big / tiny (issue 18's target: at most 2x), and
checks the counts against what was written. Usage: ``python bench/sql_big_root.py [--records
1e6] [--days 600] [--per-day 500]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, date, datetime, timedelta

FIRST_DAY = date(2025, 4, 1)


def generate(root: str, records: int, days: int, per_day: int) -> str:
    """Write the root; returns the day the queries ask for."""
    import polars as pl

    import ecanalytics as ec

    db = ec.connect(root, checkpoint_interval=10)
    for resource, field in (("wallets", "balance"), ("points", "score")):
        db.use_plugin(ec.EventualConsistencyPlugin(resource=resource, field=field, auto_consolidate=False))
        res = db.create_resource(resource, {"id": "string|required", field: "number|default:0"})
        res.insert_many(pl.DataFrame({"i": pl.int_range(records, eager=True)}).select(id=pl.format("r-{}", "i")))
        n = days * per_day
        i = pl.int_range(n, eager=True)
        start = datetime.combine(FIRST_DAY, datetime.min.time(), UTC)
        frame = pl.DataFrame({"i": i}).select(
            originalId=pl.format("r-{}", (pl.col("i") * 7919) % records),
            value=(pl.col("i") % 97 + 1).cast(pl.Float64),
            operation=pl.when(pl.col("i") % 3 == 0).then(pl.lit("sub")).otherwise(pl.lit("add")),
            timestamp=pl.lit(start) + pl.duration(days=pl.col("i") // per_day, seconds=pl.col("i") % 3600),
        )
        res.write_transactions(frame)
        db.consolidate(resource)
        res.add("r-1", 5)  # pending, as a live system has
    db.close()
    return (FIRST_DAY + timedelta(days=days // 2)).isoformat()


def cold(root: str, day: str) -> dict[str, float]:
    code = f"""
        import ecanalytics as ec, json, time
        import ecanalytics.analytics, duckdb, pyarrow  # start-up
        db = ec.connect({root!r}, create=False)
        plugin = db.resources["wallets"].plugins["balance"]
        t = time.perf_counter(); stats = plugin.get_cohort_stats({day!r}); s = time.perf_counter() - t
        db.close(); db = ec.connect({root!r}, create=False)
        t = time.perf_counter()
        count = db.sql("SELECT count(*) FROM wallets_transactions_balance WHERE cohortDate = DATE '{day}'").fetchall()[0][0]
        print(json.dumps({{"stats": s, "sql": time.perf_counter() - t, "count": stats["transactionCount"],
                           "sqlCount": count}}))
    """
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=float, default=1e6)
    parser.add_argument("--days", type=int, default=600)
    parser.add_argument("--per-day", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3, help="cold runs of each root (the best is kept)")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="ec-bigroot-")
    t = time.perf_counter()
    big_day = generate(f"{base}/big", int(args.records), args.days, args.per_day)
    tiny_day = generate(f"{base}/tiny", 10, 1, args.per_day)
    print(f"wrote the roots in {time.perf_counter() - t:.0f}s: 2 x {int(args.records):,} records, {args.days} days "
          f"of {args.per_day} transactions each; and 2 x 10 records, 1 day")
    try:
        big = [cold(f"{base}/big", big_day) for _ in range(args.runs)]
        tiny = [cold(f"{base}/tiny", tiny_day) for _ in range(args.runs)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for run in big + tiny:
        assert run["count"] == run["sqlCount"] == args.per_day, run
    print(f"{'query (cold, fresh process)':<40}{'tiny root s':>13}{'big root s':>13}{'ratio':>8}")
    for name, key in (("get_cohort_stats(day)", "stats"), ("db.sql one-day count", "sql")):
        b, s = min(r[key] for r in big), min(r[key] for r in tiny)
        print(f"{name:<40}{s:>13.3f}{b:>13.3f}{b / s:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
