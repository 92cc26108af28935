"""DataFrames in: insert_many in one commit, write_transactions through the exactly-once path,
vectorized validation that rejects a bad frame whole, and ``ecanalytics ingest`` for files."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cli
from tests.conftest import Root

T0 = datetime(2026, 11, 1, 12, tzinfo=UTC)


def wallets(root: Root, **plugin: Any) -> tuple[ec.Database, ec.Resource]:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False, **plugin))
    return db, db.create_resource("wallets", {"id": "string|required", "user": "string|required",
                                              "balance": "number|default:0", "tier": "string|default:basic"})


def frame(n: int, seed: int = 1) -> pl.DataFrame:
    rng = random.Random(seed)
    return pl.DataFrame({
        "originalId": [f"w{rng.randrange(20)}" for _ in range(n)],
        "value": [float(rng.randrange(1, 100)) for _ in range(n)],
        "operation": [rng.choice(["add", "add", "sub", "set"]) for _ in range(n)],
        "timestamp": [T0 + timedelta(hours=rng.randrange(0, 96), seconds=i) for i in range(n)],
        "id": [f"tx-{seed}-{i}" for i in range(n)],
    })


def model(df: pl.DataFrame) -> dict[str, float]:
    """Event-order fold of the frame's rows, in plain Python."""
    out: dict[str, float] = {}
    for row in df.sort("timestamp", "id").iter_rows(named=True):
        cur = out.get(row["originalId"], 0.0)
        out[row["originalId"]] = row["value"] if row["operation"] == "set" else (
            cur + row["value"] if row["operation"] == "add" else cur - row["value"])
    return out


def values(w: ec.Resource) -> dict[str, float]:
    t = w.to_polars()
    return dict(zip(t["id"].to_list(), t["balance"].to_list(), strict=True))


def test_insert_many_is_one_commit(root: Root) -> None:
    _db, w = wallets(root)
    version = w.ledger.latest_version()
    records = pl.DataFrame({"id": [f"w{i}" for i in range(20)], "user": [f"u{i}" for i in range(20)],
                            "balance": [float(i) for i in range(20)]})
    assert w.insert_many(records) == 20
    assert w.ledger.latest_version() == version + 1
    assert w.get("w3") == {"id": "w3", "user": "u3", "balance": 3.0, "tier": "basic"}
    with pytest.raises(ec.RecordExistsError, match="w3"):
        w.insert_many([{"id": "new", "user": "x"}, {"id": "w3", "user": "y"}])
    with pytest.raises(ec.SchemaError, match="required attribute 'user'"):
        w.insert_many([{"id": "a"}, {"id": "b", "user": None}])
    with pytest.raises(ec.SchemaError, match="more than once"):
        w.insert_many(pl.DataFrame({"id": ["x", "x"], "user": ["a", "b"]}))
    with pytest.raises(ec.InvalidNameError, match="row 1"):
        w.insert_many(pl.DataFrame({"id": ["ok", "a/b"], "user": ["a", "b"]}))
    assert w.ledger.latest_version() == version + 1  # nothing else was committed
    assert sorted(w.to_polars()["id"].to_list()) == sorted(records["id"].to_list())


@pytest.mark.parametrize("kind", ["polars", "lazy", "arrow", "reader", "dicts", "capsule"])
def test_write_transactions_from_every_frame_kind(root: Root, kind: str) -> None:
    db, w = wallets(root)
    w.insert_many(pl.DataFrame({"id": [f"w{i}" for i in range(20)], "user": ["u"] * 20}))
    df = frame(300)
    table = df.to_arrow()
    data: Any = {
        "polars": df, "lazy": df.lazy(), "arrow": table, "reader": pa.RecordBatchReader.from_batches(table.schema, table.to_batches()),
        "dicts": df.to_dicts(), "capsule": _Capsule(table),
    }[kind]
    assert w.write_transactions(data, batch_size=40) == 300
    objects = db.store.find("wallets_transactions_balance", ".parquet")
    days = {k.split("cohortDate=")[1][:10] for k in objects}
    per_day = df.group_by(pl.col("timestamp").dt.date().cast(pl.String).alias("d")).len()
    assert days == set(per_day["d"].to_list())  # one object per cohort day (UTC here) ...
    assert len(objects) == sum(-(-n // 40) for n in per_day["len"].to_list())  # ... per at most 40 rows
    db.consolidate()
    expected = model(df)
    assert {k: v for k, v in values(w).items() if k in expected} == expected
    w.write_transactions(df)  # a retry of the same frame: the ids are idempotency keys
    db.consolidate()
    assert {k: v for k, v in values(w).items() if k in expected} == expected


class _Capsule:
    """Something that only speaks the Arrow PyCapsule stream protocol (as pandas or DuckDB do)."""

    def __init__(self, table: pa.Table) -> None:
        self.table = table

    def __arrow_c_stream__(self, requested_schema: object = None) -> object:
        return self.table.__arrow_c_stream__(requested_schema)


def test_sync_mode_returns_after_the_commit_and_generated_ids(root: Root) -> None:
    _db, w = wallets(root, mode="sync")
    w.insert_many([{"id": "a", "user": "u"}, {"id": "b", "user": "v"}])
    n = w.write_transactions([{"originalId": "a", "value": 5}, {"originalId": "b", "value": 7, "operation": "sub"},
                              {"originalId": "a", "value": 1}])
    assert n == 3 and values(w) == {"a": 6.0, "b": -7.0}  # committed before the call returned
    pending = w.plugin().pending()
    assert pending.height == 0


BAD = {
    "nan": ([{"originalId": "a", "value": 1.0}, {"originalId": "b", "value": float("nan")}], ec.InvalidValueError, "row 1"),
    "inf": (pl.DataFrame({"originalId": ["a"], "value": [float("inf")]}), ec.InvalidValueError, "row 0"),
    "slash": (pl.DataFrame({"originalId": ["a", "b", "c/d"], "value": [1, 2, 3]}), ec.InvalidNameError, "row 2"),
    "empty-id": (pl.DataFrame({"originalId": ["", "x"], "value": [1, 2]}), ec.InvalidNameError, "row 0"),
    "dotdot": (pl.DataFrame({"originalId": ["a..b"], "value": [1]}), ec.InvalidNameError, r"'\.\.'"),
    "operation": (pl.DataFrame({"originalId": ["a", "b"], "value": [1, 2], "operation": ["add", "mul"]}), ec.InvalidValueError, "row 1"),
    "naive": (pl.DataFrame({"originalId": ["a"], "value": [1], "timestamp": [datetime(2026, 1, 1)]}), ec.InvalidValueError, "naive"),
    "strings": (pl.DataFrame({"originalId": ["a"], "value": ["5"]}), ec.InvalidValueError, "numeric"),
    "field": (pl.DataFrame({"originalId": ["a"], "value": [1], "field": ["points"]}), ec.SchemaError, "row 0"),
    "unknown": (pl.DataFrame({"originalId": ["a"], "value": [1], "amount": [2]}), ec.SchemaError, "amount"),
    "reserved": (pl.DataFrame({"originalId": ["a"], "value": [1], "id": ["auto-1"]}), ec.InvalidValueError, "reserved"),
    "not-a-frame": (42, ec.InvalidValueError, "DataFrame"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_frame_is_rejected_whole(root: Root, case: str) -> None:
    db, w = wallets(root)
    data, error, match = BAD[case]
    with pytest.raises(error, match=match):
        w.write_transactions(data)
    assert db.store.find("wallets_transactions_balance", ".parquet") == []
    assert w.plugin().pending().height == 0


def test_several_fields_need_the_field(root: Root) -> None:
    db = root.connect()
    for f in ("balance", "points"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field=f, auto_consolidate=False))
    acc = db.create_resource("acc", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    with pytest.raises(ec.FieldRequiredError):
        acc.write_transactions([{"originalId": "a", "value": 1}])
    acc.write_transactions([{"originalId": "a", "value": 4}], "points")
    db.consolidate()
    assert acc.get("a") == {"id": "a", "balance": 0.0, "points": 4.0}


def test_ingest_cli_reads_parquet_csv_and_ndjson(root: Root, tmp_path: Path) -> None:
    _db, w = wallets(root)
    w.insert_many(pl.DataFrame({"id": [f"w{i}" for i in range(20)], "user": ["u"] * 20}))
    parts = [frame(50, seed=s) for s in (1, 2, 3)]
    paths = [tmp_path / "a.parquet", tmp_path / "b.csv", tmp_path / "c.ndjson"]
    parts[0].write_parquet(paths[0])
    parts[1].with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%z")).write_csv(paths[1])
    parts[2].with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%z")).write_ndjson(paths[2])
    env = {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}
    res = CliRunner().invoke(cli, ["ingest", "--root", root.uri, "--resource", "wallets", "--output", "json",
                                   *map(str, paths)], env=env)
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["rows"] == 150
    res = CliRunner().invoke(cli, ["consolidate", "--root", root.uri], env=env)
    assert res.exit_code == 0, res.output
    again = root.connect().resources["wallets"]
    assert isinstance(again, ec.Resource)
    expected = model(pl.concat(parts))
    assert {k: v for k, v in values(again).items() if k in expected} == expected
    bad = tmp_path / "bad.csv"
    bad.write_text("originalId,value\na,1\nb,nan\n")
    res = CliRunner().invoke(cli, ["ingest", "--root", root.uri, "--resource", "wallets", str(bad)], env=env)
    assert res.exit_code == 1 and "row 1" in str(res.exception)


def test_ingest_cli_writes_no_file_until_every_file_is_valid(root: Root, tmp_path: Path) -> None:
    """A bad second file must not leave the first one written (a retry would apply it twice)."""
    _db, w = wallets(root)
    good, bad = tmp_path / "a.csv", tmp_path / "b.ndjson"
    good.write_text("originalId,value\na,10\n")
    bad.write_text('{"originalId": "a/b", "value": 1}\n')
    env = {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}
    res = CliRunner().invoke(cli, ["ingest", "--root", root.uri, "--resource", "wallets", str(good), str(bad)], env=env)
    assert res.exit_code == 1 and "b.ndjson" in str(res.exception) and "No file was written" in str(res.exception)
    assert w.plugin().pending().height == 0
    bad.write_text('{"originalId": "a", "value": 1}\n')
    res = CliRunner().invoke(cli, ["ingest", "--root", root.uri, "--resource", "wallets", str(good), str(bad)], env=env)
    assert res.exit_code == 0, res.output
    assert w.value("a") == 11


@pytest.mark.parametrize("stamp", ["2026-11-01T00:30:00", "2026-11-01", "20261101"])
def test_timestamp_strings_need_an_offset(stamp: str) -> None:
    db = ec.connect(f"memory://naive-{stamp}")
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="b", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "b": "number|default:0"})
    with pytest.raises(ec.InvalidValueError, match="offset"):
        w.write_transactions([{"originalId": "a", "value": 1.0, "timestamp": stamp}])
    assert w.write_transactions([{"originalId": "a", "value": 1.0, "timestamp": stamp + "T00:00:00-03:00"
                                  if len(stamp) == 10 else "2026-11-01T00:30:00Z"}]) == 1


class Killed(BaseException):
    """The process dies here (raised from inside a write, so nothing after it runs)."""


@pytest.mark.parametrize("consolidate_between", [False, True], ids=["rerun-pending", "rerun-after-consolidation"])
def test_a_killed_ingest_of_files_without_ids_rerun_counts_once(root: Root, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 consolidate_between: bool) -> None:
    """Issue: a killed and re-run ``ecanalytics ingest`` of files without an ``id`` column applied
    part of them twice. Ids now derive from each file's content and row number, so the re-run's
    rows repeat the first run's ids and count once, pending or already applied."""
    from ecanalytics.ledger import transactions as tx_module

    _db, w = wallets(root)
    w.insert_many(pl.DataFrame({"id": [f"w{i}" for i in range(20)], "user": ["u"] * 20}))
    parts = [frame(400, seed=s).drop("id") for s in (7, 8)]
    # Distinct instants across the files (the model cannot tie-break by ids the files do not have).
    parts[0] = parts[0].with_columns(pl.col("timestamp") + timedelta(milliseconds=500))
    expected = model(pl.concat(parts).with_columns(id=pl.lit("")))
    paths = [tmp_path / "a.parquet", tmp_path / "b.csv"]
    parts[0].write_parquet(paths[0])
    parts[1].with_columns(pl.col("timestamp").dt.to_string("%Y-%m-%dT%H:%M:%S%z")).write_csv(paths[1])
    env = {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}
    command = ["ingest", "--root", root.uri, "--resource", "wallets", "--batch-size", "50", *map(str, paths)]
    real_write, written = tx_module.PlannedObject.write, []

    def dying_write(self: tx_module.PlannedObject, store: object) -> None:
        if len(written) == 9:  # the 10th object: the process is killed part-way through the files
            raise Killed
        written.append(self.key)
        real_write(self, store)  # type: ignore[arg-type]

    monkeypatch.setattr(tx_module.PlannedObject, "write", dying_write)
    with pytest.raises(Killed):
        CliRunner().invoke(cli, command, env=env)
    assert len(written) == 9
    monkeypatch.setattr(tx_module.PlannedObject, "write", real_write)
    if consolidate_between:
        assert CliRunner().invoke(cli, ["consolidate", "--root", root.uri], env=env).exit_code == 0
    res = CliRunner().invoke(cli, command, env=env)  # the same command again
    assert res.exit_code == 0, res.output
    assert CliRunner().invoke(cli, ["consolidate", "--root", root.uri], env=env).exit_code == 0
    again = root.connect().resources["wallets"]
    assert isinstance(again, ec.Resource)
    assert values(again) == expected
    # A third run changes nothing either.
    assert CliRunner().invoke(cli, command, env=env).exit_code == 0
    assert CliRunner().invoke(cli, ["consolidate", "--root", root.uri], env=env).exit_code == 0
    assert values(root.connect().resources["wallets"]) == values(again)  # type: ignore[arg-type]


def test_write_transactions_idempotent_frames(root: Root) -> None:
    """A frame without ids written twice counts twice by default, once with ``idempotent=True``
    (ids from its content) or with the same batch name; a different frame is new data."""
    _db, w = wallets(root)
    w.insert_many(pl.DataFrame({"id": ["a", "b"], "user": ["u", "u"]}))
    batch = pl.DataFrame({"originalId": ["a", "a", "b"], "value": [5.0, 5.0, 1.0]})
    w.write_transactions(batch)
    w.write_transactions(batch)
    for _ in range(2):
        w.write_transactions(batch, idempotent=True)
        w.write_transactions(batch.with_columns(pl.col("value") * 100), idempotent="import-7")
    w.write_transactions(batch.with_columns(pl.col("value") * 10), idempotent=True)
    _db.consolidate()
    assert values(w) == {"a": 10.0 * 2 + 10.0 + 1000.0 + 100.0, "b": 1.0 * 2 + 1.0 + 100.0 + 10.0}
    with pytest.raises(ec.ArgumentError):
        w.write_transactions(batch, idempotent=1)  # type: ignore[arg-type]
    with pytest.raises(ec.InvalidNameError):
        w.write_transactions(batch, idempotent="a/b")
