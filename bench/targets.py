"""The scale targets of issue 9, each measured against a baseline measured in the same run.

For every target this prints what it measured, the baseline, their ratio, the target and PASS or
MISS (INFO where the issue sets no threshold), then a table ``id | workload | measured | baseline |
ratio | target | verdict``. ``--json`` writes the rows as JSON Lines on stdout (the table then goes
to stderr). Progress goes to stderr. Data generators and phases come from the other bench scripts.

  S1  consolidation end to end of --n (1e7) transactions over --records (1e5) records, Parquet on
      local disk (bench/consolidate.py's generator), vs DuckDB's SQL fold of the same objects. Each
      runs in its own process (``--child ecanalytics-consolidate|duckdb-fold ROOT OUT``), started
      through a stdlib-only launcher (``--rusage``) whose ru_maxrss of its child is the peak RSS:
      a process spawned straight from this (big) one would inherit its high-water mark.
      Target: DuckDB/ecanalytics time >= 1.0, and RSS <= DuckDB's.
  S2  the same with --s2-n (1e8) over --s2-records (1e7); off unless named (--only S2).
      Target (issue 17): RSS <= 1.5 GiB and DuckDB/ecanalytics time >= 1.0 (DuckDB unconstrained).
  S3  write_transactions of an --n-row Polars frame (bench/ingest.py) to a local root, vs Polars
      writing the same frame as one zstd Parquet file per day. Target >= 1M rows/s. With --s3,
      also on a moto server (reported, no threshold).
  S4  insert_many of --s4-records (1e5) records, local: exactly one commit (the log version and the
      log entries on disk advance by 1) in <= 2 s; baseline: Polars writing the same frame.
  S5  consolidation of --s5-pending (1e4) transactions on top of --s5-applied (1e7) applied over
      --s5-records (1e6) records, vs the same pending on an empty resource, each on a fresh
      connection with checkpoint_interval=1: time ratio <= 2x. Then the checkpoint written by
      that commit must hold at most one records object (``.checkpoint-b``) per bucket the pending
      touched (``buckets_of``): a big bucket keeps its base and chains the commit's delta, and a
      rolling quarter of them gets a new base (see docs/architecture.md). A bucket of at most 64
      records travels inside the checkpoint hint and has no object, so keep buckets bigger than
      that (--s5-records / --buckets). bench/small_commits.py measures a whole checkpoint interval.
  S6  one-day get_cohort_stats on moto with 60 vs 600 days (--s6-days) of --s6-objects (5) objects
      a day: S3 requests of the first call on a fresh connection (it creates the views) and of a
      second one, counted on the s3fs filesystems as tests/test_cost.py does. Target: the same
      requests (per method) whatever the history.
  S7  sync add, local disk, on --s7-records (1e6) records vs 10 (insert_many; --s7-warmup adds,
      then --s7-adds to random records): p50 latency ratio <= 2x.
  S8  sync add on moto, 1 caller vs --s8-threads (16): bench/sync.py's requests per add, PUT round
      trips per add on the critical path and adds/s ratio (reported, no threshold).

    python bench/targets.py                                # S1, S3-S8 at the issue's sizes
    python bench/targets.py --only S1 --n 1e7              # one target
    python bench/targets.py --only S2 --buckets 64         # 10^8 over 10^7 (long)
    python bench/targets.py --only S3 --s3                 # also on a moto server
    python bench/targets.py --only S5 --s5-applied 1e6     # a quicker S5
    python bench/targets.py --only S6,S8                   # the moto ones
    python bench/targets.py --only S1,S3,S4,S5,S7 --n 1e5 --s5-applied 1e5 --json   # a quick check

Exit code: 0 if every target passed (or is INFO), 1 if one missed, 2 if one failed to run.
S3 --s3, S6 and S8 need the dev extras (moto[server], boto3).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

# Only the standard library at import time: the --rusage launcher must stay small (see S1).
if TYPE_CHECKING:
    import polars as pl

    import ecanalytics as ec

BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

ALL = ("S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8")
DEFAULT = ("S1", "S3", "S4", "S5", "S6", "S7", "S8")
CHILDREN = {"ecanalytics-consolidate": "ecanalytics", "duckdb-fold": "duckdb"}  # -> consolidate.PHASES
ATTRS = {"id": "string|required", "balance": "number|default:0"}  # bench/consolidate.py's resource
GENERATOR_IDS = 1_000_000_007  # bench/consolidate.py and bench/ingest.py draw record ids modulo this
_t0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _t0:7.1f}s] {message}", file=sys.stderr, flush=True)


@dataclass
class Row:
    """One line of the final table (and one JSON object)."""

    id: str
    workload: str
    measured: float | None
    baseline: float | None
    unit: str
    ratio: float | None
    target: str
    verdict: str  # PASS | MISS | INFO | ERROR
    details: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "rows/s":
        return f"{value / 1e6:.2f} M rows/s"
    return f"{value:.3g} {unit}" if abs(value) < 1000 else f"{value:,.0f} {unit}"


# -- child processes (S1, S2) ----------------------------------------------------------------
def rusage_main(cmd: list[str]) -> int:
    """``--rusage CMD...``: run CMD and print its peak RSS as a JSON line. This process loads only
    the standard library, so the high-water mark CMD inherits at exec stays a few MB."""
    import resource

    code = subprocess.call(cmd)
    print(json.dumps({"maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}), flush=True)
    return code


def _vm(name: str) -> float:
    """A memory figure of this process from /proc (MiB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_main(name: str, root: str, out: str, budget_rows: str | None = None) -> int:
    """``--child NAME ROOT OUT [BUDGET_ROWS]``: one phase of bench/consolidate.py, timed without
    the imports (both engines are imported first, as there); values to OUT, figures as a JSON line.
    BUDGET_ROWS sets the consolidator's ``budget_rows`` (ecanalytics only)."""
    import consolidate as bc
    import duckdb  # noqa: F401
    import polars  # noqa: F401

    import ecanalytics  # noqa: F401

    base = _vm("VmRSS")
    started = time.perf_counter()
    if budget_rows is not None and CHILDREN[name] == "ecanalytics":
        values = bc.consolidate_with(root, budget_rows=int(budget_rows))[0]
    else:
        values = bc.PHASES[CHILDREN[name]](root)
    seconds = time.perf_counter() - started
    values.sort("originalId").write_parquet(out)
    print(json.dumps({"seconds": seconds, "base_mib": base, "vmhwm_mib": _vm("VmHWM")}), flush=True)
    return 0


@dataclass
class ChildRun:
    seconds: float
    rss_mib: float  # ru_maxrss of the child process, from the launcher
    vmhwm_mib: float  # the child's own VmHWM (a cross-check)
    base_mib: float  # the child's RSS after its imports
    values: str  # Parquet file of its record values


def run_child(name: str, root: str, out: str, budget_rows: int | None = None) -> ChildRun:
    me = os.path.abspath(__file__)
    cmd = [sys.executable, me, "--rusage", sys.executable, me, "--child", name, root, out]
    cmd += [] if budget_rows is None else [str(budget_rows)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    figures: dict[str, float] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            figures.update(json.loads(line))
    return ChildRun(figures["seconds"], figures["maxrss_mib"], figures["vmhwm_mib"], figures["base_mib"], out)


# -- shared helpers --------------------------------------------------------------------------
def sizes(text: str) -> int:
    """``1e7`` or ``10000000``."""
    return int(float(text))


def sci(n: int) -> str:
    """``10**7`` as ``1e7``; other sizes with separators."""
    exp = len(str(n)) - 1
    return f"1e{exp}" if n == 10**exp and n >= 1000 else f"{n:,}"


def new_root(root: str, buckets: int | None) -> None:
    """An empty root with bench/consolidate.py's resource and plugin (``buckets`` if given)."""
    import consolidate as bc

    if buckets is not None:
        import ecanalytics as ec

        with ec.connect(root) as db:
            db.create_resource(bc.RESOURCE, ATTRS, buckets=buckets)
    bc.generate(root, 0, 1, 1, seed=0)  # n=0: the resource and its plugin only


def resource_of(db: ec.Database, name: str) -> ec.Resource:
    import ecanalytics as ec

    found = db.resources[name]
    assert isinstance(found, ec.Resource)
    return found


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with the bucket ``bench`` (bench/ingest.py and bench/stats.py
    start theirs inside ``main``, so there is nothing to import)."""
    import logging

    import boto3  # type: ignore[import-untyped]
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        yield endpoint
    finally:
        server.stop()


@contextlib.contextmanager
def count_s3_requests(filesystems: Iterable[Any]) -> Iterator[collections.Counter[str]]:
    """Count the S3 requests made through ``filesystems`` by method (tests/test_cost.py's way)."""
    counts: collections.Counter[str] = collections.Counter()
    patched: dict[int, tuple[Any, Any]] = {}

    def counting(original: Callable[..., Any]) -> Callable[..., Any]:
        async def call(method: str, *args: Any, **kwargs: Any) -> Any:
            counts[method] += 1
            return await original(method, *args, **kwargs)
        return call

    for fs in filesystems:
        if fs is not None and id(fs) not in patched:
            patched[id(fs)] = (fs, fs._call_s3)
            fs._call_s3 = counting(fs._call_s3)
    try:
        yield counts
    finally:
        for fs, original in patched.values():
            fs._call_s3 = original


# -- S1, S2: consolidation vs DuckDB ---------------------------------------------------------
def fold_vs_duckdb(tmp: str, n: int, records: int, batch: int, buckets: int | None,
                   budget_rows: int | None = None) -> tuple[ChildRun, ChildRun]:
    """(ecanalytics, duckdb) on the same generated objects; their values must agree."""
    import consolidate as bc
    import polars as pl

    if records > GENERATOR_IDS:
        raise ValueError(f"bench/consolidate.py's generator draws record ids modulo {GENERATOR_IDS:,}, so it cannot "
                         f"spread transactions over {records:,} records; it needs a larger modulus first.")
    root = f"{tmp}/root"
    new_root(root, buckets)
    started = time.perf_counter()
    bc.generate(root, n, records, batch, seed=7)
    log(f"wrote {n:,} transactions over {records:,} records in {time.perf_counter() - started:.1f}s")
    duck = run_child("duckdb-fold", root, f"{tmp}/duckdb.parquet")  # first: ecanalytics consumes them
    log(f"duckdb fold: {duck.seconds:.2f}s, {duck.rss_mib:.0f} MiB")
    ours = run_child("ecanalytics-consolidate", root, f"{tmp}/ecanalytics.parquet", budget_rows)
    log(f"ecanalytics consolidate: {ours.seconds:.2f}s, {ours.rss_mib:.0f} MiB")
    if not pl.read_parquet(ours.values).equals(pl.read_parquet(duck.values)):
        raise RuntimeError("ecanalytics and DuckDB disagree on the record values")
    return ours, duck


def child_details(ours: ChildRun, duck: ChildRun) -> dict[str, Any]:
    return {"ecanalytics": {k: v for k, v in asdict(ours).items() if k != "values"},
            "duckdb": {k: v for k, v in asdict(duck).items() if k != "values"}}


def s1(args: argparse.Namespace, tmp: str) -> list[Row]:
    ours, duck = fold_vs_duckdb(tmp, args.n, args.records, args.batch, args.buckets, args.budget_rows)
    work = f"consolidate {sci(args.n)} tx / {sci(args.records)} records, local Parquet"
    details = child_details(ours, duck)
    return [
        Row("S1", work + " (time)", ours.seconds, duck.seconds, "s", duck.seconds / ours.seconds,
            "duckdb/ec >= 1.00", verdict(duck.seconds >= ours.seconds), details),
        Row("S1.rss", work + " (peak RSS)", ours.rss_mib, duck.rss_mib, "MiB", ours.rss_mib / duck.rss_mib,
            "ec/duckdb <= 1.00", verdict(ours.rss_mib <= duck.rss_mib), details),
    ]


def s2(args: argparse.Namespace, tmp: str) -> list[Row]:
    ours, duck = fold_vs_duckdb(tmp, args.s2_n, args.s2_records, args.batch, args.buckets, args.budget_rows)
    work = f"consolidate {sci(args.s2_n)} tx / {sci(args.s2_records)} records, local Parquet"
    details = child_details(ours, duck)
    limit = 1.5 * 1024
    return [
        Row("S2", work + " (time)", ours.seconds, duck.seconds, "s", duck.seconds / ours.seconds,
            "duckdb/ec >= 1.00", verdict(duck.seconds >= ours.seconds), details),
        Row("S2.rss", work + " (peak RSS)", ours.rss_mib, duck.rss_mib, "MiB", ours.rss_mib / duck.rss_mib,
            f"ec <= {limit:.0f} MiB", verdict(ours.rss_mib <= limit), details),
    ]


# -- S3, S4: frames in -----------------------------------------------------------------------
def s3(args: argparse.Namespace, tmp: str) -> list[Row]:
    import ingest

    df = ingest.frame(args.n, args.records)
    os.makedirs(f"{tmp}/polars")
    base = args.n / ingest.polars_baseline(df, f"{tmp}/polars")
    _insert_s, write_s = ingest.run(f"{tmp}/root", df, args.records)
    rate = args.n / write_s
    log(f"write_transactions: {rate / 1e6:.2f} M rows/s (Polars per-day write: {base / 1e6:.2f} M rows/s)")
    work = f"write_transactions {sci(args.n)} rows, local"
    rows = [Row("S3", work, rate, base, "rows/s", rate / base, ">= 1.00 M rows/s", verdict(rate >= 1e6),
                {"seconds": write_s, "polars_seconds": args.n / base})]
    if args.s3:
        with moto_endpoint() as endpoint:
            _insert_s, s3_write_s = ingest.run("s3://bench/ingest", df, args.records, endpoint)
        s3_rate = args.n / s3_write_s
        log(f"write_transactions on moto: {s3_rate / 1e6:.2f} M rows/s")
        rows.append(Row("S3.s3", f"write_transactions {sci(args.n)} rows, moto S3", s3_rate, rate, "rows/s",
                        s3_rate / rate, "report (baseline: local)", "INFO", {"seconds": s3_write_s}))
    return rows


def log_entries(root: str, resource: str) -> int:
    """Commit-log entries on disk (``{version:020d}.json``; checkpoint hints excluded)."""
    folder = f"{root}/{resource}/_log"
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sum(bool(re.fullmatch(r"[0-9]{20}\.json", name)) for name in names)


def s4(args: argparse.Namespace, tmp: str) -> list[Row]:
    import polars as pl

    import ecanalytics as ec

    n, root = args.s4_records, f"{tmp}/root"
    records = pl.select(id=pl.format("acc-{}", pl.int_range(0, n)), balance=pl.lit(0.0))
    started = time.perf_counter()
    records.write_parquet(f"{tmp}/polars.parquet")
    base = time.perf_counter() - started
    with ec.connect(root) as db:
        res = db.create_resource("acc", ATTRS, buckets=args.buckets)
        before, entries = res.ledger.latest_version(), log_entries(root, "acc")
        started = time.perf_counter()
        inserted = res.insert_many(records)
        seconds = time.perf_counter() - started
        commits, new_entries = res.ledger.latest_version() - before, log_entries(root, "acc") - entries
    log(f"insert_many of {inserted:,} records: {seconds:.2f}s, {commits} commit(s), {new_entries} log entr(y/ies)")
    work = f"insert_many {sci(n)} records, local"
    ok_commit = commits == 1 and new_entries == 1 and inserted == n
    return [
        Row("S4", work + " (time)", seconds, base, "s", seconds / base, "<= 2 s", verdict(seconds <= 2.0),
            {"polars_write_parquet_s": base}),
        Row("S4.commits", work + " (commits)", float(commits), 1.0, "commits", None, "== 1 (log +1)",
            verdict(ok_commit), {"versions_advanced": commits, "log_entries_written": new_entries}),
    ]


# -- S5: pending on top of a big history -----------------------------------------------------
def timed_consolidation(root: str, pending: pl.DataFrame) -> tuple[float, int, int]:
    """Write ``pending``, then consolidate on a fresh connection (as a cron job does) with a
    checkpoint after every commit: (seconds, the version committed, the bucket count)."""
    import consolidate as bc

    import ecanalytics as ec

    with ec.connect(root, checkpoint_interval=1) as db:
        resource_of(db, bc.RESOURCE).write_transactions(pending)
    with ec.connect(root, checkpoint_interval=1) as db:
        started = time.perf_counter()
        result = db.consolidate(bc.RESOURCE, bc.FIELD)[0]
        seconds = time.perf_counter() - started
        assert result.version is not None and result.transactions == pending.height, result
        return seconds, result.version, resource_of(db, bc.RESOURCE).ledger.state().n_buckets


def checkpoint_objects(root: str, resource: str, version: int) -> list[str]:
    """The records objects of the checkpoint at ``version`` (one per rewritten bucket)."""
    prefix = f"{version:020d}-"
    return sorted(n for n in os.listdir(f"{root}/{resource}/_data") if n.startswith(prefix) and ".checkpoint-b" in n)


def s5(args: argparse.Namespace, tmp: str) -> list[Row]:
    import consolidate as bc
    import ingest
    import polars as pl

    import ecanalytics as ec
    from ecanalytics.ledger.buckets import buckets_of

    full, empty = f"{tmp}/full", f"{tmp}/empty"
    for root in (full, empty):
        new_root(root, args.buckets)
    started = time.perf_counter()
    bc.generate(full, args.s5_applied, args.s5_records, args.batch, seed=7)
    with ec.connect(full, checkpoint_interval=1) as db:
        applied = db.consolidate(bc.RESOURCE, bc.FIELD)[0]
    log(f"applied {applied.transactions:,} transactions over {applied.records:,} records "
        f"in {time.perf_counter() - started:.1f}s")
    # bench/ingest.py's frame, moved after the applied history (2026-11-27 03:00-04:00), so that
    # nothing is late: this measures history size, not late data.
    pending = ingest.frame(args.s5_pending, args.s5_records).with_columns(pl.col("timestamp") + pl.duration(days=27))
    on_full, version, n_buckets = timed_consolidation(full, pending)
    on_empty, _, _ = timed_consolidation(empty, pending)
    objects = checkpoint_objects(full, bc.RESOURCE, version)
    touched = buckets_of(pending["originalId"].unique(), n_buckets).n_unique()
    log(f"pending on history: {on_full:.3f}s, on empty: {on_empty:.3f}s; checkpoint v{version} wrote "
        f"{len(objects)} records objects, the pending touched {touched} of {n_buckets} buckets")
    work = f"{sci(args.s5_pending)} pending on {sci(args.s5_applied)} applied / {sci(args.s5_records)} records"
    return [
        Row("S5", work + " (time)", on_full, on_empty, "s", on_full / on_empty, "<= 2.00x empty",
            verdict(on_full <= 2 * on_empty), {"checkpoint_interval": 1, "buckets": n_buckets}),
        Row("S5.ckpt", work + " (checkpoint objects)", float(len(objects)), float(touched), "objects",
            len(objects) / touched, "<= buckets touched", verdict(len(objects) <= touched),
            {"version": version, "buckets": n_buckets, "objects": objects}),
    ]


# -- S6: cohort stats on moto ----------------------------------------------------------------
def cohort_requests(endpoint: str, days: int, per_day: int, rows: int, query_day: int) -> list[dict[str, int]]:
    """S3 requests of ``get_cohort_stats`` of day ``query_day`` on ``days`` days of objects: the
    first call on a fresh connection (it also creates the views), then a second one."""
    import datetime as dt

    import ingest
    import polars as pl

    import ecanalytics as ec

    start = dt.datetime(2025, 1, 1, 12, tzinfo=dt.UTC)
    n = days * per_day * rows
    day_of = pl.int_range(0, n) // (per_day * rows)
    frame = ingest.frame(n, 500).with_columns(
        timestamp=pl.lit(start) + pl.duration(days=day_of, seconds=pl.int_range(0, n) % (per_day * rows)))
    uri = f"s3://bench/s6-{days}"
    with ec.connect(uri, endpoint_url=endpoint) as db:
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
        db.create_resource("wallets", ATTRS).write_transactions(frame, batch_size=rows)
        db.consolidate()  # the usual state: history applied, an empty inbox
    day = (start + dt.timedelta(days=query_day)).date().isoformat()
    calls = []
    with ec.connect(uri, endpoint_url=endpoint) as db:
        plugin = resource_of(db, "wallets").plugin()
        for _ in range(2):
            with count_s3_requests([db.store.fs, db._engine().filesystem]) as counts:
                stats = plugin.get_cohort_stats(day)
            assert stats["transactionCount"] == per_day * rows, stats
            calls.append(dict(sorted(counts.items())))
    log(f"{days} days x {per_day} objects: first call {calls[0]}, second {calls[1]}")
    return calls


def s6(args: argparse.Namespace, tmp: str) -> list[Row]:
    short, long = args.s6_days
    with moto_endpoint() as endpoint:
        few = cohort_requests(endpoint, short, args.s6_objects, args.s6_rows, short // 2)
        many = cohort_requests(endpoint, long, args.s6_objects, args.s6_rows, short // 2)
    work = f"get_cohort_stats(1 day), moto, {long} vs {short} days x {args.s6_objects} objects"
    rows = []
    for i, (suffix, label) in enumerate((("", "first call, fresh connection"), (".warm", "second call"))):
        a, b = sum(many[i].values()), sum(few[i].values())
        rows.append(Row(f"S6{suffix}", f"{work} ({label})", float(a), float(b), "requests", a / b if b else None,
                        "equal, per method", verdict(many[i] == few[i]), {f"{long}_days": many[i], f"{short}_days": few[i]}))
    return rows


# -- S7: sync add on a big resource ----------------------------------------------------------
def add_latencies(root: str, records: int, adds: int, warmup: int, buckets: int | None) -> list[float]:
    import polars as pl

    import ecanalytics as ec

    rng = random.Random(11)
    with ec.connect(root) as db:
        db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", mode="sync", auto_consolidate=False))
        res = db.create_resource("acc", ATTRS, buckets=buckets)
        res.insert_many(pl.select(id=pl.format("acc-{}", pl.int_range(0, records))))
        for _ in range(warmup):
            res.add(f"acc-{rng.randrange(records)}", 1)
        latencies = []
        for _ in range(adds):
            rid = f"acc-{rng.randrange(records)}"
            started = time.perf_counter()
            res.add(rid, 1)
            latencies.append(time.perf_counter() - started)
    return latencies


def s7(args: argparse.Namespace, tmp: str) -> list[Row]:
    big = add_latencies(f"{tmp}/big", args.s7_records, args.s7_adds, args.s7_warmup, args.buckets)
    small = add_latencies(f"{tmp}/small", 10, args.s7_adds, args.s7_warmup, args.buckets)

    def summary(lat: list[float]) -> dict[str, float]:
        return {"p50_ms": statistics.median(lat) * 1e3, "p90_ms": statistics.quantiles(lat, n=10)[-1] * 1e3,
                "max_ms": max(lat) * 1e3, "mean_ms": statistics.fmean(lat) * 1e3}

    b, s = summary(big), summary(small)
    log(f"sync add p50: {b['p50_ms']:.1f} ms on {args.s7_records:,} records, {s['p50_ms']:.1f} ms on 10")
    return [Row("S7", f"sync add p50, local, {sci(args.s7_records)} vs 10 records", b["p50_ms"], s["p50_ms"], "ms",
                b["p50_ms"] / s["p50_ms"], "<= 2.00x", verdict(b["p50_ms"] <= 2 * s["p50_ms"]),
                {"big": b, "small": s, "adds": args.s7_adds, "warmup": args.s7_warmup})]


# -- S8: sync add on moto, through bench/sync.py ---------------------------------------------
_SYNC_LINES = (
    r"1 caller : (?P<req1>[\d.]+) requests/add (?P<calls1>\{.*\})",
    r"p50 (?P<p50>[\d.]+) ms, (?P<rate1>[\d.]+) adds/s \(a plain S3 PUT: (?P<put>[\d.]+)/s, "
    r"so an add costs (?P<trips>[\d.]+) PUT round trips\)",
    r"(?P<threads>\d+) threads: (?P<reqn>[\d.]+) requests/add, (?P<raten>[\d.]+) adds/s",
)


def s8(args: argparse.Namespace, tmp: str) -> list[Row]:
    import sync

    out = io.StringIO()
    argv = sys.argv
    sys.argv = ["sync.py", "--adds", str(args.s8_adds), "--threads", str(args.s8_threads)]
    try:
        with contextlib.redirect_stdout(out):
            sync.main()
    finally:
        sys.argv = argv
    text = out.getvalue()
    found: dict[str, str] = {}
    for pattern in _SYNC_LINES:
        match = re.search(pattern, text)
        if match is None:
            raise RuntimeError(f"bench/sync.py printed something this does not parse:\n{text}")
        found.update(match.groupdict())
    log(text.rstrip())
    req1, reqn, trips = float(found["req1"]), float(found["reqn"]), float(found["trips"])
    rate1, raten, threads = float(found["rate1"]), float(found["raten"]), int(found["threads"])
    details = {"bench/sync.py": text.strip().splitlines(), "p50_ms_1_caller": float(found["p50"])}
    return [
        Row("S8.req", f"sync add, moto: requests/add, {threads} threads vs 1 caller", reqn, req1, "req/add",
            reqn / req1, "report", "INFO", details),
        Row("S8.path", "sync add, moto: critical path, in plain-PUT round trips", trips, 1.0, "PUTs",
            trips, "report", "INFO", {"plain_put_per_s": float(found["put"])}),
        Row("S8.rate", f"sync add, moto: adds/s, {threads} threads vs 1 caller", raten, rate1, "adds/s",
            raten / rate1, "report", "INFO", {}),
    ]


TARGETS: dict[str, Callable[[argparse.Namespace, str], list[Row]]] = {
    "S1": s1, "S2": s2, "S3": s3, "S4": s4, "S5": s5, "S6": s6, "S7": s7, "S8": s8,
}


# -- driver ----------------------------------------------------------------------------------
def table(rows: list[Row]) -> str:
    head = ("id", "workload", "measured", "baseline", "ratio", "target", "verdict")
    cells = [head] + [(r.id, r.workload, fmt(r.measured, r.unit), fmt(r.baseline, r.unit),
                       "-" if r.ratio is None else f"{r.ratio:.2f}", r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(DEFAULT), help=f"targets, comma-separated (default {','.join(DEFAULT)})")
    p.add_argument("--json", action="store_true", help="rows as JSON Lines on stdout (the table goes to stderr)")
    p.add_argument("--n", type=sizes, default=10**7, help="S1 transactions, S3 rows (1e7)")
    p.add_argument("--records", type=sizes, default=10**5, help="S1, S3 records (1e5)")
    p.add_argument("--batch", type=sizes, default=10**5, help="rows per generated Parquet object (1e5)")
    p.add_argument("--buckets", type=int, default=None, help="buckets of every resource (library default)")
    p.add_argument("--budget-rows", type=sizes, default=None,
                   help="S1, S2: the consolidator's budget_rows (pending rows in memory before spilling; library default)")
    p.add_argument("--s2-n", type=sizes, default=10**8)
    p.add_argument("--s2-records", type=sizes, default=10**7)
    p.add_argument("--s3", action="store_true", help="S3 also on a moto server")
    p.add_argument("--s4-records", type=sizes, default=10**5)
    p.add_argument("--s5-applied", type=sizes, default=10**7)
    p.add_argument("--s5-records", type=sizes, default=10**6)
    p.add_argument("--s5-pending", type=sizes, default=10**4)
    p.add_argument("--s6-days", type=lambda s: tuple(sorted(int(d) for d in s.split(","))), default=(60, 600),
                   help="two day counts (60,600)")
    p.add_argument("--s6-objects", type=int, default=5, help="objects a day (5)")
    p.add_argument("--s6-rows", type=int, default=100, help="rows an object (100)")
    p.add_argument("--s7-records", type=sizes, default=10**6)
    p.add_argument("--s7-adds", type=int, default=200)
    p.add_argument("--s7-warmup", type=int, default=20)
    p.add_argument("--s8-adds", type=int, default=200)
    p.add_argument("--s8-threads", type=int, default=16)
    p.add_argument("--tmp", default=None, help="where the roots go (default: the system's temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the roots")
    args = p.parse_args(argv)
    args.only = [t.strip().upper() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(args.only) - set(ALL))
    if unknown or len(args.s6_days) != 2:
        p.error(f"unknown targets {unknown}" if unknown else "--s6-days takes two day counts, e.g. 60,600")
    return args


def main(argv: list[str]) -> int:
    if argv[:1] == ["--rusage"]:
        return rusage_main(argv[1:])
    if argv[:1] == ["--child"]:
        return child_main(*argv[1:5])
    args = parse(argv)
    rows: list[Row] = []
    for tid in args.only:
        tmp = tempfile.mkdtemp(prefix=f"ec-{tid.lower()}-", dir=args.tmp)
        log(f"{tid} in {tmp}")
        try:
            rows += TARGETS[tid](args, tmp)
        except Exception as exc:  # one target's failure is reported; the others still run
            log(f"{tid} failed: {type(exc).__name__}: {exc}")
            rows.append(Row(tid, f"failed: {type(exc).__name__}: {str(exc)[:70]}", None, None, "", None, "-", "ERROR",
                            {"error": f"{type(exc).__name__}: {exc}"}))
        finally:
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
    print(table(rows), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        for row in rows:
            print(json.dumps(asdict(row), default=str))
    verdicts = {r.verdict for r in rows}
    return 2 if "ERROR" in verdicts else 1 if "MISS" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
