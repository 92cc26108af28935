"""One-day cohort statistics vs. a full scan, on the same S3 store (a local moto server).

Writes ``--days`` days of traffic (``--objects-per-day`` batched objects a day) to S3, then times,
in the same process and over the same objects:

* ``get_cohort_stats(day)``: DuckDB with Hive pruning on ``cohortDate``;
* the same aggregation with no partition filter (a full scan of the dataset);
* the same one-day figures through the Python API (``TransactionDataset.query``).

For each it prints seconds and how many objects were opened (counted on the s3fs filesystem).
Needs the dev extras (moto[server]):  python bench/stats.py [--days 60 --objects-per-day 20]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--objects-per-day", type=int, default=20)
    parser.add_argument("--rows-per-object", type=int, default=200)
    args = parser.parse_args()

    import boto3
    from moto.server import ThreadedMotoServer

    import ecanalytics as ec

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench")
    try:
        db = ec.connect("s3://bench/stats", endpoint_url=endpoint)
        plugin = db.use_plugin(ec.EventualConsistencyPlugin(
            resource="wallets", field="balance", auto_consolidate=False, batch_transactions=True,
            batch_size=args.rows_per_object, flush_interval=3600))
        wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
        start = dt.datetime(2026, 9, 1, 12, tzinfo=dt.UTC)
        t = time.perf_counter()
        for day in range(args.days):
            for obj in range(args.objects_per_day):
                for i in range(args.rows_per_object):
                    ts = start + dt.timedelta(days=day, seconds=obj * 60 + i)
                    wallets.add(f"w{(obj * 31 + i) % 500}", float(i % 7 + 1), timestamp=ts)
        db.flush()
        db.consolidate()  # the usual state: history applied, an empty inbox
        total_objects = args.days * args.objects_per_day
        print(f"wrote {total_objects * args.rows_per_object:,} transactions in {total_objects:,} objects "
              f"over {args.days} days in {time.perf_counter() - t:.1f}s")

        opened: list[str] = []
        db.sql("SELECT 1").fetchall()  # create the views once, outside the timings
        engine_fs = db._engine().filesystem  # the filesystem DuckDB reads through
        assert engine_fs is not None
        original, original_api = engine_fs._open, db.store.read_many

        def counting(path: str, *a: Any, **k: Any) -> Any:
            opened.append(path)
            return original(path, *a, **k)

        def counting_api(rels: Any) -> Any:
            opened.extend(rels)
            return original_api(rels)

        engine_fs._open = counting
        db.store.read_many = counting_api  # type: ignore[method-assign]
        day = (start + dt.timedelta(days=args.days // 2)).date().isoformat()

        def measure(label: str, fn: Callable[[], Any]) -> tuple[float, int, Any]:
            opened.clear()
            t0 = time.perf_counter()
            out = fn()
            return time.perf_counter() - t0, len(set(opened)), out

        results = {
            "one day (DuckDB, pruned)": measure("day", lambda: plugin.get_cohort_stats(day)),
            "full scan (DuckDB)": measure("all", lambda: db.sql(
                "SELECT count(*), sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) "
                "FROM wallets_transactions_balance").fetchall()),
            "one day (Python API)": measure("py", lambda: db.resources["wallets_transactions_balance"].query(  # type: ignore[union-attr]
                {"cohortDate": day}).height),
        }
        day_count = results["one day (DuckDB, pruned)"][2]["transactionCount"]
        assert day_count == args.objects_per_day * args.rows_per_object, day_count
        assert results["one day (Python API)"][2] == day_count
        assert results["full scan (DuckDB)"][2][0][0] == total_objects * args.rows_per_object
        base = results["full scan (DuckDB)"][0]
        print(f"{'query':<28}{'seconds':>10}{'objects read':>14}{'vs full scan':>16}")
        for label, (seconds, objects, _out) in results.items():
            print(f"{label:<28}{seconds:>10.3f}{objects:>14}{base / seconds:>15.1f}x")
        print(f"a day has {args.objects_per_day} objects; the dataset has {total_objects}")
        db.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
