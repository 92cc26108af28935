"""The fold into per-record states (ecanalytics.consolidation.states) against plain-Python folds
of the whole history, and against the general path (runs) on the same objects.

Generated ids (``auto-…``) go to compact rows without their id, so the cases here write frames
without ids, in several objects, with many transactions at the same instant as a ``set`` (the
id decides their order: the states look it up in the object again), late rows, late sets and
records that exist before; caller keys and held rows ride along as exact rows.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

import ecanalytics as ec
from ecanalytics.consolidation import consolidator as consolidator_module
from ecanalytics.consolidation import python_reference
from tests.conftest import Root

T0 = datetime(2026, 11, 2, 12, tzinfo=UTC)
DATASET = "wallets_transactions_balance"


def make(root: Root, reducer: str, **plugin: Any) -> tuple[ec.Database, ec.Resource]:
    db = root.connect(checkpoint_interval=4)
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False,
                                               reducer=reducer, **plugin))
    return db, db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})


def frame(rng: random.Random, n: int, *, sets: bool, instants: list[datetime]) -> pl.DataFrame:
    ops = ["add", "sub", "set"] if sets else ["add", "sub"]
    return pl.DataFrame({
        "originalId": [f"r{rng.randrange(6)}" for _ in range(n)],
        "value": [float(rng.randrange(1, 50)) for _ in range(n)],
        "operation": [rng.choices(ops, weights=[5, 3, 2][:len(ops)])[0] for _ in range(n)],
        "timestamp": [rng.choice(instants) for _ in range(n)],
    })


def expected(db: ec.Database, reducer: str, initial: dict[str, float]) -> dict[str, float]:
    """Every record's value folded in plain Python over its whole history in (timestamp, id) order."""
    history = db.resources[DATASET].query().sort("timestamp", "id")
    out: dict[str, float] = {}
    fold = python_reference(reducer)
    for rid in sorted(set(history["originalId"].to_list()) | set(initial)):
        rows = history.filter(pl.col("originalId") == rid).to_dicts()
        start = [{"operation": "set", "value": initial.get(rid, 0.0), "synthetic": True}]
        out[rid] = float(fold(start + rows))
    return out


@pytest.mark.parametrize("chunk", [None, 2], ids=["chunks", "small-chunks"])
@pytest.mark.parametrize("reducer", ["default", "sum", "min", "max"])
def test_states_equal_a_python_fold_of_the_whole_history(root: Root, reducer: str, chunk: int | None,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``chunk``: objects per chunk, so that sets arrive for records already folded as
    aggregates in earlier chunks (held from then on, or the fold starts again)."""
    if chunk is not None:
        monkeypatch.setattr(consolidator_module, "FIRST_CHUNK_OBJECTS", chunk)
        monkeypatch.setattr(consolidator_module, "CHUNK_OBJECTS", chunk)
    looked_up: list[int] = []
    original = consolidator_module.Consolidator._ids_of

    def counting(self: Any, candidates: list[str]) -> Any:
        ids_of = original(self, candidates)
        return lambda wanted: looked_up.append(wanted.height) or ids_of(wanted)

    monkeypatch.setattr(consolidator_module.Consolidator, "_ids_of", counting)
    rng = random.Random(reducer)
    db, w = make(root, reducer)
    w.insert({"id": "r0", "balance": 40.0})
    initial = {"r0": 40.0}
    # Few instants, so that many rows share one with a set (ties broken by id); later rounds
    # reach back before what is applied (late rows and late sets).
    instants = [T0 + timedelta(hours=h) for h in range(0, 48, 6)]
    forms = set()
    for round_ in range(4):
        window = instants[4:] if round_ == 0 else instants
        w.write_transactions(frame(rng, 60, sets=round_ != 1, instants=window), batch_size=9)
        if round_ == 2:  # caller keys ride along as exact rows
            w.add("r1", 3.0, id="k-1", timestamp=instants[5])
            w.set("r2", 11.0, id="k-2", timestamp=instants[6])
        result = db.consolidate()[0]
        assert result.engine["fold"] == "states"
        forms.add(result.engine["form"])
        values = {r["id"]: r["balance"] for r in w.to_polars().to_dicts()}
        assert values == expected(db, reducer, initial), f"round {round_}"
    assert "compact" in forms
    assert sum(looked_up) > 0  # rows at the instant of a set or of the applied maximum: their ids decided
    assert w.recalculate().changed == 0


def test_tied_ids_are_read_in_batches_and_a_vanished_object_is_named(root: Root,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The ids of tied rows are read again a batch of objects at a time (``IDS_OBJECTS``, here
    2): one ``read_objects`` call per batch, each row given its own object's id; an object gone
    by then is a :class:`ec.MissingObjectError` naming it, and nothing is committed."""
    monkeypatch.setattr(consolidator_module, "IDS_OBJECTS", 2)
    calls: list[list[str]] = []  # the keys of each read made while looking ids up
    looking: list[pl.DataFrame] = []  # each ids_of question
    vanish: list[bool] = [False]
    original_ids_of, original_read = consolidator_module.Consolidator._ids_of, consolidator_module.read_objects

    def ids_of(self: Any, candidates: list[str]) -> Any:
        inner = original_ids_of(self, candidates)

        def ask(wanted: pl.DataFrame) -> pl.DataFrame:
            looking.append(wanted)
            if vanish[0]:  # the pending object of the first tied row disappears before its lookup
                self.store.delete([candidates[int(wanted["_object"].min())]])  # type: ignore[arg-type]
            inside[0] = True
            try:
                return inner(wanted)
            finally:
                inside[0] = False
        return ask

    inside = [False]

    def reading(store: Any, keys: list[str], **kw: Any) -> Any:
        if inside[0]:
            calls.append(list(keys))
        return original_read(store, keys, **kw)

    monkeypatch.setattr(consolidator_module.Consolidator, "_ids_of", ids_of)
    monkeypatch.setattr(consolidator_module, "read_objects", reading)
    rng = random.Random(11)
    db, w = make(root, "default")
    instants = [T0 + timedelta(hours=h) for h in range(0, 12, 6)]  # two instants: ties everywhere
    for round_ in range(3):
        w.write_transactions(frame(rng, 80, sets=True, instants=instants), batch_size=7)
        db.consolidate()
        assert {r["id"]: r["balance"] for r in w.to_polars().to_dicts()} == expected(db, "default", {}), round_
    assert looking, "no tie was looked up"
    objects = [w["_object"].n_unique() for w in looking]
    assert [len(c) for c in calls] == [n for total in objects for n in [2] * (total // 2) + [total % 2] if n]
    # Now an object vanishes between the read and the lookup of its ids.
    looking.clear()
    vanish[0] = True
    w.write_transactions(frame(rng, 80, sets=True, instants=instants), batch_size=7)
    before = w.ledger.state().version
    with pytest.raises(ec.ConsolidationFailedError) as info:
        db.consolidate()
    missing = info.value.failures["wallets.balance"]
    assert isinstance(missing, ec.MissingObjectError)
    assert str(missing).startswith(missing.key) and missing.key.endswith(".parquet")  # type: ignore[attr-defined]
    assert str(missing).endswith("was read by this consolidation and is gone now; consolidate again.")
    assert w.ledger.state().version == before


@pytest.mark.parametrize("chunk", [None, 2], ids=["chunks", "small-chunks"])
@pytest.mark.parametrize("reducer", ["default", "sum", "max"])
def test_states_and_runs_commit_the_same_values_marks_and_counts(root: Root, reducer: str, chunk: int | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The same objects consolidated by the states and by the general path (runs) on two roots:
    equal values, late counts, records and marks (``chunk``: objects per chunk, as above)."""
    if chunk is not None:
        monkeypatch.setattr(consolidator_module, "FIRST_CHUNK_OBJECTS", chunk)
        monkeypatch.setattr(consolidator_module, "CHUNK_OBJECTS", chunk)
    rng = random.Random(7)
    instants = [T0 + timedelta(hours=h) for h in range(0, 30, 3)]
    batches = [frame(rng, 50, sets=reducer == "default", instants=instants[3:] if i == 0 else instants)
               for i in range(3)]
    outcomes = []
    for general in (False, True):
        if general:
            monkeypatch.setattr(consolidator_module.Consolidator, "_fold_states", lambda *a, **k: None)
        db, w = make(root, reducer)
        w.insert({"id": "r3", "balance": 5.0})
        seen = []
        for batch in batches:
            w.write_transactions(batch, batch_size=8)
            r = db.consolidate()[0]
            assert (r.engine.get("fold") == "states") != general
            seen.append((r.transactions, r.records, r.late, r.values.sort("id").to_dicts()))
        st = w.plugin().consolidator.ledger.state()
        marks = st.field_marks("balance").sort("originalId").to_dicts()
        # Generated ids differ between the two roots by their batch prefix only: compare them as
        # (rank of the batch prefix, row in the batch).
        prefixes = sorted({m[k].rsplit("-", 1)[0] for m in marks for k in ("setId", "maxId") if m[k]})
        for m in marks:
            for k in ("setId", "maxId"):
                if m[k]:
                    head, _, row = m[k].rpartition("-")
                    m[k] = (prefixes.index(head), row)
        outcomes.append((seen, marks, w.to_polars().sort("id").to_dicts()))
        db.close()
        root = Root(root.kind, root.uri.rstrip("/") + "-runs", root.endpoint_url)
    (states_seen, states_marks, states_records), (runs_seen, runs_marks, runs_records) = outcomes
    assert states_seen == runs_seen
    assert states_marks == runs_marks
    assert states_records == runs_records


def test_counters_fold_as_aggregates_late_rows_as_compact_rows_and_a_set_holds_its_record(root: Root) -> None:
    db, w = make(root, "default")
    w.write_transactions(pl.DataFrame({"originalId": ["a", "b", "a"], "value": [5.0, 7.0, 2.0],
                                       "operation": ["add", "add", "sub"],
                                       "timestamp": [T0, T0, T0 + timedelta(hours=1)]}), batch_size=1)
    first = db.consolidate()[0]
    assert first.engine["form"] == "aggregates" and w.value("a") == 3.0 and w.value("b") == 7.0
    # Later counters only: still aggregates. A row dated before the applied maximum: compact.
    w.add("a", 10.0, timestamp=T0 + timedelta(hours=2))
    assert db.consolidate()[0].engine["form"] == "aggregates" and w.value("a") == 13.0
    w.sub("b", 1.0, timestamp=T0 - timedelta(hours=1))
    late = db.consolidate()[0]
    assert late.engine["form"] == "compact" and late.late == 1 and w.value("b") == 6.0
    # A set dated between applied rows: the applied add after it counts again on top of it.
    # Only its record is held as compact rows.
    w.set("a", 100.0, timestamp=T0 + timedelta(minutes=30))
    assert db.consolidate()[0].engine["form"] == "hybrid"
    assert w.value("a") == 100.0 - 2.0 + 10.0


def _reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Objects read by each consolidation's chunks, counted."""
    counted: list[int] = []
    original = consolidator_module.read_objects

    def reading(store: Any, keys: Any, **kwargs: Any) -> Any:
        counted.append(len(keys))
        return original(store, keys, **kwargs)

    monkeypatch.setattr(consolidator_module, "read_objects", reading)
    return counted


def _counters_then_a_set(root: Root, set_at: timedelta) -> tuple[ec.Resource, int]:
    """Adds to ``a`` and ``b``, an object a minute (more than a first chunk's worth), then a set of
    ``a`` at ``T0 + set_at``, read last: the resource and the number of objects of adds."""
    _db, w = make(root, "default")
    n = consolidator_module.FIRST_CHUNK_OBJECTS + 3
    adds = pl.DataFrame({"originalId": ["a", "b"] * n, "value": [float(i + 1) for i in range(2 * n)],
                         "operation": ["add"] * (2 * n),
                         "timestamp": [T0 + timedelta(minutes=i // 2) for i in range(2 * n)]})
    w.write_transactions(adds, batch_size=2)  # one object per minute, read in this order
    w.set("a", 1000.0, timestamp=T0 + set_at)
    return w, n


def test_a_set_in_a_later_chunk_holds_its_record_without_reading_again(root: Root,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Counters in the first chunk of objects, a set dated after them in a later one: the set's
    record is held as compact rows from then on (its aggregate so far sorts before the set and
    counts for nothing), the others stay aggregates, and no object is read twice."""
    reads = _reads(monkeypatch)
    minute = consolidator_module.FIRST_CHUNK_OBJECTS + 1  # after the first chunk's rows
    w, n = _counters_then_a_set(root, timedelta(minutes=minute, seconds=30))
    result = w.plugin().consolidate()
    assert result.engine["form"] == "hybrid" and result.objects == n + 1 and sum(reads) == n + 1
    # ``a``'s add of minute m is 2m + 1; those after the set count on top of it.
    assert w.value("a") == 1000.0 + sum(2.0 * m + 1 for m in range(minute + 1, n))
    assert w.value("b") == sum(2.0 * m + 2 for m in range(n))


def test_a_set_dated_before_rows_already_folded_folds_everything_again_as_compact_rows(
        root: Root, monkeypatch: pytest.MonkeyPatch) -> None:
    """A set in a later chunk dated before rows of its record that an earlier chunk folded as an
    aggregate: the aggregate cannot tell which of them count, so the fold starts again as
    compact rows (every object read a second time), with the same values."""
    reads = _reads(monkeypatch)
    w, n = _counters_then_a_set(root, timedelta(minutes=2, seconds=30))
    result = w.plugin().consolidate()
    assert result.engine["form"] == "compact" and result.objects == n + 1 and sum(reads) > n + 1
    assert w.value("a") == 1000.0 + sum(2.0 * m + 1 for m in range(3, n))
    assert w.value("b") == sum(2.0 * m + 2 for m in range(n))


@pytest.mark.parametrize("sets", [False, True], ids=["counters", "with-sets"])
def test_a_fold_touching_more_records_than_the_cap_takes_the_general_path(root: Root, sets: bool,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``STATE_MAX_RECORDS`` records touched the fold hands over to the general path (the
    runs), with the values a Python fold of the whole history gives; at the cap it stays."""
    rng = random.Random(11)
    db, w = make(root, "default")
    w.write_transactions(frame(rng, 40, sets=sets, instants=[T0 + timedelta(minutes=m) for m in range(5)]),
                         batch_size=4)
    records = db.resources[DATASET].query()["originalId"].n_unique()  # the records the frame touches
    monkeypatch.setattr(consolidator_module, "STATE_MAX_RECORDS", records - 1)
    result = w.plugin().consolidate()
    assert "fold" not in result.engine  # the general path reports no states fold
    assert {r["id"]: r["balance"] for r in w.to_polars().to_dicts()} == expected(db, "default", {})
    # The same number of records as the cap: the states fold takes them.
    w.write_transactions(frame(rng, 40, sets=sets, instants=[T0 + timedelta(minutes=m) for m in range(5, 9)]),
                         batch_size=4)
    pending = db.resources[DATASET].query().filter(pl.col("timestamp") >= T0 + timedelta(minutes=5))
    monkeypatch.setattr(consolidator_module, "STATE_MAX_RECORDS", pending["originalId"].n_unique())
    assert w.plugin().consolidate().engine["fold"] == "states"
    assert {r["id"]: r["balance"] for r in w.to_polars().to_dicts()} == expected(db, "default", {})


def test_decimal_fields_keep_the_general_path(root: Root) -> None:
    db = root.connect()
    db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", auto_consolidate=False))
    w = db.create_resource("wallets", {"id": "string|required", "balance": "decimal(12,2)|default:0"})
    w.add("a", 1.10)
    w.add("a", 2.25)
    result = db.consolidate()[0]
    assert "fold" not in result.engine and str(w.value("a")) == "3.35"


def pending(rng: random.Random, n: int, *, records: int, sets: bool, instants: list[datetime]) -> pl.DataFrame:
    """``n`` pending rows as a consolidation carries them (generated ids, objects of 100 rows)."""
    return frame(rng, n, sets=sets, instants=instants).with_columns(
        pl.Series("id", [f"auto-{rng.randrange(10**6):08d}-{i}" for i in range(n)]),
        pl.Series("originalId", [f"r{rng.randrange(records)}" for _ in range(n)]),
        pl.lit("balance").alias("field"), pl.lit("t").alias("source"),
        pl.Series("_object", [i // 100 for i in range(n)], dtype=pl.UInt32),
        pl.Series("_row", [i % 100 for i in range(n)], dtype=pl.UInt32)).cast({"timestamp": pl.Datetime("us", "UTC")})


@pytest.mark.parametrize("reducer", ["default", "sum", "min", "max"])
def test_partial_states_merge_to_what_the_rows_fold_to(reducer: str) -> None:
    """Issue 17 (Dask): rows reduced to partial states in several pieces (as cluster partition
    tasks do) and merged give the fold of the rows themselves: the same values, marks (the
    latest transaction by (timestamp, id), ties at one instant included) and late count, against
    applied values and marks, in one round when no ``set`` is among them."""
    from ecanalytics.consolidation.states import RecordStates, partial_states
    from ecanalytics.ledger.state import MARKS_SCHEMA

    rng = random.Random(17)
    instants = [T0 + timedelta(minutes=m) for m in range(5)]  # few instants: many ties
    n = 3_000
    rows = pending(rng, n, records=40, sets=False, instants=instants)
    current = pl.DataFrame({"originalId": ["r1", "r2", "r99"], "current": [500.0, -300.0, 7.0]})
    early = T0 - timedelta(days=1)  # applied marks before every pending row: nothing is late
    marks = pl.DataFrame({"originalId": ["r1", "r2"], "setTs": [early, None], "setId": ["auto-0", None],
                          "maxTs": [early, early], "maxId": ["auto-1", "auto-2"]},
                         schema={"originalId": pl.String, **{k: v for k, v in MARKS_SCHEMA.items() if k not in ("id", "field")}})

    def finish(states: RecordStates) -> Any:
        def no_ids(wanted: pl.DataFrame) -> pl.DataFrame:
            raise AssertionError("the aggregates form looks no id up")
        return states.finish(current, marks, 0.0, "balance", no_ids)

    whole = RecordStates(reducer, compact=False)
    whole.add(rows)
    merged = RecordStates(reducer, compact=False)
    cuts = sorted(rng.sample(range(1, n), 6))
    for piece in (rows[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)):
        partial = partial_states(piece, reducer)
        assert partial is not None and partial[0].height <= 40  # one row per record, whatever the rows
        merged.add_partial(partial)
    assert merged.rows == whole.rows == n
    want, got = finish(whole), finish(merged)
    assert got.values.sort("originalId").equals(want.values.sort("originalId"))
    assert got.marks.sort("id").equals(want.marks.sort("id")) and got.late == want.late == 0
    # ... and both against a plain fold of the rows: the reducer's aggregate of the signed values
    # on top of the current value, the latest transaction by (timestamp, id) as the new mark.
    signed = [(r["originalId"], -r["value"] if r["operation"] == "sub" else r["value"], (r["timestamp"], r["id"]))
              for r in rows.iter_rows(named=True)]
    starts = dict(zip(current["originalId"], current["current"], strict=True))
    for rid in {s[0] for s in signed}:
        mine = [v for r, v, _ in signed if r == rid]
        agg = {"default": sum, "sum": sum, "min": min, "max": max}[reducer](mine)
        base = starts.get(rid, 0.0)  # a record without a value starts from the field's default
        value = base + agg if reducer in ("default", "sum") else (min if reducer == "min" else max)(base, agg)
        assert got.values.filter(pl.col("originalId") == rid)["value"].item() == value
        top = max(k for r, _, k in signed if r == rid)
        mark = got.marks.filter(pl.col("id") == rid)
        assert (mark["maxTs"].item(), mark["maxId"].item()) == top
    assert not merged.has_sets and partial_states(rows, reducer)[2].height == 0  # one round is the whole fold


@pytest.mark.parametrize("reducer", ["default", "sum", "min", "max"])
def test_partial_states_in_two_rounds_equal_the_rows_with_sets_and_late_rows(reducer: str) -> None:
    """Issue 17 (Dask, sets): with ``set`` rows, rows dated before their record's applied marks
    and applied sets that sort after the pending ones, partial states in two rounds (thresholds
    from the merged first round, then each piece's rows after them) give what the rows folded
    with their ids give: values, marks, late rows and late sets."""
    from ecanalytics.consolidation.states import RecordStates, after_threshold, partial_states
    from ecanalytics.ledger.state import MARKS_SCHEMA

    rng = random.Random(29)
    instants = [T0 + timedelta(minutes=m) for m in range(12)]
    n = 2_500
    rows = pending(rng, n, records=30, sets=True, instants=instants)
    current = pl.DataFrame({"originalId": [f"r{i}" for i in range(0, 30, 2)], "current": [float(i) for i in range(15)]})
    middle, late_set = T0 + timedelta(minutes=5), T0 + timedelta(minutes=9)
    end = T0 + timedelta(minutes=11)
    # r0-r2: an applied set after most pending rows; r3-r5: applied up to the middle of them;
    # r6-r9: no applied set, applied rows after every pending one (their last sets are late sets).
    marks = pl.DataFrame({
        "originalId": [f"r{i}" for i in range(10)],
        "setTs": [late_set] * 3 + [middle] * 3 + [None] * 4, "setId": ["auto-5"] * 3 + ["auto-4"] * 3 + [None] * 4,
        "maxTs": [late_set] * 3 + [middle] * 3 + [end] * 4, "maxId": ["auto-9"] * 6 + ["auto-z"] * 4},
        schema={"originalId": pl.String, **{k: v for k, v in MARKS_SCHEMA.items() if k not in ("id", "field")}})

    def no_ids(wanted: pl.DataFrame) -> pl.DataFrame:
        raise AssertionError("rows folded with their ids look none up")

    whole = RecordStates(reducer, compact=True)
    whole.add(rows, exact=True)  # rows with their ids: the reference
    want = whole.finish(current, marks, 0.0, "balance", no_ids)
    merged = RecordStates(reducer, compact=False)
    cuts = sorted(rng.sample(range(1, n), 5))
    pieces = [rows[a:b] for a, b in zip([0, *cuts], [*cuts, n], strict=True)]
    for piece in pieces:
        merged.add_partial(partial_states(piece, reducer))
    assert merged.has_sets and merged.rows == n
    table = merged.thresholds(marks)
    assert table.height == 30 and table["originalId"].dtype == pl.String
    second = [after_threshold(piece, table, reducer) for piece in pieces]

    def after(thresholds: pl.DataFrame) -> tuple[pl.DataFrame, int]:
        assert thresholds.equals(table)  # the round the pieces answered is the one finish asks
        return pl.concat([s[0] for s in second]), sum(s[1] for s in second)

    got = merged.finish(current, marks, 0.0, "balance", no_ids, after)
    assert want.late > 0 and got.late == want.late
    assert got.values.sort("originalId").equals(want.values.sort("originalId"))
    assert got.marks.sort("id").equals(want.marks.sort("id"))
    assert got.late_sets.sort("originalId").equals(want.late_sets.sort("originalId"))
    if reducer == "default":  # r6-r9's last pending sets sort before their applied rows
        assert set(want.late_sets["originalId"]) == {"r6", "r7", "r8", "r9"}
