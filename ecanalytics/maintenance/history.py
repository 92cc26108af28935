"""Recalculation and event-time travel: the jobs that read a field's whole history.

Both fold a field's transactions in ``(timestamp, id)`` order, a repeated id counting once (the
first by ``(timestamp, id, object)``), with the field's reducer, starting from each record's
*base* (:meth:`Field.base`). Consolidation folds late data in event order too, so a
recalculation after it finds nothing to change; it repairs values that were changed by hand or by
an older version. Every job here works on one field's core (its :class:`~ecanalytics.consolidation.Field`), never on
the API objects above it.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import polars as pl

from ecanalytics import _runtime
from ecanalytics.consolidation.cluster import PARTITION_OBJECTS, FieldSpec, Moved, bucket_frame, shuffle
from ecanalytics.consolidation.eventorder import marks_from_history
from ecanalytics.errors import ConsolidationError, ValidationError
from ecanalytics.ledger import Commit, State
from ecanalytics.ledger.transactions import TX_SCHEMA

if TYPE_CHECKING:
    from ecanalytics.consolidation import Field
    from ecanalytics.ledger import Ledger


@dataclass(frozen=True)
class RecalculationResult:
    """What ``recalculate`` checked and changed. ``version`` is None when nothing differed."""

    resource: str
    field: str
    version: int | None
    checked: int
    changed: int
    transactions: int
    duration_s: float
    values: pl.DataFrame  # id, before, after of the changed records

    def as_dict(self) -> dict[str, object]:
        return {"resource": self.resource, "field": self.field, "version": self.version, "checked": self.checked,
                "changed": self.changed, "transactions": self.transactions,
                "durationMs": round(self.duration_s * 1000, 3)}


def retention_cut(c: Field, st: State) -> dt.date | None:
    """The cohort day before which the field's history was archived or deleted (None if never)."""
    retention = st.retention.get(c.field)
    return dt.date.fromisoformat(retention.cut) if retention else None


def field_history(c: Field, st: State, *, applied_only: bool) -> pl.DataFrame:
    """Every transaction of the field, deduplicated by id: the applied ones, plus (unless
    ``applied_only``) the pending ones and the rows held back."""
    if applied_only:
        return c.history(st, frozenset())
    rows = c.history(st, frozenset(), pending_too=True).select(list(TX_SCHEMA))
    held = c.held_frame(st).drop("_reason").cast(rows.schema)  # type: ignore[arg-type]
    if (deleted := c.deleted_before(st)) is not None:
        held = held.filter(pl.col("timestamp") >= deleted)
    return pl.concat([rows, held]).sort(["timestamp", "id"]).unique(["originalId", "id"], keep="first", maintain_order=True)


@dataclass(frozen=True)
class _Rebuilt:
    """What a rebuild of some records found: ``id, before, after`` of those that differ, their new
    records and marks, and how many records and transactions it checked."""

    diff: pl.DataFrame
    upserts: pl.DataFrame
    marks: pl.DataFrame
    checked: int
    transactions: int


def _rebuild(c: Field, st: State, rows: pl.DataFrame, record_id: str | None) -> _Rebuilt:
    """Fold ``rows`` (the applied history of ``st``'s records, or of the buckets ``st`` is
    restricted to) from each record's base and compare with the records."""
    records = st.records
    if record_id is not None:
        rows = rows.filter(pl.col("originalId") == record_id)
        records = records.filter(pl.col("id") == record_id)
    base = c.base(st)
    new = c.reducer()(rows, base, c.default)
    default = pl.lit(c.default).cast(c.dtype)
    current = records.select("id", pl.col(c.field).fill_null(default).alias("before"))
    # A record without history (e.g. all of it archived by retention) keeps its base.
    diff = (
        current.join(new.rename({"originalId": "id", "value": "after"}), on="id", how="left")
        .join(base.rename({"originalId": "id", "current": "_base"}), on="id", how="left")
        .select("id", "before", pl.coalesce("after", "_base", default).alias("after"))
        .filter(pl.col("before") != pl.col("after"))
    )
    upserts = (
        records.join(diff.select("id", "after"), on="id", how="inner")
        .with_columns(pl.col("after").alias(c.field)).drop("after")
    )
    changed = rows.filter(pl.col("originalId").is_in(diff["id"].implode()))
    return _Rebuilt(diff, upserts, marks_from_history(changed, c.field), records.height, rows.height)


def _rebuild_task(spec: FieldSpec, version: int, k: int, frames: list[Moved], record_id: str | None) -> _Rebuilt:
    """One bucket of a recalculation, on a Dask worker: its history rows against its records."""
    c = spec.consolidator()
    st = spec.state(c, version).restrict([k])
    rows = bucket_frame(frames, c.dtype)
    return _rebuild(c, st, c.history_rows(st, rows, hidden=False), record_id)  # the partition tasks hid them


def _rebuild_on(client: Any, c: Field, st: State, record_id: str | None) -> _Rebuilt:
    """A recalculation's rebuild on a Dask cluster: the history objects (from the manifest) are
    split by bucket by partition tasks, and each bucket is rebuilt by its own task (the rows move
    between them through Dask, as in a cluster consolidation)."""
    run = f"{_runtime.time_ns():020d}-recalc"
    spec = FieldSpec.of(c)
    keys = st.applied_objects(c.field)
    chunks = [(keys[i:i + PARTITION_OBJECTS], i) for i in range(0, len(keys), PARTITION_OBJECTS)]
    shuffled = shuffle(client, spec, chunks, run, st.hidden_of(c.field))
    out = client.gather([client.submit(_rebuild_task, spec, st.version, k, shuffled.rows(k), record_id,
                                       key=f"ec-rebuild-{run}-{k}", pure=False) for k in range(st.n_buckets)])
    return _Rebuilt(pl.concat([o.diff for o in out]), pl.concat([o.upserts for o in out]),
                    pl.concat([o.marks for o in out]), sum(o.checked for o in out), sum(o.transactions for o in out))


def recalculate(c: Field, record_id: str | None = None, *, client: Any = None) -> RecalculationResult:
    """Rebuild ``field`` from its applied history and commit only the records that differ.
    ``client`` (a ``distributed.Client``) rebuilds bucket by bucket on its Dask workers."""
    started = time.perf_counter()
    outcome: dict[str, object] = {}

    def build(st: State) -> Commit | None:
        if client is not None:
            rebuilt = _rebuild_on(client, c, st, record_id)
        else:
            rebuilt = _rebuild(c, st, field_history(c, st, applied_only=True), record_id)
        outcome.update(checked=rebuilt.checked, transactions=rebuilt.transactions, diff=rebuilt.diff)
        if rebuilt.diff.height == 0:
            return None
        return Commit("recalculate", upserts=rebuilt.upserts, field=None, stats={"changed": rebuilt.diff.height},
                      marks=rebuilt.marks)

    committed = c.ledger.commit(build)
    diff = outcome["diff"]
    assert isinstance(diff, pl.DataFrame)
    return RecalculationResult(
        c.ledger.resource, c.field, committed[0].version if committed else None, int(outcome["checked"]),  # type: ignore[call-overload]
        diff.height, int(outcome["transactions"]), time.perf_counter() - started, diff,  # type: ignore[call-overload]
    )


def records_at_events(ledger: Ledger, cores: Mapping[str, Field], until: datetime) -> pl.DataFrame:
    """Records as if exactly the transactions with event time ``<= until`` had been applied.

    Every managed field is folded from its base (the value the record was inserted with, or the
    default) over those transactions, applied or still pending. The records are today's records
    plus any record with a transaction by then (a deleted one is rebuilt from defaults);
    unmanaged attributes are today's. Insert times play no part: this axis is event time only.
    """
    if until.tzinfo is None:
        raise ValidationError("events_until must be timezone-aware.")
    st = ledger.state()
    for name, c in cores.items():
        cut = retention_cut(c, st)
        deleted = (last := st.retention.get(name)) is not None and not last.complete
        if cut is not None and deleted and until < datetime.combine(cut, dt.time(), ZoneInfo(c.tz)):
            raise ValidationError(
                f"The history of {c.dataset} before {cut} was deleted by retention; events_until must "
                f"be on or after {cut}. (Retention in 'archive' mode keeps it readable.)"
            )
    present: set[str] = set(st.records["id"].to_list())
    histories = {
        name: field_history(c, st, applied_only=False).filter(pl.col("timestamp") <= until)
        for name, c in cores.items()
    }
    for rows in histories.values():
        present.update(rows["originalId"].unique().to_list())
    out = st.records.filter(pl.col("id").is_in(list(present)))
    missing = sorted(present - set(out["id"].to_list()))
    if missing:
        schema = ledger.schema
        out = pl.concat([out, schema.frame([schema.new_record({"id": rid}, check_required=False) for rid in missing])])
    for name, c in cores.items():
        base = c.base(st)
        new = c.reducer()(histories[name], base, c.default).rename({"originalId": "id", "value": "_new"})
        # A fold that does not fit the field (a decimal past its precision is null, a float not
        # finite) has no value at that instant: an error, never the base in its place.
        if (bad := new.filter(~c.fits("_new"))).height:
            raise ConsolidationError(
                f"{c.dataset}: the value of {bad['id'][0]!r} as of {until.isoformat()} does not fit the field "
                f"({c.dtype}): its transactions by then sum past what the field holds. Ask for another instant, "
                "or read the transactions themselves.", record_id=bad["id"][0])
        out = (
            out.join(new, on="id", how="left")
            .join(base.rename({"originalId": "id", "current": "_base"}), on="id", how="left")
            .with_columns(pl.coalesce("_new", "_base", pl.lit(c.default).cast(c.dtype)).alias(name))
            .drop("_new", "_base")
        )
    return out.sort("id")


