"""Bad input raises a typed EcError before anything is written, and committed state is intact."""

from __future__ import annotations

import math
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

import ecanalytics as ec
from tests.conftest import WALLETS, Root


def snapshot(root: Root) -> dict[str, bytes]:
    store = root.store()
    return {k: store.read(k) for k in store.find("")}


@pytest.fixture
def wallets(root: Root) -> ec.Resource:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", mode="sync", auto_consolidate=False))
    w = db.create_resource("wallets", WALLETS)
    w.insert({"id": "w1", "userId": "u1", "balance": 5, "currency": "USD"})
    w.add("w1", 1)
    return w


BAD_AMOUNTS = [math.nan, math.inf, -math.inf, "10", None, True, False, [1], Decimal("NaN"), complex(1, 1)]


@pytest.mark.parametrize("amount", BAD_AMOUNTS, ids=repr)
@pytest.mark.parametrize("op", ["add", "sub", "set"])
def test_bad_amounts_write_nothing(root: Root, wallets: ec.Resource, op: str, amount: Any) -> None:
    before = snapshot(root)
    with pytest.raises(ec.InvalidValueError, match="finite"):
        getattr(wallets, op)("w1", amount)
    assert snapshot(root) == before
    assert wallets.get("w1")["balance"] == 6


BAD_IDS = ["", "a/b", "../x", "x/../y", "a=b", "..", "a\\b", "tab\there", 5, None]


@pytest.mark.parametrize("record_id", BAD_IDS, ids=repr)
def test_bad_record_ids(root: Root, wallets: ec.Resource, record_id: Any) -> None:
    before = snapshot(root)
    with pytest.raises(ec.InvalidNameError, match="id"):
        wallets.add(record_id, 1)
    with pytest.raises(ec.InvalidNameError):
        wallets.add("w1", 1, id=record_id if record_id is not None else 7)
    with pytest.raises(ec.EcError):
        wallets.insert({"id": record_id, "userId": "u", "currency": "USD"})
    assert snapshot(root) == before


@pytest.mark.parametrize("name", ["", "a/b", "a=b", "..", "a.b", "1abc", "has space", "wallets_transactions_balance"])
def test_bad_resource_names(root: Root, name: str) -> None:
    db = root.connect()
    with pytest.raises(ec.InvalidNameError):
        db.create_resource(name, {"id": "string|required"})
    with pytest.raises(ec.InvalidNameError):
        ec.EventualConsistencyPlugin(resource=name, field="balance")
    assert root.store().find("") == []


@pytest.mark.parametrize("field", ["", "a/b", "x=1", "..", "b.c"])
def test_bad_field_names(field: str) -> None:
    with pytest.raises(ec.InvalidNameError):
        ec.EventualConsistencyPlugin(resource="wallets", field=field)


@pytest.mark.parametrize("tz", ["Mars/Olympus", "", "UTC+3", "../etc/passwd", 5])
def test_invalid_timezone_is_rejected_at_construction(tz: Any) -> None:
    with pytest.raises(ec.InvalidTimezoneError, match="IANA"):
        ec.EventualConsistencyPlugin(resource="wallets", field="balance", cohort={"timezone": tz})


def test_unknown_field_and_missing_field(root: Root, wallets: ec.Resource) -> None:
    with pytest.raises(ec.UnknownFieldError, match="not a managed field"):
        wallets.add("w1", "points", 3)
    with pytest.raises(ec.UnknownResourceError):
        root.opened[0].resources["nope"]
    with pytest.raises(KeyError):
        root.opened[0].resources["nope"]
    with pytest.raises(ec.UnknownResourceError):
        root.opened[0].consolidate("nope")


def test_naive_timestamps_and_reserved_keys(root: Root, wallets: ec.Resource) -> None:
    before = snapshot(root)
    with pytest.raises(ec.InvalidValueError, match="timezone-aware"):
        wallets.add("w1", 1, timestamp=datetime(2026, 1, 1))
    with pytest.raises(ec.InvalidValueError, match="reserved"):
        wallets.add("w1", 1, id="auto-123")
    assert snapshot(root) == before


@pytest.mark.parametrize("options", [
    {"mode": "eventually"}, {"batch_size": 0}, {"consolidation_interval": 0}, {"cohort": {"zone": "UTC"}},
    {"reducer": "median"}, {"reducer": 3},
], ids=repr)
def test_bad_plugin_options(options: dict[str, Any]) -> None:
    with pytest.raises(ec.ConfigurationError):
        ec.EventualConsistencyPlugin(resource="wallets", field="balance", **options)


def test_managed_field_must_be_a_number(root: Root) -> None:
    db = root.connect()
    db.create_resource("wallets", {"id": "string|required", "currency": "string"})
    with pytest.raises(ec.ConfigurationError, match="number"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="currency"))


def test_bad_schemas(root: Root) -> None:
    db = root.connect()
    with pytest.raises(ec.SchemaError):
        db.create_resource("a", {"id": "string|required", "x": "money"})
    with pytest.raises(ec.SchemaError):
        db.create_resource("b", {"id": "string|required", "x": "number|default:abc"})
    with pytest.raises(ec.SchemaError):
        db.create_resource("c", {"id": "number"})


def test_corrupt_transaction_object_is_reported_and_nothing_is_lost(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    wallets = db.create_resource("wallets", WALLETS)
    for rid in ("w1", "w2"):
        wallets.insert({"id": rid, "userId": "u", "currency": "USD"})
    wallets.add("w1", 5)
    assert wallets.consolidate("w1") == 5
    wallets.add("w1", 3)
    wallets.add("w2", 4)
    store = root.store()
    pending = sorted(k for k in store.find("wallets_transactions_balance", ".parquet"))[-1]
    good = store.read(pending)
    store.write(pending, good[: len(good) // 2])  # a half-written object
    before = snapshot(root)
    with pytest.raises(ec.CorruptObjectError, match=pending.rsplit("/", 1)[-1]):
        wallets.plugin().consolidate()
    assert snapshot(root) == before  # nothing committed, nothing removed
    assert wallets.get("w1")["balance"] == 5
    store.write(pending, good)  # the operator restores the object
    wallets.plugin().consolidate()
    assert wallets.get("w1")["balance"] == 8 and wallets.get("w2")["balance"] == 4


def test_errors_share_one_root_and_builtin_bases() -> None:
    assert issubclass(ec.InvalidValueError, ValueError) and issubclass(ec.InvalidValueError, ec.EcError)
    assert issubclass(ec.RecordNotFoundError, KeyError)
    assert issubclass(ec.CorruptObjectError, OSError) and issubclass(ec.CorruptObjectError, ec.TerminalError)
    assert issubclass(ec.CommitConflictError, ec.TransientError)
    assert str(ec.RecordNotFoundError("no record 'x'")) == "no record 'x'"
