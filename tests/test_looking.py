"""Looking changes nothing, and costs nothing (issue 16): reprs and HTML views make no storage
call at all, ``inspect`` (the method and the command) only reads, and what writes says so in its
name (``probe_permissions``, ``inspect --probe-permissions``). ``inspect --verify`` (issue 15)
names every object the committed state names that is missing, and exits 1.

Every test runs on local disk, ``memory://`` and S3 (moto), on a root with what a display could be
tempted to touch: stale consumed markers (deletes are denied silently, so they stay), pending
objects, held rows and key conflicts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cli
from ecanalytics.storage import Store
from tests.conftest import Root

# Every Store method that reaches storage (some call others: each call counts).
STORE_CALLS = ("read", "read_many", "exists", "size", "_entries", "listdir_times", "store_now", "listdir", "listdirs",
               "find", "find_times", "du", "write", "create", "copy", "delete", "_s3_delete", "write_parquet",
               "read_parquet")
WRITES = {"write", "create", "copy", "delete", "_s3_delete", "write_parquet", "store_now"}
S3_WRITES = {"put_object", "delete_object", "delete_objects", "copy_object", "create_multipart_upload",
             "upload_part", "complete_multipart_upload"}
SCHEMA = {"id": "string|required", "userId": "string|required", "balance": "number|default:0"}


def env_for(root: Root) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}


def denied_silently(self: Store, rels: Any) -> list[str]:
    return []  # append-only credentials, and a client that says nothing


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch, *stores: Store) -> Iterator[Counter[str]]:
    """Count every Store call (any instance), and every S3 request of ``stores``, by name."""
    calls: Counter[str] = Counter()
    with monkeypatch.context() as m:
        for name in STORE_CALLS:
            original = getattr(Store, name)

            def wrapper(self: Store, *args: Any, __original: Any = original, __name: str = name, **kwargs: Any) -> Any:
                calls[__name] += 1
                return __original(self, *args, **kwargs)

            m.setattr(Store, name, wrapper)
        seen: set[int] = set()
        for store in stores:
            fs = store.fs
            if store.config.protocol != "s3" or id(fs) in seen:
                continue
            seen.add(id(fs))
            request = fs._call_s3

            async def call_s3(method: str, *args: Any, __request: Any = request, **kwargs: Any) -> Any:
                calls[f"s3:{method}"] += 1
                return await __request(method, *args, **kwargs)

            m.setattr(fs, "_call_s3", call_s3)
        yield calls


def snapshot(root: Root) -> dict[str, bytes]:
    """Every object under the root, with its bytes (read through a store of its own)."""
    store = root.store()
    store.fs.invalidate_cache()
    keys = store.find("")
    return {key: store.read(key) for key in keys}


def build(root: Root, monkeypatch: pytest.MonkeyPatch) -> tuple[ec.Database, ec.Resource, list[Any]]:
    """A root with stale consumed markers, a held record, a key conflict and pending objects;
    returns the database, the resource and the results of consolidate, recalculate, gc, compact."""
    monkeypatch.setattr(Store, "delete", denied_silently)
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", SCHEMA)
    w.insert({"id": "w1", "userId": "u1"})
    w.add("w1", 1)
    w.add("w1", 2, id="pay-1")
    first = w.plugin().consolidate()
    w.add("w2", 5)  # w2 does not exist and userId has no default: held (awaiting-record)
    w.add("w1", 3, id="pay-1")  # the key again, another amount: a conflict, not applied
    conflicted = w.plugin().consolidate()
    assert conflicted.conflicts is not None and conflicted.conflicts.height == 1
    results = [first, conflicted, w.recalculate(field="balance"), w.gc("30d"), w.compact(), *w.verify()]
    w.add("w1", 10)  # pending
    w.add("w1", 20)
    return db, w, results


def public_objects(db: ec.Database) -> list[Any]:
    out: list[Any] = [db, db.resources]
    for name in db.resources:
        out.append(db.resources[name])
    for res in map(db.resource, db.resource_names()):
        out += list(res.plugins.values())
    return out


def look(objects: list[Any]) -> None:
    for obj in objects:
        assert repr(obj) and str(obj)
        if hasattr(obj, "_repr_html_"):
            assert obj._repr_html_().startswith("<div>")


def test_reprs_make_no_storage_call_and_inspect_only_reads(root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    db, w, results = build(root, monkeypatch)
    cold = root.connect()  # a second process: nothing loaded yet
    before = snapshot(root)
    stale = [k for k in before if "/_inbox/" in k and not k.endswith(".keep")]
    assert len(stale) >= 4  # consumed markers that denied deletes left (plus the pending ones)

    with counting(monkeypatch, db.store, cold.store) as calls:
        look([*public_objects(db), *results, *public_objects(cold)])
    assert not calls, calls
    assert snapshot(root) == before
    assert "not loaded" in repr(cold.resources["wallets"]) and "unknown — call inspect()" in w._repr_html_()

    for plugin in (w.plugin(), cold.resources["wallets"].plugin()):  # type: ignore[union-attr]
        with counting(monkeypatch, db.store, cold.store) as calls:
            health = plugin.inspect()
        assert calls and not (set(calls) & WRITES) and not {c for c in calls if c.removeprefix("s3:") in S3_WRITES}, calls
        assert snapshot(root) == before
        assert (health["pending"], health["held"], health["heldReasons"]) == (2, 1, {"awaiting-record": 1})
        assert health["staleMarkers"] >= 3 and health["deleteDenied"] is None  # not probed: unknown
        assert health["conflicts"] == 1
        [conflict] = health["latestConflicts"]
        assert (conflict["id"], conflict["originalId"], conflict["value"], conflict["reason"]) == (
            "pay-1", "w1", "3.0", "exists_with_different_amount")

    # What inspect() learnt, the HTML view shows without asking again.
    with counting(monkeypatch, db.store) as calls:
        html = w._repr_html_()
    assert not calls and "<td>2</td>" in html and "last inspect()" in html

    res = CliRunner().invoke(cli, ["inspect", "--root", root.uri, "--output", "json"], env=env_for(root))
    assert res.exit_code == 0, res.output
    assert snapshot(root) == before
    [field] = json.loads(res.stdout)["fields"]
    assert field["conflicts"] == 1 and field["latestConflicts"][0]["id"] == "pay-1" and field["deleteDenied"] is None


def test_probe_permissions_is_the_one_that_deletes(root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    _, w, _ = build(root, monkeypatch)
    plugin = w.plugin()
    stale = plugin.inspect()["staleMarkers"]
    probe = plugin.probe_permissions()  # deletes denied silently: the marker stays
    assert probe["deleteDenied"] is True and probe["staleMarkers"] == stale and "_inbox" in probe["probed"]
    assert plugin.inspect()["deleteDenied"] is True
    before = snapshot(root)
    monkeypatch.undo()  # deletes work again
    res = CliRunner().invoke(cli, ["inspect", "--root", root.uri, "--output", "json", "--probe-permissions"],
                             env=env_for(root))
    assert res.exit_code == 0, res.output
    [field] = json.loads(res.stdout)["fields"]
    assert field["deleteDenied"] is False and field["staleMarkers"] == stale - 1
    after = snapshot(root)
    assert set(before) - set(after) == {next(k for k in before if field["probedMarker"].endswith(k))}
    assert w.plugin().consolidate().transactions == 2  # exactly once after the probe, too
    assert w.get("w1")["balance"] == 1 + 2 + 10 + 20


def test_inspect_text_shows_key_conflicts_in_the_fields_block(root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    build(root, monkeypatch)
    res = CliRunner().invoke(cli, ["inspect", "--root", root.uri], env=env_for(root))
    assert res.exit_code == 0, res.output
    block = res.output.split("wallets.balance", 1)[1]
    lines = dict(line.split(None, 1) for line in block.strip().splitlines() if line.startswith("  "))
    assert lines["conflicts"] == "1"
    assert lines["latestConflicts"].startswith("pay-1: w1 add 3.0 (exists_with_different_amount, at ")
    assert "--probe-permissions" in res.output  # stale markers, deletes not probed: how to learn more


def test_consolidated_event_carries_the_key_conflicts(root: Root) -> None:
    db = root.connect()
    plugin = db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    events: list[dict[str, Any]] = []
    plugin.on("eventual-consistency.consolidated", events.append)
    w.add("a", 1, id="k")
    w.add("b", 1, id="k")  # the same key on another record
    plugin.consolidate()
    [event] = events
    assert event["conflictCount"] == 1 and event["transactionCount"] == 1
    assert event["conflicts"][0]["id"] == "k" and event["conflicts"][0]["reason"] == "exists_with_different_record"


def test_inspect_verify_names_a_missing_object_and_exits_1(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    for i in range(3):
        w.add(f"w{i}", i + 1)
    db.consolidate()
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", "--root", root.uri, "--verify"], env=env_for(root))
    assert res.exit_code == 0, res.output
    assert "verify: whole" in res.output
    gone = w.ledger.state().applied_objects("balance")[1]
    assert root.store().delete([gone]) == []
    res = runner.invoke(cli, ["inspect", "--root", root.uri, "--verify"], env=env_for(root))
    assert res.exit_code == 1, res.output
    assert "verify: 1 missing object" in res.output and gone.rsplit("/", 1)[-1] in res.output
    assert "applied transaction object of balance" in res.output and "restore it" in res.output
    res = runner.invoke(cli, ["inspect", "--root", root.uri, "--verify", "--output", "json"], env=env_for(root))
    assert res.exit_code == 1
    verify = json.loads(res.stdout)["verify"]
    assert verify["whole"] is False and verify["resources"] == ["wallets"]
    [missing] = verify["missing"]
    assert missing["resource"] == "wallets" and missing["key"].endswith(gone) and missing["fix"]
