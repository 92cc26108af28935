"""The log entry codec (:mod:`ecanalytics.ledger.entry`): every action survives a round trip
through JSON, the JSON is the wire format earlier versions wrote, and anything else is a
:class:`CorruptObjectError` that names the entry."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from ecanalytics.errors import CorruptObjectError
from ecanalytics.ledger.buckets import Part
from ecanalytics.ledger.entry import FieldFrame, LogEntry, ManifestChange, SetChange
from ecanalytics.ledger.maintenance_records import CompactionRun, RetentionCut

AT = datetime(2026, 12, 5, 12, 30, tzinfo=UTC)


def full_entry() -> LogEntry:
    return LogEntry(
        version=7, committed_at=AT, kind="consolidate", token="t0k", field="balance", buckets=4,
        delta={0: "_data/7-t0k-delta-b0.parquet", 3: "inline:AAAA"}, marks={3: "inline:BBBB"},
        deletes=("r1", "r2"), ids="inline:CCCC",
        consumed=SetChange(("a.parquet", "b.parquet"), ("old.parquet",)), unlisted=SetChange(("b.parquet",)),
        manifest=ManifestChange({"a.parquet": 120, "b.parquet": None}, ("gone.parquet",)),
        held=FieldFrame("balance", None), hidden=FieldFrame("balance", "inline:DDDD"),
        conflicts=FieldFrame("balance", "_data/7-t0k-conflicts.parquet"),
        retention=RetentionCut("balance", "2026-11-01", "_data/base.parquet", ("x.parquet",), "archive"),
        compaction=CompactionRun("balance", "tok", ("m.parquet",), ("s1.parquet", "s2.parquet")),
        stats={"transactions": 3})


def test_every_action_survives_a_round_trip_through_json() -> None:
    entry = full_entry()
    wire = json.loads(json.dumps(entry.to_json(), sort_keys=True))
    assert LogEntry.from_json(wire, 7, "here") == entry
    rebased = LogEntry(version=2, committed_at=AT, kind="rebucket", token="r", buckets=2,
                       rebase=(Part("p0", "m0"), Part(None, None)))
    assert LogEntry.from_json(json.loads(json.dumps(rebased.to_json())), 2, "here") == rebased


def test_the_wire_format_is_the_one_earlier_versions_wrote() -> None:
    wire = full_entry().to_json()
    assert wire["consumed"] == {"add": ["a.parquet", "b.parquet"], "remove": ["old.parquet"]}
    assert wire["delta"] == {"0": "_data/7-t0k-delta-b0.parquet", "3": "inline:AAAA"}
    assert wire["manifest"] == {"add": {"a.parquet": 120, "b.parquet": None}, "remove": ["gone.parquet"]}
    assert wire["held"] == {"field": "balance", "path": None}
    assert wire["committedAt"] == AT.isoformat() and "rebase" not in wire
    # An entry written before the sets travelled as changes carries the whole set.
    old = {**wire, "consumed": ["z.parquet"]}
    parsed = LogEntry.from_json(old, 7, "here")
    assert parsed.consumed is not None and parsed.consumed.apply(frozenset({"a", "b"})) == frozenset({"z.parquet"})
    assert parsed.consumed.to_json() == ["z.parquet"]


def test_set_changes_apply_as_add_and_remove() -> None:
    change = SetChange.between(frozenset({"a", "b"}), frozenset({"b", "c"}))
    assert change == SetChange(("c",), ("a",))
    assert change.apply(frozenset({"a", "b", "x"})) == frozenset({"b", "c", "x"})
    assert SetChange.between(frozenset({"a"}), None) is None


def test_parts_are_the_objects_the_entry_names() -> None:
    parts = full_entry().parts()
    assert {"_data/7-t0k-delta-b0.parquet", "inline:CCCC", "_data/7-t0k-conflicts.parquet", "_data/base.parquet",
            "m.parquet"} <= parts
    assert "a.parquet" not in parts  # transaction objects it applied are not its parts


def test_bucket_parts_follow_the_bucket_count() -> None:
    entry = full_entry()
    deletes = entry.deletes_of(4)
    assert sorted(r for ids in deletes.values() for r in ids) == ["r1", "r2"]
    part = entry.bucket_part(3, 4)
    assert (part.records, part.marks) == ("inline:AAAA", "inline:BBBB")
    assert entry.bucket_part(3, 8) == Part()  # cut for 4 buckets: no part of a state of 8


@pytest.mark.parametrize(("change", "says"), [
    ({"kind": "explode"}, "unknown entry kind"),
    ({"consumed": 5}, "list of strings"),
    ({"manifest": ["a"]}, "manifest change"),
    ({"held": {"path": "x"}}, "names its field"),
    ({"retention": {"field": "balance"}}, "retention record"),
    ({"committedAt": "yesterday"}, "committedAt"),
    ({"delta": ["old-format"]}, "without buckets"),
    ({"version": 8}, "version 7"),
])
def test_a_malformed_entry_is_a_typed_error_naming_it(change: dict[str, object], says: str) -> None:
    wire = {**full_entry().to_json(), **change}
    with pytest.raises(CorruptObjectError, match=r"backup|older version") as caught:
        LogEntry.from_json(wire, 7, "s3://b/w/_log/7.json")
    assert says in str(caught.value) or says in str(caught.value.__cause__)
    assert "s3://b/w/_log/7.json" in str(caught.value)
