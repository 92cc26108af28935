"""Catalog changes are commits: concurrent changes to one resource (attributes, plugins) from
independent connections are all kept, and a reader sees the latest version."""

from __future__ import annotations

import threading

import ecanalytics as ec
from ecanalytics.storage import paths as P
from tests.conftest import Root


def test_racing_attribute_and_plugin_changes_are_all_kept(root: Root) -> None:
    db = root.connect()
    db.create_resource("acc", {"id": "string|required", "balance": "number|default:0"})
    writers, per_writer = 6, 5
    start = threading.Barrier(writers)
    errors: list[BaseException] = []

    def change(t: int) -> None:
        try:
            conn = root.connect()  # an independent client: the race goes through the store
            res = conn.resources["acc"]
            assert isinstance(res, ec.Resource)
            start.wait()
            for i in range(per_writer):
                res.add_attribute(f"a{t}_{i}", "string|optional")
            res.add_attribute(f"p{t}", "number|default:0")
            conn.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field=f"p{t}", auto_consolidate=False))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=change, args=(t,)) for t in range(writers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    fresh = root.connect()
    res = fresh.resources["acc"]
    assert isinstance(res, ec.Resource)
    expected = {"id", "balance"} | {f"a{t}_{i}" for t in range(writers) for i in range(per_writer)} | {
        f"p{t}" for t in range(writers)}
    assert set(res.schema.attributes) == expected
    assert set(res.plugins) == {f"p{t}" for t in range(writers)}
    # Every registered plugin manages its field: an acknowledged add is applied.
    for t in range(writers):
        res.add("r1", f"p{t}", t + 1)
    fresh.consolidate()
    record = res.get("r1")
    assert [record[f"p{t}"] for t in range(writers)] == [float(t + 1) for t in range(writers)]
    # Each change is its own create-only version; nothing was overwritten.
    versions = [n for n in root.store().listdir(P.catalog_dir()) if n.startswith("acc.")]
    assert len(versions) == 1 + writers * (per_writer + 2)


def test_a_refused_change_writes_no_version(root: Root) -> None:
    db = root.connect()
    res = db.create_resource("acc", {"id": "string|required", "balance": "number|default:0"})
    before = sorted(root.store().listdir(P.catalog_dir()))
    try:
        res.add_attribute("tier", "string|required")  # no default: stored records could not follow
    except ec.SchemaEvolutionError:
        pass
    else:
        raise AssertionError("a required attribute without a default was accepted")
    assert sorted(root.store().listdir(P.catalog_dir())) == before
    assert set(root.connect().resources["acc"].schema.attributes) == {"id", "balance"}  # type: ignore[union-attr]
