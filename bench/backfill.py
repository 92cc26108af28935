"""Late data, nightly: does consolidation alone give the event-order value?

A workload of ``--days`` (default 60) days over ``--records`` (default 1,000) records. Every
night writes that day's traffic and consolidates, as a cron job would. Three waves of backfills
(on days 20, 40 and 55) each write transactions dated up to 30 days back, ``set``s included.
Afterwards the command reports how many records ``recalculate`` would change (the acceptance
figure: it must be 0), compares every value with a plain-Python event-order fold of everything
written, and times the nightly consolidations against the one with the largest backfill.

    python bench/backfill.py                  # the issue's workload
    python bench/backfill.py --records 200    # quicker
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta

import polars as pl

import ecanalytics as ec
from ecanalytics.consolidation import python_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--per-day", type=int, default=400, help="transactions a day")
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = tempfile.mkdtemp(prefix="ec-backfill-")
    db = ec.connect(root)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               batch_transactions=True, batch_size=10_000, flush_interval=3600))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    start = datetime(2026, 9, 1, tzinfo=UTC)
    written: dict[str, list[tuple[datetime, str, str, float]]] = {}
    timings: list[tuple[int, float, int]] = []
    n = 0

    def write(day_from: int, day_to: int, count: int) -> None:
        nonlocal n
        for _ in range(count):
            rid = f"w{rng.randrange(args.records)}"
            op = rng.choices(["add", "sub", "set"], weights=[6, 3, 1])[0]
            ts = start + timedelta(days=rng.randrange(day_from, day_to), seconds=rng.randrange(86400))
            key, value = f"t{n:08d}", float(rng.randrange(1, 500))
            getattr(w, op)(rid, value, id=key, timestamp=ts)
            written.setdefault(rid, []).append((ts, key, op, value))
            n += 1

    late = 0
    for day in range(args.days):
        write(day, day + 1, args.per_day)
        if day in (20, 40, 55):  # a wave of backfills, up to 30 days back
            write(max(0, day - 30), day, args.per_day * 3)
        started = time.perf_counter()
        results = db.consolidate()
        timings.append((day, time.perf_counter() - started, results[0].transactions))
        late += results[0].late

    changed = w.recalculate().changed
    got = w.to_polars()
    values = dict(zip(got["id"].to_list(), got["balance"].to_list(), strict=True))
    expected = {
        rid: python_reference("default")([{"operation": "set", "value": 0.0}]
                                         + [{"operation": op, "value": v} for _t, _k, op, v in sorted(txs)])
        for rid, txs in written.items()
    }
    wrong = sum(values.get(rid) != v for rid, v in expected.items())
    report = ec.reports.run(db, "reconciliation").height
    nightly = pl.DataFrame(timings, schema=["day", "seconds", "transactions"], orient="row")
    normal = nightly.filter(~pl.col("day").is_in([20, 40, 55]))
    waves = nightly.filter(pl.col("day").is_in([20, 40, 55]))
    print(f"{n} transactions over {args.days} days and {len(written)} records; {late} were late (folded in event order)")
    print(f"records recalculate changed after the nightly consolidations: {changed} of {len(written)}")
    print(f"values that differ from a plain-Python event-order fold: {wrong}; reconciliation report rows: {report}")
    print(f"nightly consolidation: median {normal['seconds'].median():.3f}s", end="")
    if waves.height:
        print(f"; backfill nights: {', '.join(f'{s:.3f}s' for s in waves['seconds'].to_list())} "
              f"(the slowest is {waves['seconds'].max() / normal['seconds'].median():.1f}x the median)", end="")
    print()
    db.close()
    shutil.rmtree(root, ignore_errors=True)
    if changed or wrong or report:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
