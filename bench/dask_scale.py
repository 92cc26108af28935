"""Cluster consolidation alone, at sizes whose in-memory comparison tables do not fit one machine.

    python bench/dask_scale.py --n 1e8 --records 10000000 --workers 2

Writes ``--n`` transactions over ``--records`` records (bench/consolidate.py's generator), then
consolidates them once with ``db.consolidate(client=...)`` on a ``LocalCluster`` of ``--workers``
processes, and prints the time, the engine's phases and the peak RSS of each worker and of the
driver. Then (unless ``--no-single``) it consolidates a copy of the same objects in this process,
after the cluster has shut down, checks that every value equals the cluster's, and prints the
ratio (issue 17's target: the cluster's time at most the single process's).
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time

import consolidate as bench  # type: ignore[import-not-found]

import ecanalytics as ec


def peak_mb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, default=1e8)
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-single", action="store_true", help="skip the single-process run of the same objects")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="ec-dask-scale-")
    try:
        root = f"{tmp}/root"
        started = time.perf_counter()
        bench.generate(root, int(args.n), args.records, 100_000, seed=7)
        print(f"wrote {int(args.n):,} transactions over {args.records:,} records in {time.perf_counter() - started:.1f}s")
        twin = f"{tmp}/twin"
        if not args.no_single:
            shutil.copytree(root, twin)
        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            db = ec.connect(root)
            started = time.perf_counter()
            (result,) = db.consolidate(client=client)
            elapsed = time.perf_counter() - started
            print(f"dask local:{args.workers}: {elapsed:.2f}s, {result.transactions:,} transactions, engine {result.engine}")
            for worker, mb in sorted(client.run(peak_mb).items()):
                print(f"worker {worker}: peak RSS {mb:,} MB")
            print(f"driver: peak RSS {peak_mb():,} MB")
        if not args.no_single:
            started = time.perf_counter()
            values, _engine = bench.consolidate_with(twin)
            alone = time.perf_counter() - started
            same = values.sort("originalId").equals(result.values.rename({"id": "originalId"}).sort("originalId"))
            assert same, "the cluster's values differ from the single process's"
            print(f"one process: {alone:.2f}s; cluster / one process = {elapsed / alone:.2f} "
                  f"({'met' if elapsed <= alone else 'not met'}: target <= 1.00); every value agrees")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
