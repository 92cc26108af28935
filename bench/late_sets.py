"""Late sets in a spilled consolidation: the applied history read once, not once per bucket half.

Builds an applied history of ``--days`` cohort days x ``--objects`` objects x ``--rows`` add rows
over ``--records`` records (consolidated). Then a ``set`` for every record, with a caller key (so
that, past ``--budget`` rows, the consolidation takes the spilling path, bucket by bucket), in two
copies of that root:

* **late**: every set dated on day ``--late-day``, before most of the history: each bucket needs
  the applied adds after its sets (``Consolidator._applied_after``);
* **on time** (the baseline): the same sets dated after the whole history: no history is read.

Prints, for each, the consolidation's seconds and how many times each applied object was read
(counted at the store), and the ratio of the two times. Every value is checked against a plain
Polars fold of the generated rows: the set's value plus the adds dated after it.

    python bench/late_sets.py                       # 20,000 records, 10 days x 20 objects x 5,000 rows
    python bench/late_sets.py --records 100000 --rows 20000
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import polars as pl

import ecanalytics as ec
from ecanalytics.ledger.transactions import write_transactions

RESOURCE, FIELD = "accounts", "balance"
DATASET = f"{RESOURCE}_transactions_{FIELD}"
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def history(root: str, days: int, objects: int, rows: int, records: int) -> pl.DataFrame:
    """Write and consolidate the applied history; returns its rows (``originalId, value, timestamp``)."""
    db = ec.connect(root)
    db.use_plugin(ec.EventualConsistencyPlugin(resource=RESOURCE, field=FIELD, auto_consolidate=False))
    db.create_resource(RESOURCE, {"id": "string|required", FIELD: "number|default:0"})
    frames = []
    for day in range(days):
        for o in range(objects):
            first = (day * objects + o) * rows
            rnd = (pl.col("i") * 2654435761 + 17) % 1_000_000_007
            frame = pl.DataFrame({"i": pl.int_range(first, first + rows, eager=True)}).select(
                id=pl.format("auto-{}", pl.col("i").cast(pl.String).str.zfill(20)),
                originalId=pl.format("acc-{}", (rnd % records).cast(pl.String)),
                field=pl.lit(FIELD),
                value=((rnd * 7) % 100).cast(pl.Float64),
                operation=pl.lit("add"),
                # whole seconds of the day: a set one microsecond past a second never ties with an add
                timestamp=(int((START + timedelta(days=day)).timestamp()) + rnd % 86_400).cast(pl.Int64)
                .mul(1_000_000).cast(pl.Datetime("us", "UTC")),
                source=pl.lit("bench"),
            )
            write_transactions(db.store, DATASET, "UTC", frame)
            frames.append(frame.select("originalId", "value", "timestamp"))
    db.consolidate(RESOURCE, FIELD)
    db.close()
    return pl.concat(frames)


def consolidate_sets(root: str, sets: pl.DataFrame, budget: int) -> tuple[float, Counter[str], set[str], pl.DataFrame]:
    """Write ``sets`` (``originalId, value, timestamp``) with caller keys and consolidate them:
    (seconds, reads per key, the applied objects before, the values)."""
    db = ec.connect(root)
    res = db.resources[RESOURCE]
    assert isinstance(res, ec.Resource)
    write_transactions(db.store, DATASET, "UTC", sets.select(
        id=pl.format("late-{}", pl.int_range(pl.len()).cast(pl.String).str.zfill(8)), originalId="originalId",
        field=pl.lit(FIELD), value="value", operation=pl.lit("set"), timestamp="timestamp", source=pl.lit("bench")))
    consolidator = res.plugin(FIELD).consolidator
    consolidator.budget_rows = budget
    applied = set(consolidator.ledger.state().applied_objects(FIELD))
    store, reads = consolidator.store, Counter[str]()
    real = store.read_many

    def counting(keys: Any, *args: Any, **kwargs: Any) -> Any:
        keys = list(keys)
        reads.update(keys)
        return real(keys, *args, **kwargs)

    setattr(store, "read_many", counting)  # noqa: B010 (an instance patch, as a test would)
    started = time.perf_counter()
    result = db.consolidate(RESOURCE, FIELD)[0]
    seconds = time.perf_counter() - started
    entry = consolidator.ledger.read_entry(result.version) if result.version is not None else None
    assert entry is not None and entry.stats["spilled"], "not the spilling path: lower --budget"
    values = res.to_polars().select(pl.col("id").alias("originalId"), pl.col(FIELD).alias("value"))
    db.close()
    return seconds, reads, applied, values


def expected(hist: pl.DataFrame, sets: pl.DataFrame) -> pl.DataFrame:
    """Each set's value plus the adds of its record dated after it (a plain Polars fold)."""
    after = hist.join(sets.select("originalId", pl.col("timestamp").alias("_set")), on="originalId").filter(
        pl.col("timestamp") > pl.col("_set")).group_by("originalId").agg(pl.col("value").sum().alias("_after"))
    return sets.join(after, on="originalId", how="left").select(
        "originalId", (pl.col("value") + pl.col("_after").fill_null(0.0)).alias("value"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--objects", type=int, default=20, help="applied objects per day")
    parser.add_argument("--rows", type=int, default=5_000, help="rows per applied object")
    parser.add_argument("--late-day", type=int, default=2, help="the day the late sets are dated on")
    parser.add_argument("--budget", type=int, default=None, help="the consolidator's budget_rows (records // 2)")
    args = parser.parse_args()
    budget = args.budget or args.records // 2
    with tempfile.TemporaryDirectory(prefix="ec-late-") as tmp:
        base = f"{tmp}/base"
        started = time.perf_counter()
        hist = history(base, args.days, args.objects, args.rows, args.records)
        print(f"history: {hist.height:,} rows in {args.days * args.objects} objects over {args.records:,} records "
              f"({time.perf_counter() - started:.1f}s)")
        ids = pl.DataFrame({"originalId": hist["originalId"].unique().sort()})
        figures = {}
        for name, day in (("on time", args.days + 1), ("late", args.late_day)):
            root = f"{tmp}/{name.replace(' ', '_')}"
            shutil.copytree(base, root)
            sets = ids.with_columns(
                value=pl.int_range(pl.len()).cast(pl.Float64),
                timestamp=pl.lit(START + timedelta(days=day, hours=12, microseconds=1), pl.Datetime("us", "UTC")))
            seconds, reads, applied, values = consolidate_sets(root, sets, budget)
            want = expected(hist, sets)
            joined = want.join(values, on="originalId", how="left", suffix="_got")
            assert joined["value_got"].null_count() == 0 and (joined["value"] == joined["value_got"]).all(), \
                joined.filter(pl.col("value") != pl.col("value_got")).head()
            per_object = Counter(reads[k] for k in applied)
            figures[name] = seconds
            print(f"{name:8s} {seconds:7.3f}s; reads of the {len(applied)} applied objects: "
                  + ", ".join(f"{n} object(s) read {times}x" for times, n in sorted(per_object.items()))
                  + "; every value checked")
        print(f"late / on time: {figures['late'] / figures['on time']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
