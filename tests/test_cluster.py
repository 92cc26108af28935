"""Consolidation on a Dask cluster: the workers really do the work, the values are bit-identical
to single-process consolidation and to the model, and exactly once holds when a worker dies, when
the driver dies between the workers' writes and the commit, and when two drivers race.

A LocalCluster of 2 worker processes serves local disk and S3 (moto); ``memory://`` lives in one
process, so its tests use a cluster of threads (the module docstring of
``ecanalytics.consolidation.cluster`` says so for users too)."""

from __future__ import annotations

import os
import random
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from ecanalytics.consolidation import cluster
from ecanalytics.ledger import keys
from ecanalytics.ledger.transactions import pending_schema
from ecanalytics.storage import paths as P
from tests.conftest import Root
from tests.model import LedgerModel, Tx

distributed = pytest.importorskip("distributed", reason="the [dask] extra is not installed")
# Dask's own sockets and event loops, closed at cluster shutdown, are not this project's warnings.
pytestmark = [pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture(scope="module")
def processes() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        yield client


@pytest.fixture(scope="module")
def threads() -> Iterator[Any]:
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as lc, \
            distributed.Client(lc) as client:
        yield client


@pytest.fixture
def client(root: Root, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("threads" if root.kind == "memory" else "processes")


ACCOUNTS = {"id": "string|required", "balance": "number|default:0", "points": "decimal(12,2)|default:0"}


def open_db(root: Root, buckets: int = 4) -> ec.Database:
    db = root.connect(checkpoint_interval=3)
    for field in ("balance", "points"):
        db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field=field, auto_consolidate=False))
    db.create_resource("acc", ACCOUNTS, buckets=buckets)
    return db


def traffic(db: ec.Database, model: LedgerModel, seed: int, n: int, records: int = 30) -> None:
    """Random adds, subs and sets on two fields (one decimal), late timestamps and keyed retries."""
    rng = random.Random(seed)
    acc = db.resources["acc"]
    start = datetime(2026, 5, 1, tzinfo=UTC)
    rows: dict[str, list[dict[str, Any]]] = {"balance": [], "points": []}
    for i in range(n):
        field = rng.choice(["balance", "points"])
        op = rng.choice(["add", "add", "sub", "set"])
        value = float(rng.randrange(1, 400)) / (100 if field == "points" else 1)
        tx = Tx(f"s{seed}-{i}", f"a{rng.randrange(records)}", field, op, value, start + timedelta(minutes=rng.randrange(900)))
        model.write(tx)
        row = {"id": tx.key, "originalId": tx.record, "value": Decimal(str(value)) if field == "points" else value,
               "operation": op, "timestamp": tx.ts}
        rows[field].append(row)
        if rng.random() < 0.1:
            rows[field].append(row)  # a retry with the same key
    for field, batch in rows.items():
        for chunk in range(0, len(batch), 37):  # many small objects
            acc.write_transactions(batch[chunk:chunk + 37], field=field)  # type: ignore[union-attr]


def table(db: ec.Database) -> pl.DataFrame:
    return db.resources["acc"].to_polars()  # type: ignore[union-attr]


def twin(root: Root) -> Root:
    if root.kind == "local":
        return Root("local", root.uri + "-twin")
    return Root(root.kind, root.uri + "-twin", endpoint_url=root.endpoint_url)


def test_dask_consolidation_is_bit_identical_and_runs_on_the_workers(root: Root, client: Any) -> None:
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    on_cluster, local = open_db(root), open_db(twin(root))
    for seed in range(3):  # later rounds fold late data onto committed marks
        traffic(on_cluster, model, seed, 400)
        traffic(local, LedgerModel({"balance": 0.0, "points": 0.0}), seed, 400)
        with distributed.get_task_stream(client) as stream:
            results = on_cluster.consolidate(client=client)
        local.consolidate()
        for f in ("balance", "points"):
            model.consolidate(f)
        ran = {t["key"].split("-")[1] for t in stream.data if isinstance(t["key"], str) and t["key"].startswith("ec-")}
        # A two-round bucket also runs a thresholds task (the task stream does not always list
        # one that short): nothing else, and only then.
        two_rounds = any(r.engine.get("twoRoundBuckets") for r in results)
        assert {"partition", "fold"} <= ran <= {"partition", "fold", *(["thresholds"] if two_rounds else [])}
        assert all(t["worker"] for t in stream.data)
        assert all(r.engine["engine"] == "dask" and r.engine["foldTasks"] >= 1 for r in results)
        engines = {r.field: r.engine for r in results}  # numbers fold from partial states; decimals from rows
        assert engines["balance"]["stateBuckets"] == engines["balance"]["foldTasks"] and engines["points"]["stateBuckets"] == 0
        assert set().union(*(r.engine["workers"] for r in results)) <= set(client.scheduler_info()["workers"])
    got, want = table(on_cluster), table(local)
    assert got.equals(want)  # bit-identical, decimals included
    assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")
    points = model.table("points")
    assert {k: float(v) for k, v in zip(got["id"], got["points"], strict=True)} == pytest.approx(points, abs=1e-9)
    assert [k for k in root.store().find(P.work_dir("acc")) if not k.endswith("/.now")] == []  # runs removed


def dying_reducer(flag: str) -> Any:
    """A Python reducer (sum with sets) whose first call kills its worker process."""
    def reduce(rows: list[dict[str, Any]]) -> float:
        if not os.path.exists(flag):
            Path(flag).write_text("died")
            os._exit(1)
        value = 0.0
        for row in rows:
            value = row["value"] if row["operation"] == "set" else value + (row["value"] if row["operation"] == "add" else -row["value"])
        return value
    return reduce


def test_a_killed_worker_is_rerun_and_nothing_is_applied_twice(tmp_path: Path, processes: Any) -> None:
    root = Root("local", str(tmp_path / "root"))
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", auto_consolidate=False,
                                               reducer=dying_reducer(str(tmp_path / "flag"))))
    db.create_resource("acc", {"id": "string|required", "balance": "number|default:0"}, buckets=3)
    model = LedgerModel({"balance": 0.0})
    rng = random.Random(4)
    for i in range(200):
        tx = Tx(f"k{i}", f"a{rng.randrange(12)}", "balance", rng.choice(["add", "sub", "set"]), float(rng.randrange(50)),
                datetime(2026, 5, 1, tzinfo=UTC) + timedelta(seconds=i))
        model.write(tx)
        db.resources["acc"].write_transactions([{"id": tx.key, "originalId": tx.record, "value": tx.value,  # type: ignore[union-attr]
                                                 "operation": tx.op, "timestamp": tx.ts}])
    result = db.consolidate(client=processes)[0]
    model.consolidate("balance")
    assert (tmp_path / "flag").exists() and result.transactions == 200
    got = table(db)
    assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")


class DriverCrash(BaseException):
    pass


def test_a_driver_killed_before_its_commit_leaves_nothing_applied(root: Root, client: Any) -> None:
    db = open_db(root)
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    traffic(db, model, 9, 1200, records=1000)  # buckets of more than 64 records: their deltas are objects
    ledger = db.resources["acc"].ledger  # type: ignore[union-attr]

    def crash(step: str) -> None:
        if step == "after_delta":
            raise DriverCrash

    ledger.fault = crash
    with pytest.raises(DriverCrash):
        db.consolidate(client=client, field="balance")
    ledger.fault = None
    assert ledger.state().version == 0
    store = root.store()
    leftovers = [k for k in store.find(P.data_dir("acc")) if ".delta-b" in k]
    assert leftovers  # the workers wrote deltas that no log entry names
    # Version 1 is not taken: a paused driver may still commit those deltas, however old they are.
    assert cluster.sweep(ledger) == 0
    assert all(store.exists(k) for k in leftovers)
    db.consolidate(client=client)  # takes version 1: the crashed driver can never commit now
    assert cluster.sweep(ledger) >= len(leftovers)
    assert not any(store.exists(k) for k in leftovers)
    for f in ("balance", "points"):
        model.consolidate(f)
    again = table(root.connect())
    balances = model.table("balance")
    assert {k: v for k, v in zip(again["id"], again["balance"], strict=True) if k in balances or v} == balances


def test_two_racing_drivers_apply_each_transaction_once(root: Root, client: Any) -> None:
    open_db(root).close()
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    writer = root.connect()
    traffic(writer, model, 3, 500)
    errors: list[BaseException] = []

    def drive(use_cluster: bool) -> None:
        try:
            conn = root.connect(checkpoint_interval=3)
            for _ in range(2):
                conn.consolidate(client=client if use_cluster else None)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(flag,)) for flag in (True, True, False)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    final = root.connect()
    final.consolidate()
    for f in ("balance", "points"):
        model.consolidate(f)
    got = table(final)
    assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")
    assert {k: float(v) for k, v in zip(got["id"], got["points"], strict=True)} == pytest.approx(model.table("points"), abs=1e-9)


def test_import_ecanalytics_never_imports_dask() -> None:
    import subprocess
    import sys

    code = "import ecanalytics, sys; print(sorted(m for m in ('dask', 'distributed') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_dask_local_reports_tasks_workers_and_phases(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from ecanalytics.cli import cli

    root = Root("local", str(tmp_path / "root"))
    db = open_db(root)
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    traffic(db, model, 1, 300)
    db.close()
    res = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--dask", "local:2", "--output", "json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout.strip().splitlines()[-1])
    engines = [r["engine"] for r in payload["results"]]
    assert len(engines) == 2 and all(e["engine"] == "dask" and e["workers"] and set(e["phases"]) == {"partitionS", "foldS"}
                                     and e["tasks"] == e["partitionTasks"] + e["foldTasks"] for e in engines)
    for f in ("balance", "points"):
        model.consolidate(f)
    got = table(root.connect())
    assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")
    bad = CliRunner().invoke(cli, ["consolidate", "--root", root.uri, "--dask", "local:x"])
    assert bad.exit_code == 2 and "local:N" in bad.output


def test_recalculate_and_compact_on_the_cluster(root: Root, client: Any) -> None:
    from ecanalytics.ledger import Commit

    db = open_db(root)
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    for seed in (21, 22):
        traffic(db, model, seed, 300)
        db.consolidate(client=client)
    for f in ("balance", "points"):
        model.consolidate(f)
    acc = db.resources["acc"]
    broken = ["a3", "a17", "a25"]
    acc.ledger.commit(lambda st: Commit("update", upserts=st.records_of(broken).with_columns(balance=pl.lit(-1.0))))  # type: ignore[union-attr]
    result = acc.recalculate(field="balance", client=client)  # type: ignore[union-attr]
    want = model.table("balance")
    assert sorted(result.values["id"].to_list()) == sorted(b for b in broken if want.get(b, 0.0) != -1.0)
    assert result.transactions == sum(1 for (r, f), txs in model.applied.items() if f == "balance" for _ in txs)
    got = table(db)
    assert {k: v for k, v in zip(got["id"], got["balance"], strict=True) if k in want or v} == want
    before = table(db)
    compacted = acc.compact("balance", client=client)  # type: ignore[union-attr]
    assert compacted.merged >= 1 and compacted.sources > compacted.merged
    state = acc.ledger.state()  # type: ignore[union-attr]
    keys = state.applied_objects("balance")
    assert sum("/c-" in k for k in keys) == compacted.merged
    assert table(root.connect()).equals(before)
    assert acc.recalculate(field="balance", client=client).changed == 0  # type: ignore[union-attr]


@pytest.mark.parametrize("reducer", ec.consolidation.BUILTIN_REDUCERS)
def test_every_builtin_reducer_is_bit_identical_on_the_cluster(tmp_path: Path, processes: Any, reducer: str) -> None:
    dbs = []
    for name in ("cluster", "local"):
        db = Root("local", str(tmp_path / name)).connect()
        db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", auto_consolidate=False, reducer=reducer))
        db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="points", auto_consolidate=False, reducer=reducer))
        db.create_resource("acc", ACCOUNTS, buckets=3)
        dbs.append(db)
    for seed in (31, 32):  # two rounds: the second folds onto committed values and marks
        for db in dbs:
            traffic(db, LedgerModel({"balance": 0.0, "points": 0.0}), seed, 300)
        dbs[0].consolidate(client=processes)
        dbs[1].consolidate()
    assert table(dbs[0]).equals(table(dbs[1]))
    assert table(dbs[0]).height == 30


def test_tasks_carry_no_credentials(tmp_path: Path) -> None:
    import pickle

    db = ec.connect(str(tmp_path / "root"), create=True)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", auto_consolidate=False))
    acc = db.create_resource("acc", {"id": "string|required", "balance": "number|default:0"})
    c = acc.plugin("balance").consolidator
    secret = "S3CR3T-value-that-must-not-travel"
    c.store.config = c.store.config.__class__(  # as if connect had been given explicit credentials
        c.store.config.protocol, c.store.config.root, key="AKIAEXAMPLE", secret=secret, token="session-token")
    spec = cluster.FieldSpec.of(c)
    assert spec.config.key is None and spec.config.secret is None and spec.config.token is None
    blob = pickle.dumps(spec)
    assert secret.encode() not in blob and b"AKIAEXAMPLE" not in blob and b"session-token" not in blob


def test_the_key_rule_is_the_same_on_the_cluster(root: Root, client: Any) -> None:
    """Keys reused for the same record (retries, other timestamps) and for other records
    (conflicts): the Dask path gives the in-memory path's values (``equals``), the model's, and
    the same conflicts in the same order, with consolidation at random moments."""
    from tests.test_one_truth import model, plan

    writes = plan(11)
    ordered = sorted(writes, key=lambda w: (w[4], w[1], w[2], w[3]))  # keys' occurrences in event order
    tables, conflicts = [], []
    for engine in ("local", "dask"):
        db = root.connect() if engine == "dask" else Root(root.kind, root.uri + "-twin", endpoint_url=root.endpoint_url).connect()
        db.use_plugin(ec.EventualConsistencyPlugin(resource="acc", field="balance", auto_consolidate=False))
        acc = db.create_resource("acc", {"id": "string|required", "balance": "number|default:0"}, buckets=4)
        rng, found = random.Random(5), []
        for key, record, op, value, ts in ordered:
            getattr(acc, op)(record, value, id=key, timestamp=ts)
            if rng.random() < 0.1:
                found += [r.conflicts for r in db.consolidate(client=client if engine == "dask" else None)]
        found += [r.conflicts for r in db.consolidate(client=client if engine == "dask" else None)]
        tables.append(acc.to_polars().sort("id"))
        assert all(f.equals(f.sort(keys.CONFLICT_ORDER)) for f in found)  # each result's in event order
        conflicts.append(pl.concat(found, how="vertical"))
    assert tables[0].equals(tables[1])
    assert dict(zip(tables[1]["id"], tables[1]["balance"], strict=True)) == model(writes)
    assert conflicts[0].height > 0 and conflicts[0].equals(conflicts[1])


# What one call of each Store method costs in requests on S3 (a list for the batch methods).
_REQUESTS = {"read": 1, "exists": 1, "size": 1, "_entries": 1, "find": 1, "find_times": 1, "du": 1,
             "write": 1, "create": 1, "copy": 1, "read_many": "n", "delete": "n"}


def counting_requests(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count the storage requests of every Store in this process (the driver's and, on a cluster
    of threads, the workers'), by kind, and the writes under ``_work/``."""
    from ecanalytics.storage import store as S

    counts: dict[str, int] = {}
    for name, cost in _REQUESTS.items():
        original = getattr(S.Store, name)

        def counted(self: Any, *args: Any, _name: str = name, _cost: Any = cost, _original: Any = original,
                    **kwargs: Any) -> Any:
            n = len(list(args[0])) if _cost == "n" else 1
            counts[_name] = counts.get(_name, 0) + n
            if _name in ("write", "create") and "/_work/" in str(args[0]):
                counts["work"] = counts.get("work", 0) + 1
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(S.Store, name, counted)
    return counts


def test_rows_move_through_dask_not_the_store(root: Root, threads: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 17: a cluster consolidation makes at most two storage requests per bucket more than
    the same consolidation in one process (its tasks read the state and write the deltas, as one
    process does; the rows between partition and fold tasks move through Dask), writes nothing
    under ``_work/``, and gives the same values."""
    buckets = 8
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    local, on_cluster = open_db(root, buckets), open_db(twin(root), buckets)
    rng, start = random.Random(3), datetime(2026, 5, 1, tzinfo=UTC)
    rows = []
    for i in range(900):  # generated ids: these rows go through the partition tasks' buckets
        op, record, value = rng.choice(["add", "add", "sub", "set"]), f"a{rng.randrange(200)}", float(rng.randrange(1, 400))
        ts = start + timedelta(seconds=i)  # distinct instants: the model's order is the store's
        model.write(Tx(f"t{i}", record, "balance", op, value, ts))
        rows.append({"originalId": record, "value": value, "operation": op, "timestamp": ts})
    for db in (local, on_cluster):
        for chunk in range(0, len(rows), 50):
            db.resources["acc"].write_transactions(rows[chunk:chunk + 50], field="balance")  # type: ignore[union-attr]
    cluster.sweep(on_cluster.resources["acc"].ledger)  # type: ignore[union-attr]  # (not part of the count)
    counts = counting_requests(monkeypatch)
    local.consolidate(field="balance")
    alone = sum(v for k, v in counts.items() if k != "work")
    counts.clear()
    result = on_cluster.consolidate(client=threads, field="balance")[0]
    spread = sum(v for k, v in counts.items() if k != "work")
    assert result.engine["engine"] == "dask" and result.engine["bucketPieces"] >= result.engine["foldTasks"] > 1
    assert counts.get("work", 0) == 0
    assert spread <= alone + 2 * buckets, (alone, spread, counts)
    model.consolidate("balance")
    got, want = table(on_cluster), table(local)
    assert got.select("id", "balance").equals(want.select("id", "balance"))
    assert {k: v for k, v in zip(got["id"], got["balance"], strict=True) if k in model.table("balance")} \
        == model.table("balance")


def weigh() -> int:
    from dask.sizeof import sizeof

    return int(sizeof(pl.DataFrame({"n": range(1_000)})))


def test_buckets_move_partial_states_not_rows(root: Root, client: Any) -> None:
    """Issue 17: rows reach the fold tasks as per-bucket partial states (one row per record per
    partition task), never as rows: in one round for add/sub rows; in two where a ``set`` is among
    them, or rows are dated before their record's applied marks (the thresholds go out to the
    workers that hold the rows, which answer with per-record sums). Only a bucket whose value
    would not be finite takes its rows. Every round gives the model's values and the one-process
    twin's, bit for bit."""
    buckets = 4
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    on_cluster, local = open_db(root, buckets), open_db(twin(root), buckets)
    rng, start = random.Random(11), datetime(2026, 5, 1, tzinfo=UTC)

    def write(rows: list[dict[str, Any]], modelled: bool = True) -> None:
        for row in rows if modelled else []:
            model.write(Tx(row.get("id", f"g{rng.random()}"), row["originalId"], "balance", row["operation"],
                           row["value"], row["timestamp"]))
        for db in (on_cluster, local):
            for chunk in range(0, len(rows), 40):
                db.resources["acc"].write_transactions(rows[chunk:chunk + 40], field="balance")  # type: ignore[union-attr]

    unique = iter(range(10**6))  # distinct instants: generated ids then never decide an order

    def traffic_(n: int, minutes: range, keyed: str = "", ops: tuple[str, ...] = ("add", "sub")) -> list[dict[str, Any]]:
        return [{"originalId": f"a{rng.randrange(60)}", "value": float(rng.randrange(1, 400)), "operation": rng.choice(ops),
                 "timestamp": start + timedelta(minutes=rng.choice(minutes), microseconds=next(unique)),
                 **({"id": f"{keyed}{i}"} if keyed and i % 5 == 0 else {})} for i in range(n)]

    def run(modelled: bool = True) -> tuple[Any, dict[str, str]]:
        with distributed.get_task_stream(client) as stream:
            result = on_cluster.consolidate(client=client, field="balance")[0]
        local.consolidate(field="balance")
        got = table(on_cluster)
        assert got.select("id", "balance").equals(table(local).select("id", "balance"))
        if modelled:
            model.consolidate("balance")
            assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")
        return result, {t["key"]: t["worker"] for t in stream.data if isinstance(t["key"], str)}

    def picks(keys: dict[str, str], tag: str) -> list[str]:
        return [k for k in keys if k.startswith("ec-partition-") and k.rsplit("-", 1)[1].startswith(tag)]

    write(traffic_(1_200, range(100, 200), keyed="k1-"))  # add/sub, generated ids and caller keys
    result, keys = run()
    assert result.engine["stateBuckets"] == result.engine["foldTasks"] == buckets
    assert result.engine["twoRoundBuckets"] == 0 and not picks(keys, "b") and not picks(keys, "a")
    # Every worker that ran a task weighs Polars frames by their size (Dask's default counts 56
    # bytes for any frame, so it would ship a partition's rows to wherever a small task runs).
    assert set(client.run(weigh).values()) == {pl.DataFrame({"n": range(1_000)}).estimated_size()}

    late = traffic_(300, range(0, 50))  # before every applied mark: one round cannot tell how late
    write(late + traffic_(300, range(300, 400)))
    result, keys = run()
    assert result.engine["stateBuckets"] == result.engine["foldTasks"] and result.engine["twoRoundBuckets"] > 0
    assert not picks(keys, "b") and picks(keys, "a") and [k for k in keys if k.startswith("ec-thresholds-")]

    mixed = traffic_(560, range(500, 700), keyed="k3-", ops=("add", "add", "sub", "set"))  # sets, keyed sets
    write([*mixed, *traffic_(80, range(450, 520))])  # 16 objects: one partition task, ~10 rows a record
    result, keys = run()
    assert result.engine["stateBuckets"] == result.engine["twoRoundBuckets"] == result.engine["foldTasks"]
    assert not picks(keys, "b")

    huge = [{"originalId": "a1", "value": 1.5e308, "operation": "add", "timestamp": start + timedelta(minutes=800)}] * 2
    write(huge, modelled=False)  # a sum that is not finite: the rows' path holds the record back
    result, keys = run(modelled=False)
    assert picks(keys, "b") and result.engine["stateBuckets"] == result.engine["foldTasks"] - 1
    assert result.held == 2 and "a1" in result.held_records
    # The fold task took the rows as they travelled; what it held back is the objects' rows, as
    # the one-process twin holds them (field, source and operation as strings).
    held = [db.resources["acc"].plugin("balance").consolidator.held_frame(db.resources["acc"].ledger.state())  # type: ignore[union-attr]
            for db in (on_cluster, local)]
    assert held[0].height == 2 and held[0].schema == held[1].schema and held[0].schema["source"] == pl.String()
    assert held[0].drop("id").sort(pl.all()).equals(held[1].drop("id").sort(pl.all()))


def test_rows_with_about_a_record_each_move_as_rows(root: Root, client: Any) -> None:
    """Issue 17: where a partition task's rows touch about as many records as rows (10^8 over 10^7
    does), partial states would not shrink what moves, so the buckets take their rows (and the
    workers hold one copy, not two); the values are the model's."""
    model = LedgerModel({"balance": 0.0, "points": 0.0})
    db = open_db(root)
    start = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [{"originalId": f"u{i}", "value": float(i % 97 + 1), "operation": "add" if i % 3 else "sub",
             "timestamp": start + timedelta(seconds=i)} for i in range(600)]  # one row per record
    for i, row in enumerate(rows):
        model.write(Tx(f"t{i}", row["originalId"], "balance", row["operation"], row["value"], row["timestamp"]))
    for chunk in range(0, len(rows), 30):
        db.resources["acc"].write_transactions(rows[chunk:chunk + 30], field="balance")  # type: ignore[union-attr]
    result = db.consolidate(client=client, field="balance")[0]
    model.consolidate("balance")
    assert result.engine["stateBuckets"] == 0 and result.engine["foldTasks"] == 4
    got = table(db)
    assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")


def test_rows_wait_and_move_with_their_few_valued_columns_as_categories(root: Root) -> None:
    """Issue 17: a partition task's bucket rows carry ``operation`` as an enum, ``field`` as a
    category and ``source`` as one where it has few values (what a 10^8-row run holds and ships
    shrinks by about a third; a source per row stays strings, which Dask can weigh), and
    :func:`cluster.bucket_frame` gives back exactly the rows the objects hold, split the same way,
    also after a trip through Dask's serialization and from pieces of both kinds."""
    from distributed.protocol import deserialize, serialize

    from ecanalytics.ledger.buckets import split
    from ecanalytics.ledger.transactions import read_objects

    db = open_db(root)
    start = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [{"originalId": f"u{i % 23}", "value": float(i + 1), "operation": ("add", "sub", "set")[i % 3],
             "timestamp": start + timedelta(seconds=i), "source": ("api", "import", "batch job")[i % 5 % 3]}
            for i in range(240)]
    many = [{"originalId": f"u{i % 23}", "value": float(i % 7 + 1), "operation": "add",
             "timestamp": start + timedelta(hours=1, seconds=i), "source": f"request-{i}-ñ"}
            for i in range(cluster.FEW_SOURCES * 2)]
    for chunk in range(0, len(rows), 40):
        db.resources["acc"].write_transactions(rows[chunk:chunk + 40], field="balance")  # type: ignore[union-attr]
    db.resources["acc"].write_transactions(many, field="balance")  # type: ignore[union-attr]
    c = db.resources["acc"].plugin("balance").consolidator  # type: ignore[union-attr]
    keys = sorted(k for k in db.store.find(P.transactions_dataset("acc", "balance")) if k.endswith(".parquet"))
    assert len(keys) == 7
    few_keys, many_keys = [k for k in keys if k != keys[-1]], keys[-1:]  # the last written sorts last
    spec = cluster.FieldSpec.of(c)
    summary, runs, _partials = cluster.partition_task(spec, few_keys, 0)
    _summary, other, _ = cluster.partition_task(spec, many_keys, len(few_keys))
    assert summary.read == few_keys and sorted(runs) == list(summary.buckets)
    want = split(read_objects(db.store, few_keys, value_dtype=c.dtype)[0], "originalId", c.ledger.buckets)
    both = split(read_objects(db.store, keys, value_dtype=c.dtype)[0], "originalId", c.ledger.buckets)
    assert sorted(want) == sorted(runs) and sum(f.height for f in runs.values()) == len(rows)
    for k, frame in runs.items():
        assert frame.schema["operation"] == pl.Enum(["set", "add", "sub"])
        assert isinstance(frame.schema["source"], pl.Categorical) and isinstance(frame.schema["field"], pl.Categorical)
        assert frame.estimated_size() < want[k].estimated_size()
        assert cluster.bucket_frame([cluster.Moved(frame)], c.dtype).equals(want[k])
        # Between workers a piece travels as an Arrow IPC stream and comes back the same frame.
        header, frames = serialize(cluster.Moved(frame))
        assert header["serializer"] == "dask"
        back = deserialize(header, frames)
        assert isinstance(back, cluster.Moved) and back.frame.schema == frame.schema and back.frame.equals(frame)
        # A partition whose rows each have their own source keeps them as strings; a bucket's
        # pieces of both kinds make the same rows as the objects.
        assert other[k].schema["source"] == pl.String()
        moved = deserialize(*serialize(cluster.Moved(other[k])))
        assert cluster.bucket_frame([back, moved], c.dtype).equals(both[k])
        # Unrestored (what a fold task takes): the travelling
        # types, ``source`` as strings where the pieces differ in it, the same rows once cast.
        for pieces, source in (([back], frame.schema["source"]), ([back, moved], pl.String())):
            kept = cluster.bucket_frame(pieces, c.dtype, restore=False)
            assert kept.schema["operation"] == pl.Enum(["set", "add", "sub"]) and kept.schema["source"] == source
            assert kept.cast(pending_schema(c.dtype)).equals(  # type: ignore[arg-type]
                cluster.bucket_frame(pieces, c.dtype))
    empty = deserialize(*serialize(cluster.Moved(runs[min(runs)].clear())))
    assert empty.frame.height == 0 and empty.frame.schema == runs[min(runs)].schema
    db.close()


def test_a_delete_mode_retention_folds_the_same_on_the_cluster(root: Root, client: Any) -> None:
    """After a ``delete``-mode retention the field's rows take the general fold (the cut stands
    like a ``set``), which a cluster fold task reaches with the rows as they travelled (operation
    an enum, field and source categories): late rows dated before the cut change nothing, the
    others apply, and the values equal the one-process twin's."""
    from tests.test_retention import NOW, history, values

    on_cluster, local = (history(r, seed=5) for r in (root, twin(root)))
    for _db, w, _txs, _bases in (on_cluster, local):
        w.gc("7d", archive=False)
    before = values(local[1])
    rng = random.Random(17)
    late = [(f"r{rng.randrange(5)}", NOW - timedelta(days=30, minutes=i), float(rng.randrange(1, 40))) for i in range(9)]
    # After the cut (seven days before today) and after every applied row.
    fresh = [(f"r{rng.randrange(5)}", datetime.now(UTC) - timedelta(hours=2, minutes=i), float(rng.randrange(1, 40)))
             for i in range(30)]
    for _db, w, _txs, _bases in (on_cluster, local):
        for i, (rid, ts, v) in enumerate(late + fresh):
            w.add(rid, v, id=f"n{i}", timestamp=ts)
        w.plugin("balance").flush()
    result = on_cluster[0].consolidate(client=client)[0]
    local[0].consolidate()
    # The rows' path (no partial states: the cut is not a mergeable state), every new row read.
    assert result.engine["engine"] == "dask" and result.engine["foldTasks"] >= 1 and result.engine["stateBuckets"] == 0
    assert (result.transactions, result.late) == (len(fresh), len(late))
    assert values(on_cluster[1]) == values(local[1])
    # The late rows, dated before the cut, changed nothing; every fresh one applied.
    sums = Counter[str]()
    for rid, _ts, v in fresh:
        sums[rid] += v
    assert values(local[1]) == {rid: before[rid] + sums[rid] for rid in before}
