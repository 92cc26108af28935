"""Retention through the commit log: values never change, pending transactions are untouched,
recalculation starts from the recorded base, and a crash anywhere is finished by a rerun."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from click.testing import CliRunner

import ecanalytics as ec
from ecanalytics.cli import cli
from ecanalytics.ledger.transactions import history_keys
from tests.conftest import Root
from tests.test_operations import event_fold

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def history(root: Root, seed: int = 9) -> tuple[ec.Database, ec.Resource, dict[str, list[tuple[datetime, str, str, float]]], dict[str, float]]:
    """60 days of traffic, consolidated every 5 days in order (so values follow event order)."""
    rng = random.Random(seed)
    db = root.connect(checkpoint_interval=5)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               batch_transactions=True, batch_size=3, flush_interval=3600))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    bases = {f"r{i}": float(rng.randrange(0, 30)) for i in range(5)}
    for rid, b in bases.items():
        w.insert({"id": rid, "balance": b})
    txs: dict[str, list[tuple[datetime, str, str, float]]] = {rid: [] for rid in bases}
    for day in range(60, 0, -1):
        for i in range(3):
            rid, op = rng.choice(sorted(bases)), rng.choices(["add", "sub", "set"], weights=[5, 3, 1])[0]
            ts, key, v = NOW - timedelta(days=day, minutes=-i), f"d{day}-{i}", float(rng.randrange(1, 40))
            getattr(w, op)(rid, v, id=key, timestamp=ts)
            txs[rid].append((ts, key, op, v))
        if day % 5 == 1:  # consolidating groups of days in order keeps values in event order
            db.consolidate()
    return db, w, txs, bases


def values(w: ec.Resource) -> dict[str, float]:
    t = w.to_polars()
    return dict(zip(t["id"].to_list(), t["balance"].to_list(), strict=True))


def test_retention_archives_old_objects_and_changes_no_value(root: Root) -> None:
    db, w, txs, bases = history(root)
    before = values(w)
    assert before == {rid: event_fold(bases[rid], txs[rid]) for rid in bases}
    late = NOW - timedelta(days=45)
    w.add("r0", 1000, id="late", timestamp=late)  # old but still pending: must not be touched
    db.flush()
    total_before = w.plugin().dataset
    all_before = db.resources[total_before].query(include_archived=True).height  # type: ignore[union-attr]

    from ecanalytics.maintenance import retain

    result = retain(w.plugin().consolidator, 30, now=NOW)
    assert result.cut == "2026-10-28" and result.objects > 0 and result.mode == "archive"
    assert values(w) == before
    remaining = db.resources[total_before].query(include_archived=False)  # type: ignore[union-attr]
    assert remaining.filter(pl.col("id") != "late")["cohortDate"].min() >= datetime(2026, 10, 28).date()
    assert "late" in remaining["id"].to_list()  # the pending one stayed
    everything = db.resources[total_before].query(include_archived=True)  # type: ignore[union-attr]
    assert everything.height == all_before
    assert len(history_keys(db.store, f"_archive/{total_before}")) == result.objects

    assert w.recalculate().changed == 0  # the recorded base plus retained history gives the same values
    assert ec.reports.run(db, "reconciliation").height == 0  # the report starts from the same base
    db.consolidate()  # the late one is folded in event order, although its day was archived
    assert w.get("r0")["balance"] == event_fold(bases["r0"], sorted([*txs["r0"], (late, "late", "add", 1000.0)]))
    assert w.recalculate().changed == 0
    assert retain(w.plugin().consolidator, 30, now=NOW).version is None  # same cut again: nothing to do
    # The archive keeps the history readable: event time before the cut works too.
    early = NOW - timedelta(days=40)
    got_early = w.to_polars(events_until=early)
    with_late = {**txs, "r0": sorted([*txs["r0"], (late, "late", "add", 1000.0)])}
    assert dict(zip(got_early["id"].to_list(), got_early["balance"].to_list(), strict=True)) == {
        rid: event_fold(bases[rid], [t for t in with_late[rid] if t[0] <= early]) for rid in bases}
    until = NOW - timedelta(days=10)
    expected = {rid: event_fold(bases[rid], [t for t in txs[rid] if t[0] <= until]) for rid in bases}
    expected["r0"] = event_fold(bases["r0"], sorted([t for t in txs["r0"] if t[0] <= until] + [(late, "late", "add", 1000.0)]))
    got = w.to_polars(events_until=until)
    assert dict(zip(got["id"].to_list(), got["balance"].to_list(), strict=True)) == expected


@pytest.mark.parametrize("step", ["after_delta", "after_log", "retention_move"])
def test_crash_during_retention_then_rerun(root: Root, step: str) -> None:
    _db, w, txs, bases = history(root, seed=12)
    before = values(w)

    def crash(at: str) -> None:
        if at == step:
            raise RuntimeError(f"simulated crash at {at}")

    from ecanalytics.maintenance import retain

    w.ledger.fault = crash
    with pytest.raises(RuntimeError):
        retain(w.plugin().consolidator, 20, now=NOW)
    w.ledger.fault = None
    db2 = root.connect()
    w2 = db2.resources["wallets"]
    assert isinstance(w2, ec.Resource)
    retain(w2.plugin().consolidator, 20, now=NOW)
    dataset = "wallets_transactions_balance"
    live, archived = history_keys(db2.store, dataset), history_keys(db2.store, f"_archive/{dataset}")
    assert not {k for k in live} & {k[len("_archive/"):] for k in archived}  # each object in one place
    everything = db2.resources[dataset].query(include_archived=True)  # type: ignore[union-attr]
    assert everything.height == sum(len(v) for v in txs.values()) and everything["id"].n_unique() == everything.height
    assert values(w2) == before
    assert w2.recalculate().changed == 0
    assert values(w2) == {rid: event_fold(bases[rid], txs[rid]) for rid in bases}


def test_gc_cli_delete_mode(root: Root) -> None:
    db, w, _txs, _bases = history(root, seed=3)
    before = values(w)
    env = {"AWS_ENDPOINT_URL": root.endpoint_url} if root.endpoint_url else {}
    res = CliRunner().invoke(cli, ["gc", "--root", root.uri, "--retain", "7d", "--delete", "--output", "json"], env=env)
    assert res.exit_code == 0, res.output
    assert '"mode": "delete"' in res.output
    assert history_keys(db.store, "_archive/wallets_transactions_balance") == []
    assert values(w) == before
    assert w.recalculate().changed == 0
    bad = CliRunner().invoke(cli, ["gc", "--root", root.uri, "--retain", "soon"], env=env)
    assert bad.exit_code != 0


@pytest.mark.parametrize("first", ["archive", "delete"])
def test_a_late_row_before_an_earlier_cut_keeps_the_next_base_exact(root: Root, first: str) -> None:
    """A row dated before a retention cut that arrives after it, then a second cut (delete mode):
    the new base is the whole history before the new cut folded in event order. After an
    ``archive`` cut the late row counts where it falls (here before a ``set``, so for nothing); after
    a ``delete`` cut it has no effect (the base stands like a set). Values, ``ec_bases``, the
    reconciliation report and ``recalculate`` all agree with a plain fold."""
    from ecanalytics.maintenance import retain

    db, w, txs, bases = history(root)
    c = w.plugin().consolidator
    retain(c, 40, now=NOW, archive=first == "archive")  # cut 2026-10-18
    # Late rows for every record, dated before the first cut: after an early set of theirs if
    # any, else anywhere before the cut.
    late: dict[str, list[tuple[datetime, str, str, float]]] = {}
    for i, rid in enumerate(sorted(bases)):
        sets = [t for t in txs[rid] if t[2] == "set" and t[0] < NOW - timedelta(days=41)]
        when = (sets[0][0] - timedelta(minutes=30)) if sets else NOW - timedelta(days=50, minutes=i)
        late[rid] = [(when, f"late-{rid}", "add", 7.0 + i)]
        w.add(rid, 7.0 + i, id=f"late-{rid}", timestamp=when)
    db.consolidate()
    counted = {rid: txs[rid] + (late[rid] if first == "archive" else []) for rid in bases}
    expected = {rid: event_fold(bases[rid], counted[rid]) for rid in bases}
    assert values(w) == expected
    second = retain(c, 20, now=NOW, archive=False)  # cut 2026-11-07
    assert second.mode == "delete" and second.objects > 0
    cut = datetime(2026, 11, 7, tzinfo=UTC)
    assert values(w) == expected
    assert ec.reports.run(db, "reconciliation").height == 0
    assert w.recalculate().changed == 0 and values(w) == expected
    based = db.sql("SELECT id, value FROM ec_bases").pl()
    assert dict(zip(based["id"].to_list(), based["value"].to_list(), strict=True)) == {
        rid: event_fold(bases[rid], [t for t in counted[rid] if t[0] < cut]) for rid in bases}


def test_an_archive_cut_after_a_delete_cut_keeps_the_base_standing(root: Root) -> None:
    """After a delete-mode cut the history before it is gone, so a later archive-mode cut's base
    stands at its cut like a set too: values, recalculate, events_until and the reconciliation
    agree, and a late row dated before the later cut has no effect (documented), while one after
    it counts."""
    from ecanalytics.maintenance import retain

    db, w, txs, bases = history(root)
    c = w.plugin().consolidator
    expected = {rid: event_fold(bases[rid], txs[rid]) for rid in bases}
    assert retain(c, 40, now=NOW, archive=False).mode == "delete"  # cut 2026-10-18
    second = retain(c, 20, now=NOW, archive=True)  # cut 2026-11-07, archive mode
    assert second.mode == "archive" and second.objects > 0
    assert values(w) == expected
    assert w.recalculate().changed == 0 and ec.reports.run(db, "reconciliation").height == 0
    w.add("r0", 1000, id="before-cut", timestamp=NOW - timedelta(days=25))  # before the second cut: no effect
    w.add("r1", 7, id="after-cut", timestamp=NOW - timedelta(days=15))
    db.consolidate()
    expected["r1"] = event_fold(bases["r1"], [*txs["r1"], (NOW - timedelta(days=15), "after-cut", "add", 7.0)])
    assert values(w) == expected
    assert w.recalculate().changed == 0 and values(w) == expected
    assert ec.reports.run(db, "reconciliation").height == 0
    until = w.to_polars(events_until=NOW)
    assert dict(zip(until["id"].to_list(), until["balance"].to_list(), strict=True)) == expected
    with pytest.raises(ec.ValidationError, match="deleted by retention"):
        w.to_polars(events_until=NOW - timedelta(days=30))
