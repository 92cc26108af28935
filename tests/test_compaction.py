"""Compaction through the commit log: no reader through ecanalytics ever counts a transaction
twice or misses one, at any step of a run, after a crash in it, or after it."""

from __future__ import annotations

import collections
import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cli
from ecanalytics.ledger.transactions import history_keys
from tests.conftest import Root

DATASET = "wallets_transactions_balance"


def small_objects(root: Root) -> tuple[ec.Database, ec.Resource, collections.Counter[str], dict[str, float]]:
    rng = random.Random(21)
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    ids: collections.Counter[str] = collections.Counter()
    t0 = datetime(2026, 11, 20, 12, tzinfo=UTC)
    for i in range(36):
        w.add(f"r{i % 4}", float(rng.randrange(1, 50)), id=f"k{i:03d}", timestamp=t0 + timedelta(days=i % 3, minutes=i))
        ids[f"k{i:03d}"] += 1
    db.consolidate()
    w.add("r0", 7, id="pending-1", timestamp=t0)  # pending: never compacted
    ids["pending-1"] += 1
    return db, w, ids, dict(zip(w.to_polars()["id"].to_list(), w.to_polars()["balance"].to_list(), strict=True))


def check(db: ec.Database, w: ec.Resource, ids: collections.Counter[str], *, pending: bool = True) -> None:
    txs = db.resources[DATASET].query()  # type: ignore[union-attr]
    assert collections.Counter(txs["id"].to_list()) == ids
    got = db.sql(f"SELECT id, count(*) FROM {DATASET} GROUP BY id").fetchall()
    assert dict(got) == dict(ids)
    assert db.sql("SELECT count(*) FROM ec_transactions").fetchall() == [(sum(ids.values()),)]
    assert txs.filter(pl.col("id") == "pending-1")["applied"].to_list() == [not pending]


def test_compaction_merges_and_changes_nothing_visible(root: Root) -> None:
    db, w, ids, before = small_objects(root)
    objects_before = len(history_keys(db.store, DATASET))
    result = w.compact(target_rows=8)
    assert result.partitions == 3 and result.sources == 36 and result.merged == 6  # 12 rows a day -> 2 objects
    assert len(history_keys(db.store, DATASET)) == objects_before - 36 + 6
    check(db, w, ids)
    assert w.recalculate().changed == 0
    assert ec.reports.run(db, "reconciliation").height == 0
    db.consolidate()  # the pending one still applies, once
    assert w.get("r0")["balance"] == before["r0"] + 7
    again = w.compact(target_rows=8)  # day 0 now holds 2 merged objects + the applied one: 13 rows fit in 2
    assert (again.partitions, again.sources, again.merged) == (1, 3, 2)
    check(db, w, ids, pending=False)
    assert w.compact(target_rows=8).version is None  # nothing left to merge


@pytest.mark.parametrize("step", ["after_delta", "after_log", "compaction_delete"])
def test_readers_are_exact_at_every_step_and_after_a_crash(root: Root, step: str) -> None:
    db, w, ids, before = small_objects(root)
    seen: list[str] = []

    def probe(at: str) -> None:
        seen.append(at)
        check(db, w, ids)  # readers mid-run
        if at == step:
            raise RuntimeError(f"simulated crash at {at}")

    w.ledger.fault = probe
    with pytest.raises(RuntimeError):
        w.compact(target_rows=8)
    w.ledger.fault = None
    assert step in seen
    db2 = root.connect()
    w2 = db2.resources["wallets"]
    assert isinstance(w2, ec.Resource)
    check(db2, w2, ids)  # after the crash, before any rerun
    w2.compact(target_rows=8)
    check(db2, w2, ids)
    assert dict(zip(w2.to_polars()["id"].to_list(), w2.to_polars()["balance"].to_list(), strict=True)) == before
    assert w2.recalculate().changed == 0


def test_compact_cli(root: Root) -> None:
    db, w, ids, _before = small_objects(root)
    env = {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}
    res = CliRunner().invoke(cli, ["compact", "--root", root.uri, "--output", "json"], env=env)
    assert res.exit_code == 0, res.output
    assert '"merged": 3' in res.output  # one object per day with the default target
    check(db, w, ids)


