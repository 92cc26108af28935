"""Sustained load: writers adding through the write buffer while the background thread
consolidates every few seconds (issue 17: every cycle within 1.5x of the others, checkpoints
included).

``--threads`` writer threads call ``add`` on ``--records`` records at ``--rate`` adds per second in
all, through ``batch_transactions=True`` (one object per ``--batch`` buffered adds or per second),
for ``--seconds``; the plugin consolidates every ``--interval`` seconds on its own thread, with the
default checkpoint interval (10 commits). Each cycle's duration comes from the ``consolidated``
event (``durationMs``: list, read, fold, commit and, every tenth commit, the checkpoint). At the
end every value must equal the number of adds of its record.

    python bench/sustained.py                       # 4 threads, ~33,000 adds/s, every 5 s, 150 s
    python bench/sustained.py --seconds 60 --records 100000
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections import Counter
from typing import Any

import ecanalytics as ec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rate", type=float, default=33_000, help="adds per second, all threads together")
    parser.add_argument("--records", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between consolidations")
    parser.add_argument("--batch", type=int, default=5_000, help="buffered adds per object")
    args = parser.parse_args()
    cycles: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ec-sustained-") as root:
        db = ec.connect(root)
        plugin = ec.EventualConsistencyPlugin(
            resource="wallets", field="balance", batch_transactions=True, batch_size=args.batch, flush_interval=1.0,
            auto_consolidate=True, consolidation_interval=args.interval)
        db.use_plugin(plugin)
        wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
        assert isinstance(wallets, ec.Resource)
        ledger = wallets.ledger
        plugin.on("eventual-consistency.consolidated", lambda p: cycles.append(
            {**p, "checkpoint": ledger.state().checkpoint_version == p["version"]}))
        counts: list[Counter[str]] = [Counter() for _ in range(args.threads)]
        stop = time.monotonic() + args.seconds

        def writer(i: int) -> None:
            rnd, per_tick = random.Random(i), args.rate / args.threads / 10
            tick = time.monotonic()
            while (now := time.monotonic()) < stop:
                for _ in range(int(per_tick)):
                    rec = f"r{rnd.randrange(args.records)}"
                    wallets.add(rec, 1)
                    counts[i][rec] += 1
                tick += 0.1
                time.sleep(max(0.0, tick - now - (time.monotonic() - now)))

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(args.threads)]
        started = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        total = sum(counts, Counter())
        timed = list(cycles)  # the background cycles that ran under load
        db.consolidate()  # the rest, after the writers stopped (flushes the buffer first)
        table = wallets.to_polars()
        values = dict(zip(table["id"].to_list(), table["balance"].to_list(), strict=True))
        db.close()
    assert values == {k: float(v) for k, v in total.items()}, "values differ from the adds"
    print(f"{sum(total.values()):,} adds in {elapsed:.1f}s ({sum(total.values()) / elapsed:,.0f}/s) over "
          f"{len(total):,} records; every value equals its adds")
    print(f"{'cycle':>5}{'version':>9}{'transactions':>14}{'seconds':>9}  checkpoint")
    for i, c in enumerate(timed):
        print(f"{i:>5}{c['version'] or 0:>9}{c['transactions']:>14,}{c['durationMs'] / 1000:>9.3f}  {'yes' if c['checkpoint'] else ''}")
    busy = [c["durationMs"] / 1000 for c in timed if c["transactions"]]
    if busy:
        worst, median = max(busy), statistics.median(busy)
        print(f"cycles with work: {len(busy)}; median {median:.3f}s, slowest {worst:.3f}s: {worst / median:.2f}x the median "
              f"({'met' if worst <= 1.5 * min(busy) else 'missed'}: every cycle within 1.5x of the others, "
              f"slowest/fastest {worst / min(busy):.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
