"""Small commits on a big resource against the same commits on an empty one (issue 17, item 2).

Builds a resource of ``--records`` records from ``--applied`` applied transactions (consolidated
and checkpointed), and an empty resource of the same schema. Then, on each, ``--rounds`` rounds
(default 10: one default checkpoint interval, so exactly one round writes a checkpoint): write
``--pending`` transactions over the same record ids (not timed), consolidate (timed). By default
one connection serves all rounds, as a long-lived ``async`` consolidator does; ``--fresh`` opens a
new connection every round, as a cron job does (its state is read again each time).

Prints every round's seconds on both, the totals and their ratio (target: big <= 2x empty,
checkpoints included), and how many record rows the checkpoint round wrote.

    python bench/small_commits.py                          # 1e4 pending on 1e7 applied / 1e6 records
    python bench/small_commits.py --fresh
    python bench/small_commits.py --applied 2e6 --rounds 20
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import polars as pl

sys.path.insert(0, os.path.dirname(__file__))
import consolidate as bc  # the shared generator of bench/consolidate.py
import ingest

import ecanalytics as ec


def checkpoint_rows(root: str) -> int:
    """Record rows in the newest checkpoint's records objects written at its own version."""
    import json
    import pathlib

    hint = json.loads(pathlib.Path(f"{root}/{bc.RESOURCE}/_log/_last_checkpoint.json").read_text())
    prefix = f"{hint['version']:020d}-"
    names = [n for n in os.listdir(f"{root}/{bc.RESOURCE}/_data") if n.startswith(prefix) and ".checkpoint-b" in n]
    return sum(pl.scan_parquet(f"{root}/{bc.RESOURCE}/_data/{n}").select(pl.len()).collect().item() for n in names)


def rounds(root: str, args: argparse.Namespace) -> tuple[list[float], list[int]]:
    """(seconds of each round's consolidation, the checkpoint rows each round wrote)."""
    seconds, written = [], []
    db = None
    for r in range(args.rounds):
        # Each round 27 days of traffic after the last (ingest.frame spans 27 days): nothing is late.
        pending = ingest.frame(int(args.pending), args.records).with_columns(
            pl.col("timestamp") + pl.duration(days=28 + 27 * r))
        if db is None or args.fresh:
            if db is not None:
                db.close()
            db = ec.connect(root)
        resource = db.resources[bc.RESOURCE]
        assert isinstance(resource, ec.Resource)
        resource.write_transactions(pending)
        before = resource.ledger.state().checkpoint_version
        started = time.perf_counter()
        result = db.consolidate(bc.RESOURCE, bc.FIELD)[0]
        seconds.append(time.perf_counter() - started)
        assert result.transactions == pending.height, result
        written.append(checkpoint_rows(root) if resource.ledger.state().checkpoint_version != before else 0)
    assert db is not None
    db.close()
    return seconds, written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--applied", type=float, default=1e7)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--pending", type=float, default=1e4)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--fresh", action="store_true", help="a new connection every round (a cron job)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ec-small-") as tmp:
        big, empty = f"{tmp}/big", f"{tmp}/empty"
        started = time.perf_counter()
        bc.generate(big, int(args.applied), args.records, 100_000, seed=7)
        with ec.connect(big, checkpoint_interval=1) as db:
            db.consolidate()
        bc.generate(empty, 0, args.records, 100_000, seed=7)
        print(f"built {args.applied:.0e} applied over {args.records:,} records in {time.perf_counter() - started:.1f}s")
        on_big, big_rows = rounds(big, args)
        on_empty, empty_rows = rounds(empty, args)
    print(f"{'round':>5}{'big s':>9}{'empty s':>9}{'ckpt rows (big)':>17}")
    for r, (b, e, w) in enumerate(zip(on_big, on_empty, big_rows, strict=True)):
        print(f"{r:>5}{b:>9.3f}{e:>9.3f}{w:>17,}")
    ratio = sum(on_big) / sum(on_empty)
    print(f"total: big {sum(on_big):.3f}s, empty {sum(on_empty):.3f}s: {ratio:.2f}x "
          f"({'met' if ratio <= 2 else 'missed'}: target <= 2x, {'fresh connection per round' if args.fresh else 'one connection'})")
    print(f"checkpoint rows written on the big resource: {sum(big_rows):,} (empty: {sum(empty_rows):,}); "
          f"slowest round / median: {max(on_big) / sorted(on_big)[len(on_big) // 2]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
