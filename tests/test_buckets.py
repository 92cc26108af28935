"""Bucketed record state: a stable layout, deltas and checkpoints per changed bucket, one bucket
read per ``get``, a change of the bucket count, and bounded-memory (spilling) consolidation that
gives the same values as the in-memory one, checked against the plain-Python model."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

import ecanalytics as ec
from ecanalytics import _runtime
from ecanalytics.cli import cli
from ecanalytics.consolidation import field as field_module
from ecanalytics.consolidation import python_reference
from ecanalytics.consolidation.consolidator import Consolidator
from ecanalytics.consolidation.runs import Runs
from ecanalytics.ledger.buckets import buckets_of
from ecanalytics.storage import paths as P
from tests.conftest import Root
from tests.model import LedgerModel, Tx
from tests.test_cli import env_for

IDS = ["w1", "w2", "alice", "bob", "x" * 40, "ü-ñ"]


def test_the_bucket_of_an_id_is_a_persisted_contract() -> None:
    # xxh3_64 of "" is the published test vector 0x2D06800538D394C2; its top 32 bits place it.
    assert buckets_of([""], 2**16).to_list() == [0x2D06800538D394C2 >> 48]
    # Pinned: changing these moves records between buckets of every existing resource.
    assert buckets_of(IDS, 16).to_list() == [9, 15, 4, 1, 2, 9]
    assert buckets_of(IDS, 1000).to_list() == [603, 984, 303, 78, 134, 601]
    code = f"from ecanalytics.ledger.buckets import buckets_of; print(buckets_of({IDS!r}, 1000).to_list())"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": "123", "PATH": ""})
    assert other.stdout.strip() == "[603, 984, 303, 78, 134, 601]"
    spread = Counter(buckets_of([f"r{i}" for i in range(16_000)], 16).to_list())
    assert sorted(spread) == list(range(16)) and min(spread.values()) > 800


def wallets(root: Root, buckets: int = 8, **kwargs: Any) -> tuple[ec.Database, Any]:
    db = root.connect(**kwargs)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False))
    return db, db.create_resource("w", {"id": "string|required", "balance": "number|default:0"}, buckets=buckets)


def entry(root: Root, version: int) -> dict[str, Any]:
    return json.loads(root.store().read(P.log_entry("w", version)))


def test_commits_and_checkpoints_touch_only_changed_buckets(root: Root) -> None:
    db, w = wallets(root, checkpoint_interval=1)
    ids = [f"r{i}" for i in range(2000)]
    w.insert_many(pl.DataFrame({"id": ids}))
    first = json.loads(root.store().read(P.last_checkpoint("w")))
    assert len(first["buckets"]) == 8 and all(b["records"] for b in first["buckets"])
    w.add("r7", 5)
    w.add("r1234", 2)
    db.consolidate()
    touched = sorted(set(buckets_of(["r7", "r1234"], 8).to_list()))
    last = entry(root, w.ledger.state().version)
    assert sorted(map(int, last["delta"])) == touched and sorted(map(int, last["marks"])) == touched
    second = json.loads(root.store().read(P.last_checkpoint("w")))
    changed = [k for k in range(8) if second["buckets"][k] != first["buckets"][k]]
    assert changed == touched  # the other buckets keep the objects of the first checkpoint
    again = root.connect()
    got = again.resources["w"].to_polars()  # type: ignore[union-attr]
    assert got.height == 2000 and got.filter(pl.col("balance") != 0).sort("id").rows() == [("r1234", 2.0), ("r7", 5.0)]


def test_get_in_a_fresh_process_reads_one_bucket(root: Root) -> None:
    _db, w = wallets(root, checkpoint_interval=1)
    w.insert_many(pl.DataFrame({"id": [f"r{i}" for i in range(5000)], "balance": [float(i) for i in range(5000)]}))
    fresh = root.connect()
    reads: list[str] = []
    real = fresh.store.read_parquet
    fresh.store.read_parquet = lambda rel: (reads.append(rel), real(rel))[1]  # type: ignore[method-assign]
    assert fresh.resources["w"].get("r4321")["balance"] == 4321.0  # type: ignore[union-attr]
    bucket = buckets_of(["r4321"], 8)[0]
    assert reads == [json.loads(root.store().read(P.last_checkpoint("w")))["buckets"][bucket]["records"]]


def test_rebucket_keeps_values_and_history(root: Root) -> None:
    db, w = wallets(root, buckets=4, checkpoint_interval=3)
    rng = random.Random(5)
    expected: dict[str, float] = {}
    for i in range(300):
        rid = "r1" if i == 0 else f"r{rng.randrange(120)}"
        w.add(rid, i + 1)
        expected[rid] = expected.get(rid, 0) + i + 1
    db.consolidate()
    before = w.ledger.state().version
    state = w.rebucket(32)
    assert state.n_buckets == 32 and state.version == before + 1
    w.add("r1", 1000)
    expected["r1"] = expected.get("r1", 0) + 1000
    db.consolidate()
    for conn in (db, root.connect()):
        got = conn.resources["w"].to_polars()  # type: ignore[union-attr]
        assert dict(zip(got["id"], got["balance"], strict=True)) == expected
    old = w.ledger.state_at(before).records
    assert dict(zip(old["id"], old["balance"], strict=True)) == {**expected, "r1": expected["r1"] - 1000}
    res = CliRunner().invoke(cli, ["rebucket", "--root", root.uri, "--resource", "w", "--buckets", "5", "--output", "json"],
                             env=env_for(root))
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["buckets"] == 5
    got = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    assert dict(zip(got["id"], got["balance"], strict=True)) == expected
    with pytest.raises(ec.errors.ConfigurationError, match="rebucket"):
        root.connect().create_resource("w", {"id": "string|required", "balance": "number|default:0"}, buckets=9)
    with pytest.raises(ec.errors.ArgumentError, match="buckets"):
        w.rebucket(0)


def random_traffic(w: Any, seed: int, n: int, model: LedgerModel) -> None:
    rng = random.Random(seed)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(n):
        op = rng.choice(["add", "add", "sub", "set"])
        tx = Tx(f"k{seed}-{i}", f"r{rng.randrange(40)}", "balance", op, float(rng.randrange(1, 50)),
                start + timedelta(minutes=rng.randrange(600)))
        getattr(w, op)(tx.record, tx.value, id=tx.key, timestamp=tx.ts)
        model.write(tx)
        if rng.random() < 0.1:  # a retry of the same write
            getattr(w, op)(tx.record, tx.value, id=tx.key, timestamp=tx.ts)


@pytest.mark.parametrize("budget", [7, 40, 10_000_000])  # 40: frames of several spill files
def test_spilling_consolidation_matches_the_model(root: Root, budget: int) -> None:
    db, w = wallets(root, buckets=5, checkpoint_interval=2)
    model = LedgerModel({"balance": 0.0})
    consolidator = w.plugin("balance").consolidator
    consolidator.budget_rows = budget
    for seed in range(3):  # three rounds: the later ones fold late data onto committed marks
        random_traffic(w, seed, 120, model)
        w.plugin("balance").flush()
        result = db.consolidate()[0]
        model.consolidate("balance")
        stats = entry(root, result.version)["stats"]
        assert stats["spilled"] is (budget < 120)
        assert sorted(result.values["id"].to_list()) == sorted(set(result.values["id"].to_list()))
    got = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")


def test_racing_spilling_consolidators_apply_each_transaction_once(root: Root) -> None:
    db, w = wallets(root, buckets=3, checkpoint_interval=3)
    expected: dict[str, float] = {}
    for i in range(400):
        w.add(f"r{i % 37}", i)
        expected[f"r{i % 37}"] = expected.get(f"r{i % 37}", 0) + i
    w.plugin("balance").flush()
    errors: list[BaseException] = []

    def consolidate() -> None:
        try:
            conn = root.connect(checkpoint_interval=3)
            conn.resources["w"].plugin("balance").consolidator.budget_rows = 5  # type: ignore[union-attr]
            conn.consolidate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=consolidate) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    db.consolidate()
    got = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    assert dict(zip(got["id"], got["balance"], strict=True)) == expected
    # The loser's bucket deltas were removed; every delta object left is named by a log entry.
    named = set()
    for v in range(1, w.ledger.state().version + 1):
        raw = entry(root, v)
        named |= {r for r in [*raw["delta"].values(), *raw["marks"].values()] if not r.startswith("inline:")}
    on_disk = {k for k in root.store().find("w/_data", ".parquet") if "delta-b" in k or "marks-b" in k}
    assert on_disk == named


def test_checkpoints_keep_bases_and_chain_the_parts_after_them(root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecanalytics.ledger import log as ledger_log

    monkeypatch.setattr(ledger_log, "SMALL_BUCKET_ROWS", 0)  # every bucket counts as big: the chains show
    db, w = wallets(root, buckets=8, checkpoint_interval=1)
    rnd = random.Random(11)
    expected: dict[str, float] = {}
    snapshots: dict[int, dict[str, float]] = {}
    chained = 0
    for _ in range(14):
        for _ in range(40):
            rec, amount = f"r{rnd.randrange(300)}", float(rnd.randrange(1, 100))
            if rnd.random() < 0.1:
                w.set(rec, amount)
                expected[rec] = amount
            else:
                w.add(rec, amount)
                expected[rec] = expected.get(rec, 0.0) + amount
        version = db.consolidate()[0].version
        assert version is not None
        snapshots[version] = dict(expected)
        cp = json.loads(root.store().read(P.last_checkpoint("w")))
        assert cp["format"] == 3 and cp["version"] == version
        rewritten = [b for b in cp["buckets"] if b["baseVersion"] == version]
        chains = [len(b.get("parts", [])) for b in cp["buckets"]]
        assert len(rewritten) <= 2  # a quarter of the 8 buckets (all changed), rounded up
        assert max(chains) <= ledger_log.CHAIN_INTERVALS  # no base older than 4 intervals of parts
        chained += sum(1 for n in chains if n)
        # A fresh reader (checkpoint plus chains plus the log after it) sees every value.
        fresh = root.connect()
        table = fresh.resources["w"].to_polars()  # type: ignore[union-attr]
        assert dict(zip(table["id"].to_list(), table["balance"].to_list(), strict=True)) == expected
    assert chained  # the rolling rewrite left chains behind
    # Time travel starts from the checkpoint at or before a version: chains included.
    ledger = root.connect().resources["w"].ledger  # type: ignore[union-attr]
    for version, values in list(snapshots.items())[::4]:
        old = ledger.state_at(version).records
        assert dict(zip(old["id"].to_list(), old["balance"].to_list(), strict=True)) == values
    assert w.verify() == []  # every object a chain names exists


def test_a_format_2_checkpoint_still_reads(root: Root) -> None:
    db, w = wallets(root, buckets=4, checkpoint_interval=1)
    for i in range(30):
        w.add(f"r{i % 7}", i)
    db.consolidate()
    expected = {f"r{k}": float(sum(i for i in range(30) if i % 7 == k)) for k in range(7)}
    cp = json.loads(root.store().read(P.last_checkpoint("w")))
    assert all(not b.get("parts") for b in cp["buckets"])  # small buckets: every one rewritten
    old = {**cp, "format": 2, "buckets": [{"records": b["records"], "marks": b["marks"]} for b in cp["buckets"]]}
    root.store().write(P.last_checkpoint("w"), json.dumps(old).encode())
    table = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    assert dict(zip(table["id"].to_list(), table["balance"].to_list(), strict=True)) == expected


def test_a_checkpoint_rebuilds_an_unreadable_base_it_rewrites(root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    from ecanalytics.ledger import log as ledger_log

    monkeypatch.setattr(ledger_log, "SMALL_BUCKET_ROWS", 0)  # every bucket counts as big: one base rewritten a checkpoint
    db, w = wallets(root, buckets=2, checkpoint_interval=1)
    ids = [f"r{i}" for i in range(300)]
    w.insert_many(pl.DataFrame({"id": ids}))  # v1: bucket 0 gets a base, bucket 1 a chain
    in0, in1 = (next(i for i, k in zip(ids, buckets_of(ids, 2).to_list(), strict=True) if k == b) for b in (0, 1))
    w.add(in0, 5)
    db.consolidate()  # v2: bucket 1 (the older base) rewritten, bucket 0 chains this commit
    hint = json.loads(root.store().read(P.last_checkpoint("w")))
    assert hint["buckets"][0].get("parts") and hint["buckets"][0]["records"]
    root.store().write(hint["buckets"][0]["records"], b"not parquet")  # bucket 0's base is unreadable
    fresh = root.connect(checkpoint_interval=1)  # a new process: bucket 0 is not loaded there
    fw = fresh.resources["w"]
    assert isinstance(fw, ec.Resource)
    fw.add(in1, 7)
    result = fresh.consolidate()[0]  # v3 touches bucket 1 only; its checkpoint rewrites bucket 0
    assert result.version == 3
    after = json.loads(root.store().read(P.last_checkpoint("w")))
    assert after["version"] == 3 and after["buckets"][0]["baseVersion"] == 3
    table = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    values = dict(zip(table["id"].to_list(), table["balance"].to_list(), strict=True))
    assert values == {i: 5.0 if i == in0 else 7.0 if i == in1 else 0.0 for i in ids}


def test_parts_applied_together_equal_a_model_of_each_bucket() -> None:
    """apply_parts (one Polars call for every bucket a commit changed) against dicts: records are
    replaced by id, marks by (id, field), deleted ids leave both."""
    from ecanalytics.ledger.buckets import apply_parts

    rnd = random.Random(7)

    def frames(recs: dict[str, float], marks: dict[tuple[str, str], int]) -> tuple[pl.DataFrame, pl.DataFrame]:
        return (pl.DataFrame({"id": list(recs), "balance": list(recs.values())}, schema={"id": pl.String, "balance": pl.Float64}),
                pl.DataFrame({"id": [k[0] for k in marks], "field": [k[1] for k in marks], "n": list(marks.values())},
                             schema={"id": pl.String, "field": pl.String, "n": pl.Int64}))

    changes, expected = [], []
    for _bucket in range(6):
        recs = {f"r{i}": float(rnd.randrange(100)) for i in rnd.sample(range(30), rnd.randrange(0, 12))}
        marks = {(r, f): rnd.randrange(100) for r in recs for f in ("balance", "points") if rnd.random() < 0.7}
        new_recs = {f"r{i}": float(rnd.randrange(100)) for i in rnd.sample(range(30), rnd.randrange(0, 6))}
        field = rnd.choice(["balance", "points"])
        new_marks = {(r, field): rnd.randrange(100) for r in new_recs}
        deletes = tuple(f"r{i}" for i in rnd.sample(range(30), rnd.randrange(0, 4)) if f"r{i}" not in new_recs)
        want_recs = {**{k: v for k, v in recs.items() if k not in deletes}, **new_recs}
        want_marks = {**{k: v for k, v in marks.items() if k[0] not in deletes}, **new_marks}
        changes.append((frames(recs, marks), *(frames(new_recs, new_marks) if new_recs else (None, None)), deletes))
        expected.append((want_recs, want_marks))
    for (recs_out, marks_out), (want_recs, want_marks) in zip(apply_parts(changes), expected, strict=True):
        assert dict(zip(recs_out["id"].to_list(), recs_out["balance"].to_list(), strict=True)) == want_recs
        assert recs_out.height == len(want_recs)
        got_marks = {(i, f): n for i, f, n in marks_out.iter_rows()}
        assert got_marks == want_marks and marks_out.height == len(want_marks)


def test_spilled_runs_are_read_back_in_order_in_frames_of_at_least_the_rows_asked() -> None:
    """A bucket's spill files come back in the order their rows were added, several files to a
    frame until it holds ``rows`` rows (the last frame may hold fewer), every row exactly once."""
    chunks = [pl.DataFrame({"originalId": [f"r{i % 7}" for i in range(c * 10, c * 10 + 10)],
                            "n": list(range(c * 10, c * 10 + 10))}) for c in range(9)]
    with Runs(3, budget_rows=10) as runs:  # a spill every chunk past the first: one file per bucket each
        for chunk in chunks:
            runs.add(chunk)
        buckets = runs.buckets()
        everything = pl.concat(chunks)
        for k in buckets:
            expected = everything.filter(pl.col("originalId").is_in(
                [r for r in everything["originalId"].unique() if buckets_of([r], 3)[0] == k]))["n"].to_list()
            one_by_one = [f.height for f in runs.frames(k)]
            assert len(one_by_one) >= 4  # several spill files: the batching below has something to do
            for rows in (1, 5, 12, 10_000):
                frames = list(runs.frames(k, rows))
                assert pl.concat(frames)["n"].to_list() == expected
                # A frame takes whole files until it holds ``rows``, and not one file more.
                sizes, held = [], 0
                for height in one_by_one:
                    held += height
                    if held >= rows:
                        sizes, held = [*sizes, held], 0
                assert [f.height for f in frames] == sizes + ([held] if held else [])


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_results_made_ahead_come_in_order_and_at_most_depth_ahead(depth: int) -> None:
    # What reads spill files and history chunks ahead of their caller (_runtime.ahead).
    started: list[int] = []
    lock = threading.Lock()

    def make(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    got = []
    for i, result in enumerate(_runtime.ahead(make, list(range(10)), depth)):
        with lock:
            assert max(started) <= i + depth  # never more than ``depth`` items ahead of this one
        got.append(result)
    assert got == [i * i for i in range(10)] and sorted(started) == list(range(10))
    assert list(_runtime.ahead(make, [], depth)) == []


def test_a_buckets_halves_are_the_buckets_of_twice_as_many() -> None:
    # A spilled consolidation splits each bucket's rows into two runs by bucket_expr(2n) and folds
    # them side by side: run j must hold only rows of bucket j // 2, for any bucket count.
    ids = [f"r{i}" for i in range(5_000)] + IDS
    for n in (1, 3, 5, 16, 1000):
        halves = buckets_of(ids, 2 * n).to_list()
        assert [h // 2 for h in halves] == buckets_of(ids, n).to_list()
        assert set(halves) == set(range(2 * n)) or n == 1000  # both halves of each bucket are used


def test_a_spilled_overflow_holds_its_record_and_commits_both_halves_of_its_bucket(root: Root) -> None:
    # One bucket, so its two halves hold every record; x overflows in the states fold, and the
    # bucket falls back to the general fold, which holds x back and commits the rest.
    db, w = wallets(root, buckets=1)
    w.plugin("balance").consolidator.budget_rows = 8
    ids = [f"r{i}" for i in range(30)]
    assert len(set(buckets_of([*ids, "x"], 2).to_list())) == 2
    expected: dict[str, float] = {}
    w.set("x", 1e308)
    for i in range(90):
        w.add(ids[i % 30], i)
        expected[ids[i % 30]] = expected.get(ids[i % 30], 0.0) + i
    db.consolidate()
    w.add("x", 1e308)
    for i in range(60):
        w.sub(ids[i % 30], 1)
        expected[ids[i % 30]] -= 1
    result = db.consolidate()[0]
    assert entry(root, result.version)["stats"]["spilled"] is True
    assert (result.held, result.held_records) == (1, ("x",))
    got = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    assert dict(zip(got["id"], got["balance"], strict=True)) == {**expected, "x": 1e308}


def test_a_half_that_fails_fails_the_consolidation_and_a_rerun_applies_everything_once(
        root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    # The halves of a bucket fold on two threads: one half raising while the other folds must
    # commit nothing (objects stay pending), and the next consolidation applies every row once.
    db, w = wallets(root, buckets=2)
    w.plugin("balance").consolidator.budget_rows = 8
    records = [f"r{i}" for i in range(23)]
    assert len(set(buckets_of(records, 4).to_list())) == 4  # both halves of both buckets hold rows
    expected: dict[str, float] = {}
    for i in range(120):
        w.add(records[i % 23], i, id=f"k{i}")  # caller keys past the budget: the spilling path
        expected[records[i % 23]] = expected.get(records[i % 23], 0.0) + i
    w.plugin("balance").flush()
    real = Consolidator._fold_frames_states
    calls: list[int] = []  # the thread of each half's fold
    lock = threading.Lock()

    def call() -> int:
        with lock:
            calls.append(threading.get_ident())
            return len(calls)

    def flaky(self: Consolidator, *args: Any, **kwargs: Any) -> Any:
        if call() == 2:  # bucket 0's second half, while its first may still be folding
            raise OSError("injected: a spill file could not be read")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Consolidator, "_fold_frames_states", flaky)
    with pytest.raises(ec.ConsolidationFailedError, match="injected") as failed:
        db.consolidate()
    assert isinstance(failed.value.__cause__, OSError)
    assert root.connect().resources["w"].to_polars().height == 0  # type: ignore[union-attr]
    # The rerun folds bucket 0's two halves side by side: each waits for the other to start.
    both = threading.Barrier(2, timeout=30)

    def side_by_side(self: Consolidator, *args: Any, **kwargs: Any) -> Any:
        if call() <= 4:  # calls 3 and 4: bucket 0's halves (a serial fold would break the barrier)
            both.wait()
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Consolidator, "_fold_frames_states", side_by_side)
    result = db.consolidate()[0]
    assert len(set(calls[2:4])) == 2 and len(calls) == 6  # two threads; four halves folded
    assert result.transactions == 120 and entry(root, result.version)["stats"]["spilled"] is True
    got = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    assert dict(zip(got["id"], got["balance"], strict=True)) == expected


def counted_reads(monkeypatch: pytest.MonkeyPatch, w: Any) -> Counter[str]:
    """Every key the field's store reads from now on (``read_many``: what history and pending
    reads use; ``read``: log entries and the objects they name)."""
    store = w.plugin("balance").consolidator.store
    real_many, real_one, reads = store.read_many, store.read, Counter[str]()

    def many(keys: Any, *args: Any, **kwargs: Any) -> Any:
        keys = list(keys)
        reads.update(keys)
        return real_many(keys, *args, **kwargs)

    def one(key: str, *args: Any, **kwargs: Any) -> Any:
        reads[key] += 1
        return real_one(key, *args, **kwargs)

    monkeypatch.setattr(store, "read_many", many)
    monkeypatch.setattr(store, "read", one)
    return reads


@pytest.mark.parametrize("reducer", ["default", "python"])  # python: a callable, the general path
def test_the_late_rows_of_a_spilled_consolidation_read_the_history_once(
        root: Root, monkeypatch: pytest.MonkeyPatch, reducer: str) -> None:
    # A spilled consolidation folds its buckets one at a time, each with late rows needing applied
    # ones: the rows after a late set (the default reducer: each bucket half asked, 8 reads of
    # each applied object here), or a callable reducer's whole history of its records and their
    # base (once per bucket). They share one read: each applied object is read once.
    db = root.connect()
    default = python_reference("default")
    db.use_plugin(ec.EventualConsistencyPlugin(resource="w", field="balance", auto_consolidate=False,
                                               reducer=(lambda txs: float(default(txs))) if reducer == "python" else None))
    w = db.create_resource("w", {"id": "string|required", "balance": "number|default:0"}, buckets=4)
    model = LedgerModel({"balance": 0.0})
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [f"r{i}" for i in range(24)]
    assert len(set(buckets_of(records, 8).to_list())) == 8  # every half of every bucket has records

    def write(tx: Tx) -> None:
        getattr(w, tx.op)(tx.record, tx.value, id=tx.key, timestamp=tx.ts)
        model.write(tx)

    for day in range(3):
        for i, r in enumerate(records):
            write(Tx(f"a{day}-{i}", r, "balance", "add", float(i + day), start + timedelta(days=day, hours=i % 20)))
        db.consolidate()
        model.consolidate("balance")
    applied = set(w.plugin("balance").consolidator.ledger.state().applied_objects("balance"))
    assert len(applied) == 72
    for i, r in enumerate(records):  # a late set for every record (day 0 or 1), and a late add
        write(Tx(f"s{i}", r, "balance", "set", 100.0 + i, start + timedelta(days=i % 2, hours=21)))
        write(Tx(f"l{i}", r, "balance", "add", 1.0, start + timedelta(days=1, hours=22)))
    w.plugin("balance").consolidator.budget_rows = 8  # caller keys past the budget: the spilling path
    reads = counted_reads(monkeypatch, w)
    result = db.consolidate()[0]
    model.consolidate("balance")
    assert entry(root, result.version)["stats"]["spilled"] is True and result.transactions == 48
    assert {k: reads[k] for k in applied} == dict.fromkeys(applied, 1)
    # The callable reducer folds its late records from their base, which reads every log entry
    # before this commit: once (it was once per bucket: 4 times here); the default reducer, none.
    earlier = [reads[P.log_entry("w", v)] for v in range(1, result.version)]
    assert earlier == [1 if reducer == "python" else 0] * 3
    got = root.connect().resources["w"].to_polars()  # type: ignore[union-attr]
    assert dict(zip(got["id"], got["balance"], strict=True)) == model.table("balance")


@pytest.mark.parametrize("budget", [5, 10_000])  # the rows read spilled to local disk, or in memory
def test_a_shared_history_answers_as_the_history_reading_each_object_once(
        root: Root, monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    monkeypatch.setattr(field_module, "HISTORY_CHUNK_OBJECTS", 16)  # the 46 objects in three chunks
    db, w = wallets(root, buckets=4)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    written: set[tuple[str, str, float, datetime]] = set()  # id, record, value, timestamp: the history
    for day in range(4):
        for i in range(10):
            tx = (f"d{day}-{i}", f"r{i}", float(day * 10 + i), start + timedelta(days=day, hours=i))
            w.add(tx[1], tx[2], id=tx[0], timestamp=tx[3])
            written.add(tx)
            if i == 3:  # a retry in an object of its own: applied once, the other occurrence hidden
                w.add(tx[1], tx[2], id=tx[0], timestamp=tx[3])
        if day == 1:  # x would overflow: its rows are held back, in applied objects but not the history
            w.add("x", 1e308, id="x1", timestamp=start + timedelta(days=1, hours=11))
            w.add("x", 1e308, id="x2", timestamp=start + timedelta(days=1, hours=12))
        db.consolidate()
    c = w.plugin("balance").consolidator
    st = c.ledger.state()
    assert st.hidden_of("balance").height == 4 and c.held_frame(st).height == 2
    assert len(st.applied_objects("balance")) == 46
    records = [*(f"r{i}" for i in range(10)), "x"]
    by_bucket: dict[int, list[str]] = {}
    for r, k in zip(records, buckets_of(records, 4).to_list(), strict=True):
        by_bucket.setdefault(k, []).append(r)
    assert len(by_bucket) > 1
    days = (2, 3, 0, 1)  # a later day first, then earlier ones: only the days before are read
    expected = {(since, k): c.history(st, since=(start + timedelta(days=since)).date(), ids=pl.Series(ids))
                for since in days for k, ids in by_bucket.items()}  # Field.history (16 objects at a time)
    for (since, k), frame in expected.items():  # ... against what was written
        assert set(zip(frame["id"], frame["originalId"], frame["value"], frame["timestamp"], strict=True)) == {
            t for t in written if t[1] in by_bucket[k] and t[3] >= start + timedelta(days=since)}
    reads = counted_reads(monkeypatch, w)
    with c.shared_history(st, frozenset(), budget) as shared:
        errors: list[BaseException] = []

        def ask(k: int) -> None:
            try:
                assert_frame_equal(shared((start + timedelta(days=2)).date(), pl.Series(by_bucket[k])), expected[2, k])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=ask, args=(k,)) for k in by_bucket]  # at once, from threads
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert set(reads) == set(st.applied_objects("balance", since="2026-01-03"))
        for since in days[1:]:
            for k, ids in by_bucket.items():
                assert_frame_equal(shared((start + timedelta(days=since)).date(), pl.Series(ids)), expected[since, k])
    assert dict(reads) == dict.fromkeys(st.applied_objects("balance"), 1)


def test_a_shared_history_that_failed_to_read_fails_every_later_question(
        root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows of the chunks read before the failure are in its runs: answering from them (or reading
    # them again) would be wrong, so every later question raises the same error.
    monkeypatch.setattr(field_module, "HISTORY_CHUNK_OBJECTS", 16)
    db, w = wallets(root, buckets=2)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(40):
        w.add(f"r{i % 5}", 1, timestamp=start + timedelta(days=i % 2, minutes=i))
    db.consolidate()
    c = w.plugin("balance").consolidator
    st = c.ledger.state()
    names = st.applied_objects("balance")
    assert len(names) == 40
    blob = c.store.read(names[20])
    c.store.delete([names[20]])  # in the second chunk of 16 objects
    with pytest.raises(ec.MissingObjectError):
        c.history(st, ids=pl.Series(["r0"]))
    with c.shared_history(st, frozenset(), 10_000) as shared:
        with pytest.raises(ec.MissingObjectError, match="missing"):
            shared(start.date(), pl.Series(["r0"]))
        c.store.write(names[20], blob)  # back: a new read would answer, but this one stays failed
        assert c.history(st, ids=pl.Series(["r0"])).height == 8
        with pytest.raises(ec.MissingObjectError, match="missing"):
            shared(start.date(), pl.Series(["r0"]))


def test_a_shared_base_answers_as_the_base_and_a_failed_read_is_read_again(
        root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    # A callable reducer folds its late records from Field.base (every insert entry of the log);
    # the shared history reads it once and keeps it by bucket. A read that fails keeps nothing.
    _db, w = wallets(root, buckets=4)
    w.insert_many(pl.DataFrame({"id": [f"r{i}" for i in range(12)], "balance": [float(i * 3) for i in range(12)]}))
    w.insert({"id": "late", "balance": 7.0})
    c = w.plugin("balance").consolidator
    st = c.ledger.state()
    want = c.base(st)
    assert dict(zip(want["originalId"], want["current"], strict=True)) == {
        **{f"r{i}": float(i * 3) for i in range(12)}, "late": 7.0}
    real, calls = Consolidator.base, []

    def flaky(self: Consolidator, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("injected: a log entry could not be read")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Consolidator, "base", flaky)
    ids = pl.Series(["r1", "r5", "late", "nobody"])
    with c.shared_history(st, frozenset(), 5) as shared:  # 5: the base spills to local disk
        with pytest.raises(OSError, match="injected"):
            shared.base(ids)
        for _ in range(2):
            got = shared.base(ids)
            assert dict(zip(got["originalId"], got["current"], strict=True)) == {"r1": 3.0, "r5": 15.0, "late": 7.0}
        assert shared.base(pl.Series(["nobody"])).height == 0
    assert len(calls) == 2  # the failed read, then one read for every later question


def test_the_whole_log_is_read_in_concurrent_batches_up_to_its_state(
        root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ledger.entries(upto=...) (every entry for Field.base: recalculation, retention,
    # reconciliation, a callable reducer's late rows) reads LOG_READ_CHUNK entries per request
    # batch, not one by one, and never past the state's version; a missing entry is an error.
    from ecanalytics.ledger import log as log_module

    monkeypatch.setattr(log_module, "LOG_READ_CHUNK", 4)
    db, w = wallets(root, buckets=2)
    for i in range(5):
        w.insert({"id": f"r{i}", "balance": float(i)})
        w.add(f"r{i}", 1)
        db.consolidate()
    ledger = w.plugin("balance").consolidator.ledger
    st = ledger.state()
    assert st.version == 10
    w.insert({"id": "later", "balance": 99.0})  # version 11: after the state asked about
    store = ledger.store
    batches: list[list[str]] = []
    alone: list[str] = []
    real_many, real_one = store.read_many, store.read

    def many(keys: Any, *args: Any, **kwargs: Any) -> Any:
        batches.append(list(keys))
        return real_many(keys, *args, **kwargs)

    def one(key: str, *args: Any, **kwargs: Any) -> Any:
        alone.append(key)
        return real_one(key, *args, **kwargs)

    monkeypatch.setattr(store, "read_many", many)
    monkeypatch.setattr(store, "read", one)
    everything = ledger.entries(upto=st.version)
    assert [e.version for e in everything] == list(range(1, 11))
    assert [e.kind for e in everything] == ["insert", "consolidate"] * 5
    assert batches == [[P.log_entry("w", v) for v in range(first, min(first + 4, 11))] for first in (1, 5, 9)]
    assert not [k for k in alone if "_log/" in k]  # no entry read one by one
    assert [e.version for e in ledger.entries(("insert",), upto=st.version)] == [1, 3, 5, 7, 9]
    assert [e.version for e in ledger.entries(("insert",))][-1] == 11  # without upto: to the newest, one by one
    base = w.plugin("balance").consolidator.base(st)  # at version 10: not "later"
    assert dict(zip(base["originalId"], base["current"], strict=True)) == {f"r{i}": float(i) for i in range(5)}
    entry6 = real_one(P.log_entry("w", 6))
    store.write(P.log_entry("w", 6), b"not json")
    with pytest.raises(ec.CorruptObjectError, match="00000000000000000006"):
        ledger.entries(upto=st.version)
    store.delete([P.log_entry("w", 6)])  # a log the library wrote never lacks an entry
    with pytest.raises(ec.MissingObjectError, match=r"00000000000000000006\.json is missing"):
        ledger.entries(upto=st.version)
    store.write(P.log_entry("w", 6), entry6)
    assert [e.version for e in ledger.entries(upto=st.version)] == list(range(1, 11))
