"""Consolidations of different fields of one resource commute: a lost race to another field's
commit keeps its fold (issue 17, item 3)."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import ecanalytics as ec
from tests.conftest import Root

FIELDS = ("balance", "points")


def open_db(root: Root) -> ec.Database:
    """A connection with both fields managed (a process of its own, as far as state goes)."""
    db = root.connect()
    for f in FIELDS:
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field=f, auto_consolidate=False))
    return db


def objects(db: ec.Database, dataset: str) -> set[str]:
    return {k for k in db.store.find(dataset, ".parquet") if "/_" not in k}


def setup(root: Root, seed: int) -> tuple[ec.Database, dict[str, dict[str, float]], set[str]]:
    """Wallets with pending adds, subs and sets on both fields; the expected values, by field, and
    the pending objects of ``balance``."""
    db = root.connect()
    db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0",
                                   "owner": "string|default:nobody"})
    for f in FIELDS:
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field=f, auto_consolidate=False))
    wallets = db.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    rnd = random.Random(seed)
    expected: dict[str, dict[str, float]] = {f: defaultdict(float) for f in FIELDS}
    for round_ in range(3):  # several rounds: each consolidated in turn, so records exist before the race
        for _ in range(12):
            f, rec, amount = rnd.choice(FIELDS), f"w{rnd.randrange(6)}", float(rnd.randrange(1, 50))
            op = rnd.choice(("add", "add", "sub", "set"))
            getattr(wallets, op)(rec, f, amount)
            expected[f][rec] = amount if op == "set" else expected[f][rec] + (amount if op != "sub" else -amount)
        if round_ < 2:
            db.consolidate()
            applied = objects(db, "wallets_transactions_balance")
    return db, expected, objects(db, "wallets_transactions_balance") - applied


def counting_gets(db: ec.Database, dataset: str) -> dict[str, int]:
    """Count the reads of each transaction object of ``dataset`` through ``db``'s store."""
    counts: dict[str, int] = defaultdict(int)
    store, read_many = db.store, db.store.read_many

    def counted(rels: Any) -> Any:
        for rel in rels:
            if rel.startswith(dataset + "/cohort"):
                counts[rel] += 1
        return read_many(rels)

    store.read_many = counted  # type: ignore[method-assign]
    return counts


def table(db: ec.Database) -> dict[str, dict[str, Any]]:
    frame = db.resources["wallets"].to_polars()  # type: ignore[union-attr]
    return {row["id"]: row for row in frame.to_dicts()}


def test_consolidations_of_two_fields_racing_both_commit_and_read_each_object_once(root: Root) -> None:
    _db, expected, pending = setup(root, seed=3)
    assert pending
    loser, winner = open_db(root), open_db(root)
    reads = counting_gets(loser, "wallets_transactions_balance")
    ledger = loser.resources["wallets"].ledger  # type: ignore[union-attr]
    raced: list[int] = []

    def race(step: str) -> None:
        if step == "after_delta" and not raced:  # the loser's delta is written; its entry not yet
            raced.append(winner.consolidate("wallets", "points")[0].version or 0)

    ledger.fault = race
    result = loser.consolidate("wallets", "balance")[0]
    ledger.fault = None
    assert raced and result.version == raced[0] + 1  # it lost once, then committed after the winner
    assert result.engine.get("commuted") == 1  # ... without folding again
    assert dict(reads) == dict.fromkeys(pending, 1)  # each pending object read once, nothing else
    # Both fields hold their own values: the loser's records carry the winner's points.
    for check in (loser, open_db(root)):
        rows = table(check)
        for f in FIELDS:
            assert {r: rows[r][f] for r in expected[f]} == dict(expected[f])
        assert {r["owner"] for r in rows.values()} == {"nobody"}
    again = open_db(root)
    assert [r.transactions for r in again.consolidate()] == [0, 0]  # nothing applied twice or left behind


def lose_once_to(root: Root, seed: int, meanwhile: Callable[[ec.Resource], None]) -> tuple[Any, dict[str, dict[str, float]]]:
    """Consolidate ``balance`` on one connection while ``meanwhile`` commits through another
    (between the loser's delta and its log entry): (the loser's result, the expected values)."""
    _db, expected, _pending = setup(root, seed)
    loser, other = open_db(root), open_db(root)
    wallets = other.resources["wallets"]
    assert isinstance(wallets, ec.Resource)
    ledger = loser.resources["wallets"].ledger  # type: ignore[union-attr]
    raced: list[bool] = []

    def race(step: str) -> None:
        if step == "after_delta" and not raced:
            raced.append(True)
            meanwhile(wallets)

    ledger.fault = race
    try:
        result = loser.consolidate("wallets", "balance")[0]
    finally:
        ledger.fault = None
    assert raced
    return result, expected


def test_a_lost_race_to_the_same_field_folds_again(root: Root) -> None:
    def same_field(wallets: ec.Resource) -> None:
        wallets.add("w1", "balance", 1000)  # one more pending transaction, applied by the winner
        wallets.consolidate("w1", "balance")

    result, expected = lose_once_to(root, 5, same_field)
    assert "commuted" not in result.engine
    expected["balance"]["w1"] += 1000
    rows = table(open_db(root))
    assert {r: rows[r]["balance"] for r in expected["balance"]} == dict(expected["balance"])


def test_a_record_written_through_the_api_meanwhile_means_folding_again(root: Root) -> None:
    def api_write(wallets: ec.Resource) -> None:
        wallets.update("w2", {"owner": "ada"})

    result, expected = lose_once_to(root, 7, api_write)
    assert "commuted" not in result.engine
    rows = table(open_db(root))
    assert rows["w2"]["owner"] == "ada"
    assert {r: rows[r]["balance"] for r in expected["balance"]} == dict(expected["balance"])
