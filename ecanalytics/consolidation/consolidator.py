"""Consolidation: fold a field's pending transactions into the records, exactly once.

One attempt (repeated by :meth:`Ledger.commit` if another consolidator wins the version):

1. load the state at version N (cached; only newer log entries are read);
2. list the field's inbox; delete the markers of objects the field's last commit consumed;
3. read the other objects, drop rows whose id was already applied (idempotency window) or is
   repeated (first by ``(timestamp, id, object)`` wins);
4. reduce with the field's reducer, starting from each record's current value (or its default);
5. commit the changed records together with the exact set of consumed objects;
6. after the commit, delete the consumed markers (a crash here is harmless: see step 2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from ecanalytics.consolidation.reducers import Reducer
from ecanalytics.errors import ConsolidationError
from ecanalytics.ledger.log import Commit, Ledger, State
from ecanalytics.ledger.transactions import Inbox, read_objects
from ecanalytics.storage import paths as P


@dataclass(frozen=True)
class ConsolidationResult:
    """Summary of one consolidation of one field.

    ``version`` is None when there was nothing pending. ``values`` has ``id`` and ``value`` for
    every record this consolidation wrote.
    """

    resource: str
    field: str
    version: int | None
    transactions: int
    duplicates: int
    objects: int
    records: int
    duration_s: float
    values: pl.DataFrame

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly summary (without ``values``)."""
        return {
            "resource": self.resource, "field": self.field, "version": self.version,
            "transactions": self.transactions, "duplicates": self.duplicates, "objects": self.objects,
            "records": self.records, "durationMs": round(self.duration_s * 1000, 3),
        }


@dataclass(frozen=True)
class Pending:
    """The pending transactions of a field at one state, ready to reduce."""

    rows: pl.DataFrame
    objects: frozenset[str]
    markers: dict[str, str]
    carried: frozenset[str]
    duplicates: int


class Consolidator:
    """Consolidates one managed field of one resource."""

    def __init__(self, ledger: Ledger, field: str, reducer: Callable[[], Reducer], default: Any,
                 dtype: pl.DataType | None = None) -> None:
        self.dtype: pl.DataType = dtype or pl.Float64()
        self.ledger = ledger
        self.store = ledger.store
        self.field = field
        self.dataset = P.transactions_dataset(ledger.resource, field)
        self._reducer = reducer
        self.default = default

    def pending_objects(self, st: State) -> set[str]:
        """Keys of the objects still pending at ``st``: inbox markers not consumed by the field's
        latest commit. One LIST; what readers use to derive ``applied``."""
        return set(Inbox.scan(self.store, self.dataset).markers) - st.consumed.get(self.field, frozenset())

    def pending(self, st: State, *, cleanup: bool) -> Pending:
        """Pending rows at ``st``. With ``cleanup``, markers of consumed and orphaned objects are removed."""
        inbox = Inbox.scan(self.store, self.dataset)
        consumed = st.consumed.get(self.field, frozenset())
        carried: frozenset[str] = frozenset()
        if cleanup:
            stale = {inbox.markers[k]: k for k in inbox.markers if k in consumed}
            # A consumed marker we failed to delete must stay in the consumed set.
            carried = frozenset(stale[m] for m in self.store.delete(stale))
        candidates = sorted(k for k in inbox.markers if k not in consumed)
        rows, read, orphans = read_objects(self.store, candidates, now_ns=time.time_ns(), value_dtype=self.dtype)
        if cleanup and orphans:
            self.store.delete(inbox.markers[k] for k in orphans)
        total = rows.height
        applied = st.applied_keys(self.field)
        if applied.len():  # only caller-supplied keys are remembered; usually there are none
            rows = rows.filter(~pl.col("id").is_in(applied.implode()))
        # Equal ids hash equally, so distinct hashes prove there is nothing to deduplicate (cheap).
        if rows["id"].hash().n_unique() < rows.height:
            rows = rows.sort(["timestamp", "id", "_object"]).unique(subset="id", keep="first", maintain_order=True)
        return Pending(rows, frozenset(read), {k: inbox.markers[k] for k in read}, carried, total - rows.height)

    def fold(self, st: State, rows: pl.DataFrame) -> pl.DataFrame:
        """New values (``originalId, value``) of every record in ``rows``, from its current value."""
        current = st.records.select(pl.col("id").alias("originalId"), pl.col(self.field).alias("current"))
        return self._reducer()(rows, current, self.default)

    def _upserts(self, st: State, new: pl.DataFrame) -> pl.DataFrame:
        values = new.rename({"originalId": "id", "value": "_new"})
        existing = (
            st.records.join(values, on="id", how="inner")
            .with_columns(pl.col("_new").alias(self.field)).drop("_new")
        )
        missing = values.join(st.records.select("id"), on="id", how="anti")
        if missing.height == 0:
            return existing
        schema = self.ledger.schema
        created = missing.select(
            [
                pl.col("id") if name == "id"
                else pl.col("_new").alias(name) if name == self.field
                else pl.lit(attr.default, dtype=attr.dtype).alias(name)
                for name, attr in schema.attributes.items()
            ]
        )
        return pl.concat([existing, created.cast(schema.polars_schema)], how="vertical")  # type: ignore[arg-type]

    def run(self) -> ConsolidationResult:
        """Consolidate everything pending for this field; see the module docstring."""
        started = time.perf_counter()
        done: dict[str, Pending] = {}

        def build(st: State) -> Commit | None:
            pending = self.pending(st, cleanup=True)
            done["pending"] = pending
            if not pending.objects:
                return None
            new = self.fold(st, pending.rows)
            finite = pl.col("value").is_not_null() if isinstance(self.dtype, pl.Decimal) else pl.col("value").is_finite()
            bad = new.filter(~finite | pl.col("value").is_null())
            if bad.height:
                raise ConsolidationError(
                    f"Consolidating {self.dataset} would give {bad.height} record(s) a non-finite value "
                    f"(first: {bad.row(0)}); nothing was committed. Check for overflowing amounts."
                )
            upserts = self._upserts(st, new)
            return Commit(
                kind="consolidate",
                upserts=upserts,
                field=self.field,
                consumed=pending.objects | pending.carried,
                applied_ids=pending.rows["id"],
                stats={"transactions": pending.rows.height, "duplicates": pending.duplicates,
                       "objects": len(pending.objects), "records": upserts.height},
            )

        outcome = self.ledger.commit(build)
        elapsed = time.perf_counter() - started
        if outcome is None:
            empty = pl.DataFrame(schema={"id": pl.String(), "value": self.dtype})
            return ConsolidationResult(self.ledger.resource, self.field, None, 0, 0, 0, 0, elapsed, empty)
        state, change = outcome
        pending = done["pending"]
        self.store.delete(pending.markers.values())  # best effort; the next run cleans up leftovers
        assert change.upserts is not None
        values = change.upserts.select("id", pl.col(self.field).alias("value"))
        stats = change.stats
        return ConsolidationResult(
            self.ledger.resource, self.field, state.version, stats["transactions"], stats["duplicates"],
            stats["objects"], stats["records"], elapsed, values,
        )
