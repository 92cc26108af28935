"""DataFrames in: ``write_transactions`` and ``insert_many`` against plain Polars on the same data.

Baseline, in the same process: Polars writing the same frame as zstd Parquet, one file per cohort
day (``write_parquet`` per ``group_by`` day), which is the I/O floor ecanalytics adds validation,
sorting, inbox markers and cohort computation to.

    python bench/ingest.py                     # 10^7 transactions, 10^5 records, local folder
    python bench/ingest.py --n 1e6 --s3        # also on a moto S3 server on 127.0.0.1
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime

import polars as pl

import ecanalytics as ec


def frame(n: int, records: int) -> pl.DataFrame:
    i = pl.int_range(0, n, eager=True)
    rnd = (i * 2654435761 + 17) % 1_000_000_007
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp() * 1e6)
    return pl.DataFrame({"i": i}).select(
        originalId=pl.format("acc-{}", (rnd % records).cast(pl.String)),
        value=((rnd * 7) % 1000).cast(pl.Float64),
        operation=pl.when(rnd % 20 == 0).then(pl.lit("set")).when(rnd % 20 < 7).then(pl.lit("sub")).otherwise(pl.lit("add")),
        timestamp=pl.lit(start) + (pl.col("i") * (27 * 86400 * 10**6 // n)).cast(pl.Datetime("us", "UTC")).cast(pl.Int64),
    ).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))


def polars_baseline(df: pl.DataFrame, root: str) -> float:
    started = time.perf_counter()
    for (day,), part in df.with_columns(d=pl.col("timestamp").dt.date()).group_by("d"):
        part.drop("d").write_parquet(f"{root}/{day}.parquet", compression="zstd", statistics=True)
    return time.perf_counter() - started


def run(uri: str, df: pl.DataFrame, records: int, endpoint: str | None = None) -> tuple[float, float]:
    db = ec.connect(uri, endpoint_url=endpoint)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", auto_consolidate=False))
    acc = db.create_resource("acc", {"id": "string|required", "balance": "number|default:0", "tier": "string|default:a"})
    ids = pl.DataFrame({"id": [f"acc-{i}" for i in range(records)]})
    started = time.perf_counter()
    acc.insert_many(ids)
    insert_s = time.perf_counter() - started
    started = time.perf_counter()
    acc.write_transactions(df)
    write_s = time.perf_counter() - started
    db.close()
    return insert_s, write_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, default=1e7)
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--s3", action="store_true", help="also measure on a moto server on 127.0.0.1")
    args = parser.parse_args()
    n = int(args.n)
    df = frame(n, args.records)
    tmp = tempfile.mkdtemp(prefix="ec-ingest-")
    try:
        base = polars_baseline(df, tmp)
        insert_s, write_s = run(f"{tmp}/root", df, args.records)
        print(f"{n:,} transactions over {args.records:,} records, local folder")
        print(f"  polars write_parquet per day : {base:7.2f}s  {n / base / 1e6:6.2f} M rows/s")
        print(f"  write_transactions          : {write_s:7.2f}s  {n / write_s / 1e6:6.2f} M rows/s  "
              f"({write_s / base:.2f}x the Polars baseline)")
        print(f"  insert_many of {args.records:,} records: {insert_s:.2f}s (one commit)")
        if args.s3:
            import logging

            from moto.server import ThreadedMotoServer

            logging.getLogger("werkzeug").setLevel(logging.ERROR)

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            import boto3

            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         aws_access_key_id="x", aws_secret_access_key="x").create_bucket(Bucket="bench")
            import os

            os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x")
            s3_insert, s3_write = run("s3://bench/ingest", df, args.records, endpoint)
            print(f"  moto S3: write_transactions {s3_write:.2f}s ({n / s3_write / 1e6:.2f} M rows/s), "
                  f"insert_many {s3_insert:.2f}s")
            server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
