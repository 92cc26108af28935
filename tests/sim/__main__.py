"""Soak and replay: ``python -m tests.sim --seeds 100000 [--backend memory|local|s3] [--start N]``.

``--seed N`` replays one seed and prints its trace of storage calls; ``--scenario bug3`` replays
one focused known-bug scenario. ``--profile`` picks the fault class (default ``swarm``, a random
mix per seed). ``--inject NAME`` re-injects an old bug (see :mod:`tests.sim.inject`), to show
that the soak finds it: ``--stop-at-first`` then stops at the first failing seed and prints how
many seeds and seconds that took. Run it from the repository root.
"""

from __future__ import annotations

import os

# One Polars thread: the simulation runs one actor at a time on frames of a few rows, where a
# thread pool only adds wake-ups (about a third of the system time of a soak). Set before
# anything imports Polars; an explicit POLARS_MAX_THREADS wins.
os.environ.setdefault("POLARS_MAX_THREADS", "1")

import argparse
import contextlib
import logging
import multiprocessing
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator

from tests.sim.inject import names as injections
from tests.sim.simulator import PROFILES, SCENARIOS, SimResult, run_job, run_scenario, run_seed


@contextlib.contextmanager
def _moto() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with the bucket ``sim``; yields its endpoint."""
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": os.devnull,
                       "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    import boto3  # type: ignore[import-untyped]
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="sim")
    try:
        yield endpoint
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__)
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds to run")
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--seed", type=int, help="replay one seed with its trace")
    parser.add_argument("--backend", choices=("memory", "local", "s3"), default="memory")
    parser.add_argument("--profile", choices=PROFILES, default="swarm")
    parser.add_argument("--scenario", choices=SCENARIOS, help="replay one focused known-bug scenario with its trace")
    parser.add_argument("--quiet", action="store_true", help="print failures only at the end")
    parser.add_argument("--inject", choices=injections(), help="re-inject an old bug (tests/sim/inject.py)")
    parser.add_argument("--stop-at-first", action="store_true", help="stop at the first failing seed")
    parser.add_argument("--jobs", type=int, default=1,
                        help="worker processes (memory and local backends; seeds and results stay in order)")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the library logs the faults we inject
    if args.scenario:
        with _moto() if args.backend == "s3" else contextlib.nullcontext() as endpoint:
            uri = f"s3://sim/{args.scenario}-{uuid.uuid4().hex[:6]}" if endpoint else None
            result = run_scenario(args.scenario, args.backend, uri=uri, endpoint_url=endpoint, trace=True)
        print("\n".join(result.trace))
        print(result.summary())
        return 0 if result.ok else 1
    seeds = [args.seed] if args.seed is not None else range(args.start, args.start + args.seeds)
    with _moto() if args.backend == "s3" else contextlib.nullcontext() as endpoint:
        failures: list[SimResult] = []
        tags: Counter[str] = Counter()
        first: dict[str, int] = {}
        started = time.perf_counter()
        pool = None
        if args.jobs > 1 and args.seed is None and not endpoint:
            pool = multiprocessing.get_context("spawn").Pool(args.jobs)
            results: Iterator[SimResult] = pool.imap(
                run_job, [(seed, args.backend, args.profile, args.inject) for seed in seeds], chunksize=8)
        else:
            results = (run_seed(seed, args.backend, profile=args.profile, endpoint_url=endpoint,
                                uri=f"s3://sim/{seed}-{uuid.uuid4().hex[:6]}" if endpoint else None,
                                trace=args.seed is not None, inject=args.inject) for seed in seeds)
        for i, (seed, result) in enumerate(zip(seeds, results, strict=True), 1):
            if args.seed is not None:
                print("\n".join([*result.trace, result.summary()]))
            if not result.ok:
                failures.append(result)
                for tag in sorted(result.tags):
                    tags[tag] += 1
                    first.setdefault(tag, seed)
                if not args.quiet and args.seed is None:
                    print(result.summary(), flush=True)
                if args.stop_at_first:
                    elapsed = time.perf_counter() - started
                    print(f"first failing seed {seed}: found after {i} seeds in {elapsed:.1f}s "
                          f"({args.backend}/{args.profile}{', inject ' + args.inject if args.inject else ''})")
                    print(result.summary())
                    if pool is not None:
                        pool.terminate()
                    return 1
            if i % 100 == 0:
                elapsed = time.perf_counter() - started
                print(f"... {i} seeds, {i / elapsed:.2f} seeds/s, {len(failures)} failing", file=sys.stderr, flush=True)
        elapsed = time.perf_counter() - started
        if pool is not None:
            pool.close()
    n = len(seeds)
    print(f"\n{n} seeds ({args.backend}/{args.profile}) in {elapsed:.1f}s: {n / elapsed:.2f} seeds/s; "
          f"{len(failures)} failing")
    for tag, count in tags.most_common():
        print(f"  {tag}: {count} seeds, first seed {first[tag]} (found after {seeds.index(first[tag]) + 1 if isinstance(seeds, range) else 1} seeds)")
    if failures:
        print("failing seeds:", " ".join(str(r.seed) for r in failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
