"""Retention: archive (or delete) the applied transaction objects of old cohort days, through the
commit log, without changing any value."""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import polars as pl

from ecanalytics import _runtime
from ecanalytics.errors import ConsolidationError, StorageError, ValidationError
from ecanalytics.ledger import Commit, State
from ecanalytics.ledger.keys import hide
from ecanalytics.ledger.maintenance_records import RetentionCut, RetentionMode
from ecanalytics.ledger.transactions import read_history
from ecanalytics.storage import paths as P
from ecanalytics.types import is_positive_int

if TYPE_CHECKING:
    from ecanalytics.consolidation import Field


@dataclass(frozen=True)
class RetentionResult:
    """What a retention run archived (or deleted) for one field."""

    resource: str
    field: str
    version: int | None
    cut: str
    objects: int
    transactions: int
    mode: str
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        return {"resource": self.resource, "field": self.field, "version": self.version, "cut": self.cut,
                "objects": self.objects, "transactions": self.transactions, "mode": self.mode,
                "durationMs": round(self.duration_s * 1000, 3)}


def _finish_moves(c: Field, retention: RetentionCut) -> None:
    """Remove the live copies of a committed retention entry (idempotent: safe after a crash).
    Archive copies were made, and checked, before the commit."""
    store = c.ledger.store
    keys = list(retention.archived)
    present = {k for k, blob in store.read_many(keys).items() if blob is not None}
    for key in sorted(present):
        if retention.mode == "archive" and not store.exists(P.archive_key(key)):
            store.copy(key, P.archive_key(key))
        c.ledger.fault_point("retention_move")
        store.delete([key])


def _base_rows(c: Field, st: State, prev: RetentionCut | None, cut: str,
               rows: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(the start, the rows) whose fold is the base at ``cut``: everything applied before it,
    folded in event order. ``rows`` are the applied rows of the days being cut. Chaining from the
    previous cut's base is exact when every row sorts after what that base folded; a row dated
    before the previous cut that was applied after it (late data) does not:

    * after a cut whose base stands like a ``set`` (a ``delete``-mode one, or any after one:
      :meth:`~ecanalytics.consolidation.Field.deleted_before`) it has no effect, so it is left out, as
      consolidation and every rebuild leave it out;
    * after an ``archive``-mode cut the archive still holds the history before it, so the base is
      folded again from the records' inserted values over the whole history before ``cut``
      (the archive is read again: late rows that far back are rare)."""
    if prev is None:
        return c.base(st), rows
    late = pl.col("timestamp") < c.day_start(prev.cut)
    if not prev.complete:
        return c.base(st), rows.filter(~late)
    if not rows.select(late.any()).item():
        return c.base(st, retention_base=True), rows
    return c.base(st), c.history(st).filter(pl.col("timestamp") < c.day_start(cut))


def retain(c: Field, days: int, *, archive: bool = True,
           now: datetime | None = None) -> RetentionResult:
    """Archive (or delete) the applied transaction objects of cohort days older than ``days``.

    Nothing changes any value: the commit first records, for every record, the base a rebuild
    starts from (everything before the cut, folded in event order), then the objects move. Pending
    objects are never touched. A crash anywhere is finished by the next run.
    """
    if not is_positive_int(days):
        raise ValidationError(f"retain must be a positive number of days; got {days!r}.")
    store = c.ledger.store
    started = time.perf_counter()
    previous = c.ledger.state().retention.get(c.field)
    if previous:
        _finish_moves(c, previous)
    today = (now or _runtime.now()).astimezone(ZoneInfo(c.tz)).date()
    cut = today - dt.timedelta(days=days)
    mode: RetentionMode = "archive" if archive else "delete"
    info: dict[str, object] = {"objects": 0, "transactions": 0}

    def build(st: State) -> Commit | None:
        prev = st.retention.get(c.field)
        if prev and dt.date.fromisoformat(prev.cut) >= cut:
            return None
        # The manifest names the applied objects: a pending one is never among them.
        keys = [k for k in st.applied_objects(c.field, archived=False)
                if k.split("cohortDate=", 1)[1][:10] < cut.isoformat()]
        if not keys:
            return None
        rows = hide(read_history(store, keys, c.dtype), st.hidden_of(c.field)).sort(["timestamp", "id", "_object"])
        held = c.held_frame(st)
        if held.height:  # objects with held rows are not applied yet: they stay where they are
            keep = set(rows.filter(pl.col("id").is_in(held["id"].implode()))["_object"].to_list())
            keys = [k for k in keys if k not in keep]
            rows = rows.filter(~pl.col("id").is_in(held["id"].implode()))  # their applied rows still count
            if not keys:
                return None
        start, rows = _base_rows(c, st, prev, cut.isoformat(), rows)
        folded = c.reducer()(rows, start, c.default).rename({"value": "current"})
        if (bad := folded.filter(~c.fits("current"))).height:
            raise ConsolidationError(
                f"Retention of {c.dataset} before {cut.isoformat()} needs each record's value at the cut, and "
                f"{bad['originalId'][0]!r}'s does not fit the field ({c.dtype}): its transactions before the cut "
                "sum past what the field holds. Nothing was committed or moved; run retention with a cut on another "
                "day (a different retain).", record_id=bad["originalId"][0])
        base = pl.concat([folded, start.join(folded.select("originalId"), on="originalId", how="anti")])
        base_rel = P.data_file(c.ledger.resource, st.version + 1, _runtime.token(), f"base-{c.field}")
        store.write_parquet(base_rel, base)
        archived: dict[str, int | None] = {}
        known = dict(zip(*st.manifest_of(c.field).select("key", "size").to_dict(as_series=False).values(), strict=True))
        if mode == "archive":  # copy first and check: the manifest names the copies from the commit on
            for key in keys:
                if not store.exists(P.archive_key(key)):
                    store.copy(key, P.archive_key(key))
                if not store.exists(P.archive_key(key)):
                    raise StorageError(f"Archiving {store.url(key)} reported success, but the copy is not there; "
                                       "nothing was committed. Check the store and run retention again.")
                archived[P.archive_key(key)] = known.get(key)
        info.update(objects=len(keys), transactions=rows.height)
        return Commit("retention", field=c.field, applied=archived, unapplied=tuple(keys),
                      stats={"objects": len(keys), "transactions": rows.height},
                      retention=RetentionCut(c.field, cut.isoformat(), base_rel, tuple(keys), mode,
                                             stands=prev is not None and not prev.complete))

    committed = c.ledger.commit(build)
    if committed is not None:
        entry = committed[0].retention[c.field]
        _finish_moves(c, entry)
    return RetentionResult(c.ledger.resource, c.field, committed[0].version if committed else None, cut.isoformat(),
                           int(info["objects"]), int(info["transactions"]), mode, time.perf_counter() - started)  # type: ignore[call-overload]


