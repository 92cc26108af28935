"""Wrong place, loud failure; one field's failure is one field's; corrupt metadata is typed."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cli
from ecanalytics.storage import paths as P
from tests.conftest import BUCKET, Root


def capped(txs: list[dict[str, Any]]) -> float:
    """A custom reducer: the default fold, capped at 100."""
    acc = 0.0
    for t in txs:
        acc = t["value"] if t["operation"] == "set" else acc + (-t["value"] if t["operation"] == "sub" else t["value"])
    return min(acc, 100.0)


def env(root: Root) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}


def two_fields(root: Root, reducer: Any = capped) -> ec.Database:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", auto_consolidate=False, reducer=reducer))
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="points", auto_consolidate=False))
    acc = db.create_resource("acc", {"id": "string|required", "balance": "number|default:0", "points": "number|default:0"})
    acc.add("a", "balance", 150)
    acc.add("a", "points", 3)
    return db


def test_cli_on_a_root_without_catalog_exits_1(root: Root) -> None:
    two_fields(root).close()
    typo = root.uri + "x"
    for args in (["consolidate"], ["inspect"], ["sql", "run", "daily_totals", "-p", "start=2026-11-01"], ["gc", "--retain", "30d"]):
        res = CliRunner().invoke(cli, [*args, "--root", typo], env=env(root))
        assert res.exit_code == 1, (args, res.output)
        assert "No ecanalytics catalog" in str(res.exception or res.output)
        assert "create=True" not in str(res.exception) and "--root" in str(res.exception)  # said in flags
    with pytest.raises(ec.RootNotFoundError, match="Did you mean") as info:
        ec.connect(typo, endpoint_url=root.endpoint_url, create=False)
    assert isinstance(info.value, ec.EcError) and root.uri.rsplit("/", 1)[-1] in str(info.value)
    ec.connect(root.uri, endpoint_url=root.endpoint_url, create=False).close()  # the real one opens


@pytest.mark.s3
def test_a_missing_bucket_is_always_an_error(s3: str) -> None:
    for create in (True, False):
        with pytest.raises(ec.RootNotFoundError, match="bucket 'nosuchbucket'"):
            ec.connect("s3://nosuchbucket/x", endpoint_url=s3, create=create)
    ec.connect(f"s3://{BUCKET}/new", endpoint_url=s3).close()


def test_one_fields_failure_is_that_fields_only(root: Root) -> None:
    two_fields(root).close()
    db = root.connect()  # a process without the custom reducer
    with pytest.raises(ec.ConsolidationFailedError) as info:
        db.consolidate()
    assert list(info.value.failures) == ["acc.balance"]
    assert isinstance(info.value.failures["acc.balance"], ec.ReducerRequiredError)
    assert [r.field for r in info.value.results] == ["points"]  # type: ignore[attr-defined]
    assert db.resources["acc"].get("a")["points"] == 3  # type: ignore[union-attr]

    res = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--output", "json"], env=env(root))
    assert res.exit_code == 1
    payload = json.loads(res.stdout[res.stdout.index("{"):])
    assert [f["field"] for f in payload["failures"]] == ["balance"]
    assert payload["failures"][0]["error"] == "ReducerRequiredError"

    ok = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--output", "json",
                                  "--reducer", "acc.balance=tests.test_loud_failures:capped"], env=env(root))
    assert ok.exit_code == 0, ok.output
    assert root.connect().resources["acc"].get("a")["balance"] == 100  # type: ignore[union-attr]
    bad = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--reducer", "acc.balance=nope:nothing"],
                             env=env(root))
    assert bad.exit_code != 0


def test_named_reducers_from_an_entry_point(root: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package registers ``capped`` in the ``ecanalytics.reducers`` group; the catalog stores the
    name, so a fresh connection (or the CLI) finds it again."""
    dist = tmp_path / "site" / "capped_reducers-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: capped-reducers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent("""
        [ecanalytics.reducers]
        capped = tests.test_loud_failures:capped
    """))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    two_fields(root, reducer="capped").close()
    db = root.connect()
    assert db.resources["acc"].plugin("balance").reducer_name == "capped"  # type: ignore[union-attr]
    db.consolidate()
    assert db.resources["acc"].get("a")["balance"] == 100  # type: ignore[union-attr]
    with pytest.raises(ec.ConfigurationError, match=r"ecanalytics\.reducers"):
        ec.EventualConsistencyPlugin(resource="acc", field="balance", reducer="no-such-reducer")
    assert sys.modules["tests.test_loud_failures"].capped is capped


def test_corrupt_catalog_entry_breaks_only_its_resource(root: Root) -> None:
    two_fields(root).close()
    store = root.store()
    store.write(P.catalog_entry("broken"), b"{not json")
    store.write(P.catalog_entry("shaped"), b'{"name": "shaped", "attributes": []}')
    db = root.connect()
    assert db.resources["acc"].value("a", "points") == 3  # type: ignore[union-attr]
    db.consolidate(resource="acc", field="points")
    for name in ("broken", "shaped"):
        with pytest.raises(ec.CorruptObjectError, match=f"{name}.json"):
            db.resources[name]


def test_wrongly_shaped_log_entry_and_checkpoint_are_typed(root: Root) -> None:
    db = root.connect(checkpoint_interval=1)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
    w = db.create_resource("w", {"id": "string|required", "balance": "number|default:0"}, buckets=2)
    w.insert_many([{"id": f"r{i}"} for i in range(300)])  # big enough for its buckets to be objects
    w.add("a", 2)
    db.consolidate()
    store = root.store()
    hint = json.loads(store.read(P.last_checkpoint("w")))
    for bucket in hint["buckets"]:  # valid Parquet, wrong columns
        store.write_parquet(bucket["records"], pl.DataFrame({"nope": [1]}))
    again = root.connect()
    assert again.resources["w"].get("a")["balance"] == 2  # type: ignore[union-attr]  # replayed from the log
    assert again.resources["w"].to_polars().height == 301  # type: ignore[union-attr]
    for shape in (b"{}", b"[]", b'{"version": 2, "committedAt": 5, "kind": "x", "token": "t"}'):
        store.write(P.log_entry("w", 2), shape)
        with pytest.raises(ec.CorruptObjectError, match=r"00000000000000000002\.json"):
            root.connect().resources["w"].get("a")  # type: ignore[union-attr]


def test_reducer_option_never_replaces_a_builtin_reducer(root: Root) -> None:
    two_fields(root).close()
    store = root.store()
    before = store.read(P.catalog_entry("acc"))
    res = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--reducer",
                                   "acc.points=tests.test_loud_failures:capped"], env=env(root))
    assert res.exit_code == 2 and "built-in reducer" in res.output
    ok = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--reducer",
                                  "acc.balance=tests.test_loud_failures:capped"], env=env(root))
    assert ok.exit_code == 0, ok.output
    assert store.read(P.catalog_entry("acc")) == before  # nothing persisted


def test_consolidate_fails_on_a_resource_it_cannot_open(root: Root) -> None:
    two_fields(root, reducer=None).close()
    store = root.store()
    store.write(P.catalog_entry("broken"), b"{trunc")
    store.write(P.catalog_entry("misnamed"), b'{"name": "other", "attributes": {"id": "string|required"}}')
    res = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--output", "json"], env=env(root))
    assert res.exit_code == 1
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    assert sorted(f["resource"] for f in payload["failures"]) == ["broken", "misnamed"]
    assert root.connect().resources["acc"].get("a")["points"] == 3  # type: ignore[union-attr]  # the rest went on
