"""Never trust a delete: the four double applications of the fault report, on every backend.

Each test injects a delete (or flush) fault that *reports nothing*, and checks the values against
the arithmetic of the acknowledged writes. Correctness must not depend on a delete having happened.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cli
from tests.conftest import Root


def wallets(root: Root, **plugin: Any) -> tuple[ec.Database, ec.Resource]:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False, **plugin))
    return db, db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})


def patch_delete(db: ec.Database, fault: Callable[[list[str], Callable[[Iterable[str]], list[str]]], list[str]]) -> None:
    original = db.store.delete
    db.store.delete = lambda rels: fault(list(rels), original)  # type: ignore[method-assign]


def first_key_fails_silently(rels: list[str], delete: Callable[[Iterable[str]], list[str]]) -> list[str]:
    delete(rels[1:])
    return []  # like s3fs: a 200 with a per-key <Error> is not reported


def denied_silently(rels: list[str], delete: Callable[[Iterable[str]], list[str]]) -> list[str]:
    return []  # append-only credentials, and a client that says nothing


def stops_at_first_key(rels: list[str], delete: Callable[[Iterable[str]], list[str]]) -> list[str]:
    return []  # a list remove that stopped at its first (missing) key and reported success


def test_delete_with_a_silent_per_key_error(root: Root) -> None:
    """Scenario 1: add(a,1); add(a,10) → 11; add(a,100) → 111; add(a,1000) → 1111 (was 1112)."""
    db, w = wallets(root)
    patch_delete(db, first_key_fails_silently)
    got = []
    for amounts in ([1, 10], [100], [1000], [10000]):
        for x in amounts:
            w.add("a", x)
        got.append(w.consolidate("a"))
    assert got == [11, 111, 1111, 11111]
    assert w.plugin().inspect()["staleMarkers"] >= 1


def test_deletes_denied_silently_stay_exactly_once(root: Root) -> None:
    """Scenario 2: six rounds of add(a,1) + consolidate give 1..6 (were 1, 2, 4, 6, 9, 12)."""
    db, w = wallets(root)
    patch_delete(db, denied_silently)
    got = []
    for _ in range(6):
        w.add("a", 1)
        got.append(w.consolidate("a"))
    assert got == [1, 2, 3, 4, 5, 6]
    health = w.plugin().inspect()
    assert health["staleMarkers"] == 6 and health["pending"] == 0
    # Another process with working deletes cleans up; the keys then leave the consumed set.
    db2 = root.connect()
    w2 = db2.resources["wallets"]
    assert isinstance(w2, ec.Resource)
    db2.consolidate()
    w2.add("a", 1)
    assert w2.consolidate("a") == 7
    assert w2.plugin().inspect()["staleMarkers"] == 0


def test_partial_list_delete_with_two_interleaved_consolidators(root: Root) -> None:
    """Scenario 3: two connections consolidate in turn while every delete stops at its first key
    and reports success; 1, 10, 100, ... must add up to 11111 (was 11221)."""
    db1, w1 = wallets(root)
    db2 = root.connect()
    w2 = db2.resources["wallets"]
    assert isinstance(w2, ec.Resource)
    for db in (db1, db2):
        patch_delete(db, stops_at_first_key)
    amounts = [1, 10, 100, 1000, 10000]
    for i, x in enumerate(amounts):
        w1.add("a", x)
        (db1 if i % 2 else db2).consolidate()
    assert w1.consolidate("a") == w2.consolidate("a") == 11111


def test_partial_flush_keeps_exactly_the_durable_objects(root: Root) -> None:
    """Scenario 4: a batched flush over two cohort days fails on the second object; a consolidation
    by another process runs before the next flush; the total must be 11 (was 12)."""
    db, w = wallets(root, batch_transactions=True, batch_size=100, flush_interval=3600)
    today = datetime.now(UTC)
    w.add("a", 1, timestamp=today - timedelta(days=3))
    w.add("a", 10, timestamp=today)
    original = db.store.write_parquet
    calls = collections.Counter[str]()

    def second_object_fails(rel: str, df: Any, *, create: bool = False) -> bool:
        if "_transactions_" in rel:
            calls["tx"] += 1
            if calls["tx"] == 2:
                raise TimeoutError("simulated 503 on the second object")
        return original(rel, df, create=create)

    db.store.write_parquet = second_object_fails  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        db.flush()
    db.store.write_parquet = original  # type: ignore[method-assign]
    other = root.connect()
    other.consolidate()  # applies the object that was durable
    assert other.resources["wallets"].get("a")["balance"] == 1  # type: ignore[union-attr]
    db.flush()
    other.consolidate()
    assert other.resources["wallets"].get("a")["balance"] == 11  # type: ignore[union-attr]


def test_a_flush_whose_answer_was_lost_is_not_written_twice(root: Root) -> None:
    """The object landed but the answer was lost: the retry finds it and writes nothing again."""
    db, w = wallets(root, batch_transactions=True, batch_size=100, flush_interval=3600)
    w.add("a", 5)
    original = db.store.write_parquet

    def lands_then_times_out(rel: str, df: Any, *, create: bool = False) -> bool:
        original(rel, df, create=create)
        raise TimeoutError("answer lost")

    db.store.write_parquet = lands_then_times_out  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        db.flush()
    db.store.write_parquet = original  # type: ignore[method-assign]
    other = root.connect()
    other.consolidate()
    for _ in range(2):  # the retry, then a later flush and consolidation
        db.flush()
        other.consolidate()
    assert other.resources["wallets"].get("a")["balance"] == 5  # type: ignore[union-attr]


@pytest.mark.s3
def test_s3_per_key_delete_errors_and_denied_deletes(s3_root: Root) -> None:
    """The real S3 answers: DeleteObjects returns 200 with per-key <Error>s (first key InternalError;
    then AccessDenied for all). Values stay exact, and ``inspect`` reports the denial."""
    db, w = wallets(s3_root)
    fs = db.store.fs
    original = fs._call_s3
    mode = {"deny": False}

    async def faulty(method: str, *args: Any, **kwargs: Any) -> Any:
        if method != "delete_objects":
            return await original(method, *args, **kwargs)
        objects = kwargs["Delete"]["Objects"]
        failing = objects if mode["deny"] else objects[:1]
        kept = [o for o in objects if o not in failing]
        answer = await original(method, *args, **{**kwargs, "Delete": {**kwargs["Delete"], "Objects": kept}}) if kept else {}
        code = "AccessDenied" if mode["deny"] else "InternalError"
        return {**answer, "Errors": [{"Key": o["Key"], "Code": code, "Message": "injected"} for o in failing]}

    fs._call_s3 = faulty
    got = []
    for x in (1, 10, 100, 1000):
        w.add("a", x)
        got.append(w.consolidate("a"))
    assert got == [1, 11, 111, 1111]
    mode["deny"] = True
    for x in (10000, 100000):
        w.add("a", x)
        got.append(w.consolidate("a"))
    assert got[-1] == 111111 and db.store.delete_denied
    health = w.plugin().inspect()
    assert health["deleteDenied"] is True and health["staleMarkers"] >= 2


def test_inspect_cli_reports_stale_markers(root: Root) -> None:
    db, w = wallets(root)
    patch_delete(db, denied_silently)
    for _ in range(3):
        w.add("a", 1)
        db.consolidate()
    env = {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}
    res = CliRunner().invoke(cli, ["inspect", "--root", root.uri, "--output", "json"], env=env)
    assert res.exit_code == 0, res.output
    assert '"staleMarkers": 3' in res.output and '"pending": 0' in res.output
