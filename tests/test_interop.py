"""Jupyter and Arrow: short reprs, HTML views, zero-copy Arrow streams, pandas, comparison filters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest

import ecanalytics as ec
from tests.conftest import Root

T0 = datetime(2026, 11, 20, tzinfo=UTC)


def wallets(root: Root) -> tuple[ec.Database, ec.Resource]:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               cohort={"timezone": "Europe/Berlin"}))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0", "tier": "string|default:std"})
    for i, amount in enumerate([50.0, 150.0, 250.0, 75.0]):
        w.add(f"w{i}", amount, timestamp=T0 + timedelta(days=i))
    return db, w


def test_reprs_are_short_and_informative(root: Root) -> None:
    db, w = wallets(root)
    result = db.consolidate()[0]
    plugin = w.plugin()
    assert repr(w) == "Resource('wallets', records=4, fields=['balance'], version=1)"
    assert repr(plugin) == "EventualConsistencyPlugin(wallets.balance, mode='async', reducer='default', timezone='Europe/Berlin')"
    assert repr(result).startswith("ConsolidationResult(wallets.balance, version=1, transactions=4, records=4, objects=4")
    assert "\n" not in repr(result) and "shape" not in repr(result)  # not the whole values frame
    assert repr(db) == f"Database({db.uri!r}, resources=['wallets'])"
    dataset = db.resources["wallets_transactions_balance"]
    assert repr(dataset) == "TransactionDataset('wallets_transactions_balance', field='balance', timezone='Europe/Berlin')"
    w.add("w9", 1)
    html = w._repr_html_()
    assert "<table>" in html and "Europe/Berlin" in html and "default" in html and "4 records" in html
    assert "unknown — call inspect()" in html  # a view never LISTs the inbox
    plugin.inspect()
    assert "<td>1</td>" in w._repr_html_()  # one pending transaction, as the last inspect() saw it
    for obj in (db, plugin, result, dataset):
        assert obj._repr_html_().startswith("<div>")  # type: ignore[union-attr]


def test_arrow_streams_polars_duckdb_and_pandas(root: Root) -> None:
    db, w = wallets(root)
    db.consolidate()
    expected = w.to_polars()
    assert pa.table(w).to_pylist() == expected.to_dicts() == w.to_arrow().to_pylist()
    assert pl.DataFrame(w).equals(expected)
    assert pl.from_arrow(w.to_arrow()).equals(expected)  # type: ignore[union-attr]
    wallets_rel = w  # noqa: F841 - DuckDB finds the variable by name
    got = duckdb.sql("SELECT id, balance FROM wallets_rel ORDER BY id").fetchall()
    assert got == list(zip(expected["id"].to_list(), expected["balance"].to_list(), strict=True))
    frame = w.to_pandas()
    assert isinstance(frame, pd.DataFrame) and frame["balance"].tolist() == expected["balance"].to_list()
    txs = db.resources["wallets_transactions_balance"]
    assert isinstance(txs, ec.TransactionDataset)
    table = pa.table(txs)
    assert table.num_rows == 4 and "applied" in table.column_names and all(table["applied"].to_pylist())
    assert txs.to_pandas({"cohortDate": "2026-11-21"})["value"].tolist() == [150.0]


def test_comparison_filters(root: Root) -> None:
    db, w = wallets(root)
    db.consolidate()
    assert sorted(w.query({"balance": {">": 100}})["id"].to_list()) == ["w1", "w2"]
    assert w.query({"balance": {">=": 75, "<": 250}})["id"].sort().to_list() == ["w1", "w3"]
    assert w.query({"balance": {"!=": 50}, "tier": "std"}).height == 3
    txs = db.resources["wallets_transactions_balance"]
    assert isinstance(txs, ec.TransactionDataset)
    assert txs.query({"value": {">": 100}})["value"].sort().to_list() == [150.0, 250.0]
    assert txs.query({"cohortDate": {">=": "2026-11-22"}})["originalId"].sort().to_list() == ["w2", "w3"]
    with pytest.raises(ec.InvalidValueError, match="scan"):
        w.query({"balance": {"~": 3}})
    with pytest.raises(ec.InvalidValueError, match="balance"):
        w.query({"balance": {">": "lots"}})
