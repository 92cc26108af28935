"""Consolidation throughput: ecanalytics vs. the same fold in DuckDB SQL vs. a plain Python loop.

Writes N transactions (default 10^6) over R records (default 100k) to a local root as batched
Parquet objects, then times, each in a fresh process (so peak RSS is per phase):

* ``ecanalytics``: ``plugin.consolidate()`` end to end: list, read, validate, dedup, fold, commit;
* ``duckdb``: the same fold (last set by (timestamp, id), then signed sum) as SQL over the same
  Parquet objects, results fetched to Polars (``--counters``: a ``GROUP BY`` sum of the signed
  values, which is that fold when there is no ``set``);
* ``duckdb-marks``: the same query with what the fold also computes per record for its
  event-order marks (the earliest timestamp and the greatest ``(timestamp, id)``): the same work
  as ecanalytics' (with ``--counters`` it reads the ``timestamp`` and ``id`` columns too);
* ``polars``: the same fold as a plain Polars lazy query over the same objects, run by its
  streaming engine (no knowledge of the project: what a user would write by hand);
* ``python-loop``: read with Polars, sort, and fold row by row in a dict.

A second table times the fold alone on data already in memory: the built-in reducer on the
unsorted Polars frame, the same SQL in DuckDB over that frame (Arrow, zero copy), and the dict loop
over rows already sorted and converted to Python lists (the loop is spared its sort and I/O),
and the naive plugin-style path (``python-dicts``): rows as dicts, grouped per record, each
record's list sorted and reduced in Python.

All implementations must produce identical values; the run fails otherwise.

    python bench/consolidate.py            # 10^6
    python bench/consolidate.py --n 1e7
    python bench/consolidate.py --keyed     # every transaction carries an idempotency key
    python bench/consolidate.py --n 1e7 --counters --skip-loop   # add/sub only
    python bench/consolidate.py --n 1e7 --skip-loop --dask local:2   # also on a Dask cluster

``--dask local:N`` (a LocalCluster of N worker processes, one thread each, as the CLI's
``--dask local:N``) or ``--dask ADDRESS`` (a running scheduler whose workers see this machine's
``--root``) also consolidates a copy of the same objects with ``db.consolidate(client=...)`` in a
fresh process, and compares it with the single-process ``ecanalytics`` phase: time ratio (the
cluster's start-up is not timed), the driver's peak RSS and every worker's (``ru_maxrss``, which
a spawned process inherits from its parent's high-water mark, and ``VmHWM``, which exec resets).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import Any

import polars as pl

RESOURCE, FIELD = "accounts", "balance"
DATASET = f"{RESOURCE}_transactions_{FIELD}"


def generate(root: str, n: int, records: int, batch: int, seed: int, keyed: bool = False,
             counters: bool = False) -> None:
    import ecanalytics as ec
    from ecanalytics.ledger.transactions import write_transactions

    db = ec.connect(root)
    db.use_plugin(ec.EventualConsistencyPlugin(resource=RESOURCE, field=FIELD, auto_consolidate=False))
    db.create_resource(RESOURCE, {"id": "string|required", FIELD: "number|default:0"})
    start = int(datetime(2026, 11, 27, 3, tzinfo=timezone.utc).timestamp() * 1e6)
    for offset in range(0, n, batch):
        m = min(batch, n - offset)
        rnd = (pl.col("i") * 2654435761 + seed) % 1_000_000_007
        frame = pl.DataFrame({"i": pl.int_range(offset, offset + m, eager=True)}).select(
            # Generated ids, as add/sub/set create them; --keyed makes them caller-supplied
            # idempotency keys, which every commit must also remember for the dedup window.
            id=pl.format("k{}" if keyed else "auto-{}", pl.col("i").cast(pl.String).str.zfill(20)),
            originalId=pl.format("acc-{}", (rnd % records).cast(pl.String)),
            field=pl.lit(FIELD),
            value=((rnd * 7) % 1000).cast(pl.Float64),
            operation=pl.when((rnd % 20 == 0) & (not counters)).then(pl.lit("set")).when(rnd % 20 < 7).then(pl.lit("sub")).otherwise(pl.lit("add")),
            # one hour of traffic, many equal timestamps: ties are broken by id
            timestamp=(start + (rnd * 3600_000_000 // 1_000_000_007)).cast(pl.Datetime("us", "UTC")),
            source=pl.lit("bench"),
        )
        write_transactions(db.store, DATASET, "UTC", frame)
    db.close()


def consolidate_with(root: str, client: Any = None, budget_rows: int | None = None) -> tuple[pl.DataFrame, dict[str, Any]]:
    """``db.consolidate()`` end to end (on ``client``'s Dask workers if given; ``budget_rows``:
    the consolidator's in-memory budget, else the library's default): (values, engine stats)."""
    import ecanalytics as ec

    db = ec.connect(root)
    if budget_rows is not None:
        res = db.resources[RESOURCE]
        assert isinstance(res, ec.Resource)
        res.plugin(FIELD).consolidator.budget_rows = budget_rows
    result = db.consolidate(RESOURCE, FIELD, client=client)[0]
    db.close()
    return result.values.rename({"id": "originalId"}), result.engine


def run_ecanalytics(root: str) -> pl.DataFrame:
    return consolidate_with(root)[0]


def fold_sql(source: str, marks: bool = False) -> str:
    """The default fold as DuckDB SQL over ``source`` (a table function or a view name); ``marks``
    also computes each record's event-order marks, as the fold does (``earliest``, ``latest``)."""
    ids = ("(SELECT originalId, min(timestamp) AS earliest, max(struct_pack(t := timestamp, i := id)) AS latest "
           "FROM t GROUP BY originalId)" if marks else "(SELECT DISTINCT originalId FROM t)")
    return f"""
    WITH t AS (SELECT originalId, id, value, operation, timestamp FROM {source}),
    last_set AS (
        SELECT originalId, value AS set_value, timestamp AS set_ts, id AS set_id FROM (
            SELECT *, row_number() OVER (PARTITION BY originalId ORDER BY timestamp DESC, id DESC) AS rn
            FROM t WHERE operation = 'set') WHERE rn = 1),
    after AS (
        SELECT t.originalId, sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) AS delta
        FROM t LEFT JOIN last_set USING (originalId)
        WHERE operation <> 'set' AND (set_ts IS NULL OR t.timestamp > set_ts OR (t.timestamp = set_ts AND t.id > set_id))
        GROUP BY t.originalId)
    SELECT ids.*, coalesce(set_value, 0) + coalesce(delta, 0) AS value
    FROM {ids} ids LEFT JOIN last_set USING (originalId) LEFT JOIN after USING (originalId)
    """


COUNTERS_SQL = """SELECT originalId, sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) AS value
    FROM {source} GROUP BY originalId"""


# The counters GROUP BY, with what the fold also keeps per record for the event-order marks
# (its earliest instant, and its greatest ``(timestamp, id)``): the same work as ecanalytics'.
# The extra columns are fetched, then dropped, so DuckDB cannot prune their aggregates.
COUNTERS_MARKS_SQL = """SELECT originalId, sum(CASE WHEN operation = 'sub' THEN -value ELSE value END) AS value,
    min(timestamp) AS earliest, max({{'t': timestamp, 'i': id}}) AS latest
    FROM {source} GROUP BY originalId"""


def _duckdb_source(root: str) -> str:
    return f"read_parquet('{root}/{DATASET}/**/*.parquet', hive_partitioning = false)"


def run_duckdb(root: str) -> pl.DataFrame:
    import duckdb

    return duckdb.connect().sql((COUNTERS_SQL if COUNTERS else fold_sql("{source}")).format(
        source=_duckdb_source(root))).pl()


def run_duckdb_marks(root: str) -> pl.DataFrame:
    """DuckDB's query doing the same per-record work as the fold: its values and its marks."""
    import duckdb

    sql = COUNTERS_MARKS_SQL if COUNTERS else fold_sql("{source}", marks=True)
    return duckdb.connect().sql(sql.format(source=_duckdb_source(root))).pl().select("originalId", "value")


def run_polars(root: str) -> pl.DataFrame:
    """The fold as a plain Polars streaming query: last set per record, then the signed sum after it."""
    t = pl.scan_parquet(f"{root}/{DATASET}/**/*.parquet", hive_partitioning=False).select(
        "originalId", "id", "value", "operation", "timestamp")
    signed = pl.when(pl.col("operation") == "sub").then(-pl.col("value")).otherwise(pl.col("value"))
    last_set = (t.filter(pl.col("operation") == "set").sort("timestamp", "id").group_by("originalId")
                .agg(pl.col("value").last().alias("sv"), pl.col("timestamp").last().alias("sts"), pl.col("id").last().alias("sid")))
    after = (t.filter(pl.col("operation") != "set").join(last_set, on="originalId", how="left")
             .filter(pl.col("sts").is_null() | (pl.col("timestamp") > pl.col("sts"))
                     | ((pl.col("timestamp") == pl.col("sts")) & (pl.col("id") > pl.col("sid"))))
             .group_by("originalId").agg(signed.sum().alias("delta")))
    ids = t.select("originalId").unique()
    return (ids.join(last_set, on="originalId", how="left").join(after, on="originalId", how="left")
            .select("originalId", (pl.col("sv").fill_null(0) + pl.col("delta").fill_null(0)).alias("value"))
            .collect(engine="streaming"))


def fold_only(root: str, with_loop: bool) -> dict[str, tuple[float, pl.DataFrame]]:
    """Time the fold alone on in-memory data (see the module docstring)."""
    import duckdb

    from ecanalytics.consolidation import Reducer

    df = pl.read_parquet(f"{root}/{DATASET}/**/*.parquet", hive_partitioning=False)
    out: dict[str, tuple[float, pl.DataFrame]] = {}
    reducer, empty = Reducer("default"), pl.DataFrame(schema={"originalId": pl.String, "current": pl.Float64})
    started = time.perf_counter()
    out["ecanalytics"] = (0.0, reducer(df, empty, 0.0))
    out["ecanalytics"] = (time.perf_counter() - started, out["ecanalytics"][1])
    con = duckdb.connect()
    con.register("t_mem", df.to_arrow())
    started = time.perf_counter()
    res = con.sql(fold_sql("t_mem")).pl()
    out["duckdb"] = (time.perf_counter() - started, res)
    if with_loop:
        ordered = df.sort("timestamp", "id")
        rows = list(zip(ordered["originalId"].to_list(), ordered["value"].to_list(), ordered["operation"].to_list(), strict=True))
        started = time.perf_counter()
        values = dict_fold(rows)
        seconds = time.perf_counter() - started
        out["python-loop"] = (seconds, pl.DataFrame({"originalId": list(values), "value": list(values.values())}))
        # The naive plugin-style path: transactions as dicts, grouped per record, reduced in order.
        started = time.perf_counter()
        groups: dict[str, list[dict[str, Any]]] = {}
        for tx in df.iter_rows(named=True):
            groups.setdefault(tx["originalId"], []).append(tx)
        naive: dict[str, float] = {}
        for rid, txs in groups.items():
            acc = 0.0
            for tx in sorted(txs, key=lambda t: (t["timestamp"], t["id"])):
                acc = tx["value"] if tx["operation"] == "set" else acc + (tx["value"] if tx["operation"] == "add" else -tx["value"])
            naive[rid] = acc
        seconds = time.perf_counter() - started
        out["python-dicts"] = (seconds, pl.DataFrame({"originalId": list(naive), "value": list(naive.values())}))
    return {k: (v[0], v[1].sort("originalId")) for k, v in out.items()}


def dict_fold(rows: Iterable[tuple[str, float, str]]) -> dict[str, float]:
    """The default fold as a plain Python loop over (record, value, operation) in event order."""
    values: dict[str, float] = {}
    for rid, value, op in rows:
        if op == "set":
            values[rid] = value
        elif op == "add":
            values[rid] = values.get(rid, 0.0) + value
        else:
            values[rid] = values.get(rid, 0.0) - value
    return values


def run_python_loop(root: str) -> pl.DataFrame:
    df = pl.read_parquet(f"{root}/{DATASET}/**/*.parquet", hive_partitioning=False).sort("timestamp", "id")
    values = dict_fold(zip(df["originalId"].to_list(), df["value"].to_list(), df["operation"].to_list(), strict=True))
    return pl.DataFrame({"originalId": list(values), "value": list(values.values())})


PHASES: dict[str, Callable[[str], pl.DataFrame]] = {
    "ecanalytics": run_ecanalytics, "duckdb": run_duckdb, "duckdb-marks": run_duckdb_marks, "polars": run_polars,
    "python-loop": run_python_loop,
}
COUNTERS = "--counters" in sys.argv  # add/sub only; read from argv so that each phase's spawned process sees it too


def _vm(field: str) -> float:
    """A memory figure of this process in MB (VmHWM resets on exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _child(name: str, root: str, queue: Any, dask: str | None = None) -> None:
    # Import every engine before the clock starts, so no phase pays for an import.
    import duckdb  # noqa: F401

    import ecanalytics  # noqa: F401
    from ecanalytics.cli import _dask_client  # the CLI's --dask: local:N or a scheduler address

    def peaks() -> tuple[float, float]:
        """(ru_maxrss, VmHWM) in MB of the worker it runs on (pickled by value: no module globals)."""
        import resource

        with open("/proc/self/status") as status:
            hwm = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, hwm / 1024

    extra: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        client = None
        if dask is not None:
            started = time.perf_counter()
            client = stack.enter_context(_dask_client(dask))
            extra["startup_s"] = time.perf_counter() - started
        base = _vm("VmRSS")
        started = time.perf_counter()
        if client is None:
            out = PHASES[name](root)
        else:
            out, extra["engine"] = consolidate_with(root, client)
        seconds = time.perf_counter() - started
        peak = _vm("VmHWM")
        if client is not None:
            extra["workers"] = client.run(peaks)
    queue.put((seconds, base, peak, out.sort("originalId").write_ipc(None).getvalue(), extra))


def measure(name: str, root: str, dask: str | None = None) -> tuple[float, float, pl.DataFrame, float, dict[str, Any]]:
    """(seconds, MB over the post-import RSS, values, peak RSS MB, extras) of one phase in a fresh process."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(name, root, queue, dask))
    proc.start()
    seconds, base, peak, blob, extra = queue.get()
    proc.join()
    return seconds, peak - base, pl.read_ipc(blob), peak, extra


def compare_dask(root: str, dask: str, n: int, single: tuple[float, float], reference: pl.DataFrame) -> bool:
    """Consolidate ``root`` (a copy of the objects the single-process phase consumed) on the
    cluster and print the comparison; ``single`` is that phase's (seconds, peak RSS MB). False if
    the values differ from the single-process ones."""
    seconds, mb, out, peak, extra = measure("ecanalytics-dask", root, dask)
    if not out.equals(reference):
        joined = reference.join(out, on="originalId", how="full", suffix="_dask")
        print(f"MISMATCH between single-process and Dask:\n{joined.filter(pl.col('value').ne_missing(pl.col('value_dask')))}")
        return False
    print(f"\nDask {dask}: cluster start-up {extra['startup_s']:.1f}s (not timed); engine {extra['engine']}")
    print(f"{'run':<14}{'seconds':>10}{'M rows/s':>11}{'peak MB':>10}")
    for name, s, rss in (("single", *single), ("dask", seconds, peak)):
        print(f"{name:<14}{s:>10.3f}{n / s / 1e6:>11.2f}{rss:>10.0f}")
    print(f"dask/single time ratio: {seconds / single[0]:.2f} (issue 17's target at 10^8: <= 1.0)")
    print(f"dask driver peak RSS: {peak:.0f} MB VmHWM (+{mb:.0f} MB over its RSS after the cluster started)")
    for address, (maxrss, hwm) in sorted(extra["workers"].items()):
        print(f"dask worker {address}: peak RSS {maxrss:.0f} MB ru_maxrss, {hwm:.0f} MB VmHWM")
    print(f"all {reference.height:,} record values agree between single-process and Dask")
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, default=1e6, help="transactions (default 1e6)")
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100_000, help="rows per Parquet object")
    parser.add_argument("--root", default=None, help="local folder (default: a temporary one)")
    parser.add_argument("--skip-loop", action="store_true", help="skip the slow Python loop")
    parser.add_argument("--keyed", action="store_true", help="caller-supplied ids (idempotency keys) instead of generated ones")
    parser.add_argument("--counters", action="store_true", help="add/sub only; DuckDB runs a GROUP BY sum")
    parser.add_argument("--dask", default=None, metavar="local:N|ADDRESS",
                        help="also consolidate a copy of the data on a Dask cluster and compare (see above)")
    args = parser.parse_args()
    n = int(args.n)
    root = args.root or tempfile.mkdtemp(prefix="ec-bench-")
    copy = tempfile.mkdtemp(prefix="ec-bench-dask-") if args.dask else None
    try:
        t = time.perf_counter()
        generate(root, n, args.records, args.batch, seed=7, keyed=args.keyed, counters=args.counters)
        print(f"wrote {n:,} transactions over {args.records:,} records in {time.perf_counter() - t:.1f}s -> {root}")
        if copy is not None:  # the same objects for the Dask run: the single-process commit consumes them
            shutil.copytree(root, copy, dirs_exist_ok=True)
        fold = fold_only(root, not args.skip_loop)
        # The baselines first: the ecanalytics commit consumes the pending objects.
        order = ["duckdb", "duckdb-marks", "polars",
                 *([] if args.skip_loop else ["python-loop"]), "ecanalytics"]
        results = {name: measure(name, root) for name in order}
        reference = results["ecanalytics"][2]
        for name, (_s, _m, out, _p, _e) in results.items():
            if not out.equals(reference):
                joined = reference.join(out, on="originalId", how="full", suffix="_other")
                print(f"MISMATCH between ecanalytics and {name}:\n{joined.filter(pl.col('value') != pl.col('value_other'))}")
                return 1
        ec_seconds = results["ecanalytics"][0]
        print(f"{'phase':<14}{'seconds':>10}{'M rows/s':>11}{'+peak MB':>10}{'ecanalytics is':>18}")
        for name, (seconds, mb, *_rest) in results.items():
            ratio = "" if name == "ecanalytics" else f"{seconds / ec_seconds:.2f}x faster"
            print(f"{name:<14}{seconds:>10.3f}{n / seconds / 1e6:>11.2f}{mb:>10.0f}{ratio:>18}")
        print("\nfold only, data in memory")
        for name, (_seconds, out) in fold.items():
            if not out.equals(reference):
                print(f"MISMATCH in the in-memory fold of {name}")
                return 1
        base = fold["ecanalytics"][0]
        print(f"{'phase':<14}{'seconds':>10}{'M rows/s':>11}{'ecanalytics is':>18}")
        for name, (seconds, _out) in fold.items():
            ratio = "" if name == "ecanalytics" else f"{seconds / base:.2f}x faster"
            print(f"{name:<14}{seconds:>10.3f}{n / seconds / 1e6:>11.2f}{ratio:>18}")
        print(f"all {reference.height:,} record values agree across implementations")
        if copy is not None and not compare_dask(copy, args.dask, n, (ec_seconds, results["ecanalytics"][3]), reference):
            return 1
    finally:
        if args.root is None:
            shutil.rmtree(root, ignore_errors=True)
        if copy is not None:
            shutil.rmtree(copy, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
