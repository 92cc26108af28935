"""The one scan planner: which objects and rows a read of a field's transaction dataset sees.

Every reader goes through :func:`plan` and a :class:`ScanPlan`: the Python datasets
(``TransactionDataset.query/to_polars/to_arrow/to_pandas/scan``), the SQL views (``db.sql``,
cohort stats, rollups, reports), event-time travel and the history readers of maintenance. So
every reader sees the same rows with the same ``applied`` flag:

* **objects**: the applied ones the committed manifest names (live, and archived by retention
  unless ``archived=False``), plus the pending ones (inbox markers not consumed), pruned by cohort
  day where the read names days; never a LIST of the history;
* **one row per id** (:mod:`ecanalytics.ledger.keys`): in applied objects, the occurrences that
  did not count when they were consolidated are recorded by that commit (``hidden``) and left out;
  pending rows are resolved as the next consolidation will resolve them (against the applied keys
  and among themselves);
* **applied** is true for a row of an applied object that is not held back (a held row waits for
  its record: its object was consumed, but it is not applied yet), false for pending rows.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import polars as pl

from ecanalytics.ledger import keys
from ecanalytics.ledger.state import State
from ecanalytics.ledger.transactions import read_history
from ecanalytics.storage import Store
from ecanalytics.storage import paths as P

COLUMNS = ["id", "originalId", "field", "value", "operation", "timestamp", "cohortDate", "cohortMonth", "source",
           "applied"]


@dataclass(frozen=True)
class ScanPlan:
    """What a read of one field's dataset sees (see the module docstring)."""

    dataset: str
    applied: tuple[tuple[str, int | None], ...]  # (key, size in bytes) of applied objects, sorted
    pending: tuple[str, ...]  # keys of pending objects, sorted
    auto: frozenset[str]  # pending objects whose marker says every id is generated (no deduplication)
    hidden: pl.DataFrame  # ``key, id`` of rows in applied objects that did not count
    held_ids: pl.Series  # ids of held rows: in applied objects, not applied yet
    applied_keys: pl.DataFrame  # caller-supplied keys applied within the dedup window

    @property
    def keys(self) -> list[str]:
        return [k for k, _ in self.applied] + list(self.pending)

    def read(self, store: Store, dtype: pl.DataType | None = None) -> pl.DataFrame:
        """The rows of this plan (:data:`COLUMNS`), read with Polars."""
        held = pl.col("id").is_in(self.held_ids.implode()) if self.held_ids.len() else pl.lit(False)
        applied = self.read_applied(store, dtype).with_columns((~held).alias("applied"))
        pending = self.read_pending(store, dtype).with_columns(pl.lit(False).alias("applied"))
        return pl.concat([applied.select(COLUMNS), pending.select(COLUMNS)], how="vertical")

    def read_applied(self, store: Store, dtype: pl.DataType | None = None) -> pl.DataFrame:
        """The rows of the applied objects that counted (held ones included), with ``_object``
        (the object's key) and the partition columns."""
        return keys.hide(read_history(store, [k for k, _ in self.applied], dtype), self.hidden)

    def read_pending(self, store: Store, dtype: pl.DataType | None = None) -> pl.DataFrame:
        """The rows of the pending objects that the next consolidation will count (the key rule
        against the applied keys and among them), with ``_object`` and the partition columns."""
        names = sorted(self.pending)
        rows = read_history(store, names, dtype, pending=set(names))
        if not rows.height:
            return rows
        columns = rows.columns
        index = pl.col("_object").replace_strict({k: i for i, k in enumerate(names)}, return_dtype=pl.UInt32)
        kept = keys.resolve(rows.with_columns(pl.col("_object").alias("_key"), index.alias("_object")),
                            self.applied_keys).kept
        return kept.drop("_object").rename({"_key": "_object"}).select(columns)


def _day(key: str) -> str:
    return key.split("cohortDate=", 1)[1][:10]


def plan(st: State, dataset: str, field: str, pending: Iterable[str], *, auto: Collection[str] = (),
         days: Collection[str] | None = None, months: Collection[str] | None = None, archived: bool = True,
         held: pl.DataFrame | None = None) -> ScanPlan:
    """The plan of a read of ``field`` (whose dataset is ``dataset``) at ``st``: ``pending`` are
    the field's pending object keys (one LIST of its inbox, by the caller; ``auto`` those whose
    marker says every id is generated), ``days``/``months``
    prune by cohort day or month (None: all), ``archived=False`` leaves out what retention
    archived, ``held`` are the held rows (``Field.held_frame``)."""
    manifest = st.manifest_of(field)
    if not archived:
        manifest = manifest.filter(~pl.col("key").str.starts_with(P.ARCHIVE_PREFIX))
    if days is not None:
        manifest = manifest.filter(pl.col("cohortDate").is_in(sorted(days)))
    if months is not None:
        manifest = manifest.filter(pl.col("cohortDate").str.slice(0, 7).is_in(sorted(months)))
    manifest = manifest.sort("key")
    wanted = [k for k in sorted(pending)
              if (days is None or _day(k) in days) and (months is None or _day(k)[:7] in months)]
    hidden = st.hidden_of(field)
    if hidden.height and manifest.height < st.manifest_of(field).height:
        hidden = hidden.filter(pl.col("key").is_in(manifest["key"].implode()))
    return ScanPlan(dataset, tuple(zip(manifest["key"].to_list(), manifest["size"].to_list(), strict=True)),
                    tuple(wanted), frozenset(auto) & frozenset(wanted), hidden,
                    held["id"] if held is not None else pl.Series("id", [], dtype=pl.String),
                    st.applied_keys(field))
