"""Process entry points for the multi-process tests (importable by spawned children)."""

from __future__ import annotations

import os
import random
import time

import ecanalytics as ec


def plan(writer: int, n: int, records: int) -> list[tuple[str, str, str, float]]:
    """The deterministic transactions of one writer: (key, record, op, amount)."""
    rng = random.Random(1000 + writer)
    return [(f"w{writer}-{i}", f"r{rng.randrange(records)}", rng.choice(["add", "add", "sub"]), float(rng.randrange(1, 100)))
            for i in range(n)]


def writer(uri: str, endpoint: str | None, index: int, n: int, records: int, batch: bool) -> None:
    db = ec.connect(uri, endpoint_url=endpoint)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               batch_transactions=batch, batch_size=7, flush_interval=3600))
    wallets = db.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    for i, (key, rid, op, amount) in enumerate(plan(index, n, records)):
        getattr(wallets, op)(rid, amount, id=key)
        if i % 10 == 3:
            getattr(wallets, op)(rid, amount, id=key)  # a client retry: must count once
    db.close()


def consolidator(uri: str, endpoint: str | None, stop_file: str) -> None:
    db = ec.connect(uri, endpoint_url=endpoint)
    while not os.path.exists(stop_file):
        db.consolidate()
        time.sleep(0.01)
    db.consolidate()
    db.close()


def crash_at(uri: str, endpoint: str | None, step: str) -> None:
    """Consolidate, but die abruptly (no cleanup, no atexit) at ``step`` of the commit."""
    db = ec.connect(uri, endpoint_url=endpoint)
    resource = db.resources["wallets"]
    assert isinstance(resource, ec.Resource)

    def die(at: str) -> None:
        if at == step:
            os._exit(17)

    resource.ledger.fault = die
    db.consolidate()
    os._exit(0)
