"""Schema evolution: adding an optional attribute, or one with a default, to an existing resource;
existing records (and checkpoints, deltas, time travel, SQL) read the default; changes that stored
data could not follow are refused with a typed error, and nothing changes."""

from __future__ import annotations

import datetime as dt

import pytest

import ecanalytics as ec
from ecanalytics.ledger import catalog as cat
from tests.conftest import Root

ATTRS = {"id": "string|required", "balance": "number|default:0", "currency": "string|default:USD"}


def wallets(root: Root) -> tuple[ec.Database, ec.Resource]:
    db = root.connect(checkpoint_interval=2)  # checkpoints written before the change, without the column
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", ATTRS)
    for i in range(3):
        w.insert({"id": f"w{i}", "balance": 10 * i})
        w.add(f"w{i}", 1)
    db.consolidate()
    return db, w


def test_superset_adds_attributes_existing_records_read_the_default(root: Root) -> None:
    db, w = wallets(root)
    before = dt.datetime.now(dt.UTC)
    assert db.create_resource("wallets", {**ATTRS, "tier": "string|default:basic", "note": "string|optional"}) is w
    assert [(r["id"], r["tier"], r["note"]) for r in w.to_polars().iter_rows(named=True)] == [
        ("w0", "basic", None), ("w1", "basic", None), ("w2", "basic", None)]
    w.insert({"id": "w9", "tier": "gold"})
    w.add("w9", 5)
    w.add("w0", 1)
    db.consolidate()
    assert (w.get("w9")["tier"], w.get("w9")["balance"], w.get("w0")["tier"], w.get("w0")["balance"]) == ("gold", 5, "basic", 2)
    assert cat.read(db.store, "wallets")["attributes"]["tier"] == "string|default:basic"  # type: ignore[index]
    assert w.get("w1", as_of=before)["tier"] == "basic"  # time travel to before the change reads the default too
    assert db.sql("SELECT tier, count(*) FROM wallets GROUP BY 1 ORDER BY 1").fetchall() == [("basic", 3), ("gold", 1)]
    assert w.recalculate().changed == 0
    reopened = root.connect(create=False)  # a new process: checkpoint and deltas without the column
    r = reopened.resources["wallets"]
    assert isinstance(r, ec.Resource)
    assert r.schema.attributes["tier"].default == "basic"
    assert r.to_polars().select("id", "tier", "balance").rows() == [
        ("w0", "basic", 2.0), ("w1", "basic", 11.0), ("w2", "basic", 21.0), ("w9", "gold", 5.0)]


def test_add_attribute_and_manage_it(root: Root) -> None:
    db, w = wallets(root)
    assert w.add_attribute("points", "number|default:0") is w
    assert w.add_attribute("points", "number|default:0") is w  # the same spec again: nothing to do
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="points", auto_consolidate=False))
    w.add("w1", "points", 7)
    db.consolidate()
    assert [w.get(f"w{i}")["points"] for i in range(3)] == [0, 7, 0]
    assert w.get("w1")["balance"] == 11
    with pytest.raises(ec.SchemaEvolutionError, match="default of 'points'"):
        w.add_attribute("points", "number|default:1")


@pytest.mark.parametrize(("attributes", "message"), [
    ({"id": "string|required", "balance": "number|default:0"}, r"removing \['currency'\]"),
    ({**ATTRS, "balance": "integer|default:0"}, "'balance' is stored as 'number|default:0'; changing its type"),
    ({**ATTRS, "currency": "string|default:EUR"}, "changing the default of 'currency'"),
    ({**ATTRS, "owner": "string|required"}, "adding 'owner' as required without a default"),
    ({**ATTRS, "balance": "decimal(18,2)|default:0"}, "changing its type"),
])
def test_breaking_changes_are_refused(root: Root, attributes: dict[str, str], message: str) -> None:
    db, w = wallets(root)
    before = w.to_polars()
    with pytest.raises(ec.SchemaEvolutionError, match=message) as info:
        db.create_resource("wallets", attributes)
    assert isinstance(info.value, ec.ResourceExistsError) and "Nothing was changed" in str(info.value)
    assert cat.read(db.store, "wallets")["attributes"] == ATTRS  # type: ignore[index]
    assert w.schema.to_spec() == ATTRS and w.to_polars().equals(before)


def test_required_without_default_is_refused_but_optional_is_fine(root: Root) -> None:
    db, w = wallets(root)
    db.create_resource("wallets", {**ATTRS, "note": "string|optional"})
    with pytest.raises(ec.SchemaEvolutionError, match="making 'note' required without a default"):
        db.create_resource("wallets", {**ATTRS, "note": "string|required"})
    with pytest.raises(ec.SchemaEvolutionError, match="'owner' as required without a default"):
        w.add_attribute("owner", "string|required")
    w.add_attribute("owner", "string|required|default:nobody")  # required with a default is fine
    assert w.get("w0")["owner"] == "nobody"


def test_a_process_with_the_old_schema_fails_loudly_and_never_writes_back(tmp_path: object) -> None:
    root = Root("local", f"{tmp_path}/ec-data")
    db1 = root.connect()
    db1.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w1 = db1.create_resource("wallets", ATTRS)
    w1.insert({"id": "a"})
    db2 = root.connect(create=False)  # connected before the change
    w2 = db2.resources["wallets"]
    assert isinstance(w2, ec.Resource)
    w1.add_attribute("tier", "string|default:basic")
    w1.update("a", {"tier": "gold"})  # a delta with the new column
    w2.add("a", 5)
    with pytest.raises(ec.StaleSchemaError, match=r"\['tier'\].*Reconnect"):
        w2.get("a")
    with pytest.raises(ec.ConsolidationFailedError):
        db2.consolidate()  # cannot fold without dropping 'tier': nothing is committed
    assert w1.get("a")["tier"] == "gold"
    db1.consolidate()
    assert (w1.get("a")["tier"], w1.get("a")["balance"]) == ("gold", 5)
    assert db2.create_resource("wallets", {**ATTRS, "tier": "string|default:basic"}) is w2  # picks the change up
    assert w2.get("a")["tier"] == "gold"
    for db in (db1, db2):
        db.close()
