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


# The checks every add runs have a fast path; each case is judged here from the rules themselves
# (character by character), not from the code under test.
def _id_is_valid(s: str) -> bool:
    return (0 < len(s) <= 1024 and not any(c in s for c in "/\\=") and ".." not in s
            and not any(ord(c) < 32 or 127 <= ord(c) < 160 or 0xD800 <= ord(c) < 0xE000 for c in s))


@pytest.mark.parametrize("record_id", [
    "w1", "a.b", ".a.", "..", "a..", "\u00a0", "\u0085", "\u009f", "\u00a0x", "\ud7ff", "\ud800", "\udfff",
    "\ue000", "ü-ñ", "x" * 1024, "x" * 1025, "", "a\tb", "a\x7f", "漢字", "a=b", "a/b", "a\\b", "\U0001f600"])
def test_record_id_checks_agree_with_the_rules(record_id: str) -> None:
    from ecanalytics.errors import InvalidNameError
    from ecanalytics.storage.paths import validate_record_id

    if _id_is_valid(record_id):
        assert validate_record_id(record_id) == record_id
    else:
        with pytest.raises(InvalidNameError, match="Invalid id"):
            validate_record_id(record_id)


@pytest.mark.parametrize("amount", [0, -7, 2**53, 10**308, 10**400, 1.5, -0.0, 1e308, math.inf, -math.inf, math.nan,
                                    True, False, "3", None, Decimal("2.5"), Decimal("NaN")])
def test_amount_checks_agree_with_the_rules(amount: Any) -> None:
    from ecanalytics.errors import InvalidValueError
    from ecanalytics.ledger.transactions import check_amount

    ok = (not isinstance(amount, bool) and isinstance(amount, (int, float, Decimal))
          and (not isinstance(amount, int) or abs(amount) < 2**1024) and math.isfinite(float(amount)))
    if ok:
        got = check_amount(amount)
        assert type(got) is float and got == float(amount)
    else:
        with pytest.raises(InvalidValueError, match="Amounts must be finite"):
            check_amount(amount)


def test_buffered_rows_become_a_frame_with_the_same_instants_and_values() -> None:
    from datetime import UTC, timedelta, timezone

    import polars as pl

    from ecanalytics.ledger.transactions import tx_frame

    zones = [UTC, timezone(timedelta(hours=-3)), timezone(timedelta(hours=14)), timezone(timedelta(minutes=-570))]
    stamps = [datetime(2026, 3, 8, 1, 59, 59, 999_999, tzinfo=zones[1]), datetime(1, 1, 2, tzinfo=UTC),
              datetime(9999, 12, 30, 23, 59, 59, 999_999, tzinfo=UTC), datetime(2024, 2, 29, 23, 0, 0, 7, tzinfo=zones[2]),
              datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=zones[3]), datetime(2026, 12, 6, tzinfo=zones[0])]
    rows = [{"id": f"t{i}", "originalId": f"r{i % 2}", "field": "balance", "value": i * 1.25 - 3,
             "operation": ("add", "sub", "set")[i % 3], "timestamp": ts, "source": "api"} for i, ts in enumerate(stamps)]
    frame = tx_frame(rows)
    assert frame["timestamp"].dtype == pl.Datetime("us", "UTC")
    assert frame["timestamp"].dt.replace_time_zone(None).to_list() == [
        ts.astimezone(UTC).replace(tzinfo=None) for ts in stamps]
    assert frame.drop("timestamp").rows(named=True) == [{k: v for k, v in r.items() if k != "timestamp"} for r in rows]
    exact = tx_frame([{**rows[0], "value": Decimal("12.34")}], pl.Decimal(12, 2))
    assert exact["value"].dtype == pl.Decimal(12, 2) and exact["value"].to_list() == [Decimal("12.34")]
    assert tx_frame([]).height == 0 and tx_frame([]).schema == frame.schema
