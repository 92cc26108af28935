"""A read of the whole commit log (``Ledger.entries``) on S3: in concurrent batches, against one
entry after another.

Every log entry up to the state's version is read (its ``insert`` entries kept) whenever
``Field.base`` is needed: recalculation, retention, the reconciliation report's bases, and a
callable reducer's late rows. This bench starts a moto S3 server in a process of its own (moto's
``[server]`` extra, which the dev extra installs), commits ``--inserts`` inserts to one resource,
and times ``ledger.entries(("insert",), upto=version)`` against the loop it replaced
(``read_entry`` for version 1, 2, ... until one is missing), with ``--latency`` seconds added to
every GET (an ``asyncio.sleep`` before s3fs's ``_cat_file``: moto on this machine answers in
about 3 ms, S3 in tens of milliseconds). Both must return the same entries.

    python bench/log_read.py                          # 200 inserts, 20 ms a GET
    python bench/log_read.py --latency 0.05 --inserts 500
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any

import boto3
import s3fs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inserts", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to every GET")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="ec-bench")
                break
            except Exception:
                time.sleep(0.1)
        real = s3fs.S3FileSystem._cat_file

        async def slow(self: Any, *a: Any, **k: Any) -> Any:
            await asyncio.sleep(args.latency)  # a round trip to S3
            return await real(self, *a, **k)

        s3fs.S3FileSystem._cat_file = slow  # type: ignore[method-assign]
        import ecanalytics as ec

        db = ec.connect("s3://ec-bench/root", endpoint_url=endpoint)
        db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
        w = db.create_resource("w", {"id": "string|required", "balance": "number|default:0"})
        assert isinstance(w, ec.Resource)
        for i in range(args.inserts):
            w.insert({"id": f"r{i}", "balance": float(i)})
        ledger = w.plugin("balance").consolidator.ledger
        print(f"{ledger.state().version} log entries on moto S3, {args.latency * 1000:.0f} ms added to every GET")
        for _ in range(args.repeat):
            started = time.perf_counter()
            batched = ledger.entries(("insert",), upto=ledger.state().version)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            one_by_one, version = [], 1
            while (entry := ledger.read_entry(version)) is not None:
                if entry.kind == "insert":
                    one_by_one.append(entry)
                version += 1
            baseline = time.perf_counter() - started
            assert [e.version for e in batched] == [e.version for e in one_by_one] and len(batched) == args.inserts
            print(f"entries() {seconds:.3f}s; one entry after another {baseline:.3f}s: {baseline / seconds:.1f}x faster")
        db.close()
    finally:
        server.terminate()
        server.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
