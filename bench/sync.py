"""Sync writes on a moto S3 server: requests per add, sequential requests on the critical path,
and adds/s with 1 caller and with 16 threads (group commit), against the naive baseline of one
plain S3 PUT per add measured in the same process.

    python bench/sync.py [--adds 200] [--threads 16]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import statistics
import threading
import time
from typing import Any

import ecanalytics as ec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adds", type=int, default=200)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")

    db = ec.connect("s3://bench/sync", endpoint_url=endpoint)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", mode="sync"))
    w = db.create_resource("w", {"id": "string|required", "balance": "number|default:0"})
    w.add("warm", 1)  # loads the state once, as a long-running writer would have
    fs = db.store.fs
    counts: collections.Counter[str] = collections.Counter()
    original = fs._call_s3

    async def counting(method: str, *a: Any, **k: Any) -> Any:
        counts[method] += 1
        return await original(method, *a, **k)

    fs._call_s3 = counting

    latencies = []
    for i in range(args.adds):
        started = time.perf_counter()
        w.add(f"r{i % 50}", 1)
        latencies.append(time.perf_counter() - started)
    one = dict(counts)
    per_add_1 = sum(one.values()) / args.adds
    rate_1 = args.adds / sum(latencies)

    counts.clear()

    def writer(k: int) -> None:
        for j in range(args.adds // args.threads):
            w.add(f"t{k}-{j % 5}", 1)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(args.threads)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    n = args.threads * (args.adds // args.threads)
    per_add_16 = sum(counts.values()) / n
    rate_16 = n / elapsed

    fs._call_s3 = original
    put_started = time.perf_counter()
    for i in range(args.adds):
        asyncio.run_coroutine_threadsafe(original("put_object", Bucket="bench", Key=f"plain/{i}", Body=b"x"),
                                         fs.loop).result()
    put_rate = args.adds / (time.perf_counter() - put_started)
    db.close()
    server.stop()
    print(f"1 caller : {per_add_1:.2f} requests/add {dict(sorted(one.items()))}")
    print(f"           p50 {statistics.median(latencies) * 1000:.1f} ms, {rate_1:.1f} adds/s "
          f"(a plain S3 PUT: {put_rate:.0f}/s, so an add costs {put_rate / rate_1:.1f} PUT round trips)")
    print(f"{args.threads} threads: {per_add_16:.2f} requests/add, {rate_16:.1f} adds/s "
          f"({rate_16 / rate_1:.1f}x one caller)")


if __name__ == "__main__":
    main()
