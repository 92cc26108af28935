"""Consolidation cost grows with the pending work, never with the history (DESIGN §4)."""

from __future__ import annotations

import collections
from typing import Any

import pytest

import ecanalytics as ec
from tests.conftest import Root


def count_store_calls(db: ec.Database) -> collections.Counter[str]:
    """Count the objects the store reads and the listings it makes."""
    counts: collections.Counter[str] = collections.Counter()
    store = db.store
    read, read_many, list_, find = store.read, store.read_many, store.listdir_times, store.find

    def c_read(rel: str) -> bytes:
        counts["get"] += 1
        return read(rel)

    def c_read_many(rels: Any) -> Any:
        counts["get"] += len(rels)
        return read_many(rels)

    def c_list(rel: str) -> Any:
        counts["list"] += 1
        return list_(rel)

    def c_find(rel: str, suffix: str = "") -> Any:
        counts["find"] += 1
        return find(rel, suffix)

    store.read, store.read_many, store.listdir_times, store.find = c_read, c_read_many, c_list, c_find  # type: ignore[method-assign]
    return counts


def consolidation_costs(root: Root, rounds: int, per_round: int) -> list[dict[str, int]]:
    db = root.connect(checkpoint_interval=1000)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    counts = count_store_calls(db)
    costs = []
    for r in range(rounds):
        for i in range(per_round):
            wallets.add(f"w{(r * per_round + i) % 7}", 1)
        counts.clear()
        db.consolidate()
        costs.append(dict(counts))
    return costs


def test_consolidation_reads_only_pending_objects(root: Root) -> None:
    costs = consolidation_costs(root, rounds=6, per_round=5)
    # per round: 5 pending objects, 1 log probe, 1 inbox listing; never a recursive listing
    assert costs[1] == costs[-1] == {"get": 5 + 1, "list": 1}


@pytest.mark.s3
def test_s3_request_counts_do_not_grow_with_history(s3_root: Root) -> None:
    db = s3_root.connect(checkpoint_interval=1000)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    fs = db.store.fs
    counts: collections.Counter[str] = collections.Counter()
    original = fs._call_s3

    async def counting(method: str, *args: Any, **kwargs: Any) -> Any:
        counts[method] += 1
        return await original(method, *args, **kwargs)

    fs._call_s3 = counting
    per_round = []
    for r in range(5):
        for i in range(4):
            wallets.add(f"w{i}", r)
        counts.clear()
        db.consolidate()
        per_round.append(dict(counts))
    # 4 object GETs + 1 log probe; 1 LIST of the inbox; 1 PUT of the log entry (a delta of 4 records
    # and their event-time marks travel inside it); 1 batch DELETE (of the markers just consumed;
    # the next LIST confirms they are gone)
    expected = {"get_object": 5, "list_objects_v2": 1, "put_object": 1, "delete_objects": 1}
    assert per_round[1] == per_round[-1] == expected
    counts.clear()
    db.consolidate()
    assert dict(counts) == {"get_object": 1, "list_objects_v2": 1}  # nothing pending: two requests
