"""Event order for late data: each record's marks, and what a late transaction may change.

Consolidation is incremental, yet its result must equal a fold of *all* the record's transactions
in ``(timestamp, id)`` order. Two marks per record and field make that cheap (``State.marks``):

* ``set`` -- the ``(timestamp, id)`` of the last applied ``set``;
* ``max`` -- the ``(timestamp, id)`` of the latest applied transaction.

A pending transaction is *late* when it sorts before ``max``. Then, per built-in reducer:

========== ==================================================================================
default    a late row before the last applied ``set`` has no effect; a late ``add``/``sub``
           after it just adds (addition commutes); a late ``set`` becomes the base, and the
           applied ``add``/``sub`` rows after it are read back from history, from its cohort
           day on (partition pruning) -- the only case that reads history
last       a late row is kept only if it sorts after ``max``, so the latest event wins
sum/max/min order-free: nothing to do
python     the record is folded again from its base over its whole history (the slow path)
========== ==================================================================================
"""

from __future__ import annotations

import polars as pl

from ecanalytics.ledger.state import MARKS_SCHEMA


def before(ts: str, tid: str, mark_ts: str, mark_id: str) -> pl.Expr:
    """``(ts, tid) < (mark_ts, mark_id)``; False where the mark is null."""
    return ((pl.col(ts) < pl.col(mark_ts)) | ((pl.col(ts) == pl.col(mark_ts)) & (pl.col(tid) < pl.col(mark_id)))).fill_null(False)


def _later(a_ts: str, a_id: str, b_ts: str, b_id: str) -> pl.Expr:
    """True where ``(a_ts, a_id)`` should replace ``(b_ts, b_id)`` as the maximum."""
    return pl.col(b_ts).is_null() | (pl.col(a_ts).is_not_null() & ~before(a_ts, a_id, b_ts, b_id)
                                      & ((pl.col(a_ts) != pl.col(b_ts)) | (pl.col(a_id) != pl.col(b_id))))


def new_marks(rows: pl.DataFrame, marks: pl.DataFrame, field: str, *, names: pl.Series | None = None) -> pl.DataFrame:
    """The marks after applying ``rows`` (``originalId, id, operation, timestamp``) on top of ``marks``
    (``originalId, setTs, setId, maxTs, maxId``); one row ``id, field, setTs, setId, maxTs, maxId``
    per record of ``rows``. With ``names``, ``originalId`` in both is an index into ``names``
    (integer keys join faster than strings), and the marks come out named."""
    return merged_marks(_last(rows.lazy(), "_maxTs", "_maxId"),
                        _last(rows.lazy().filter(pl.col("operation") == "set"), "_setTs", "_setId"), marks, field,
                        names=names)


def merged_marks(latest: pl.DataFrame, sets: pl.DataFrame, marks: pl.DataFrame, field: str, *,
                 names: pl.Series | None = None) -> pl.DataFrame:
    """:func:`new_marks` of rows already reduced to each record's last row (``originalId, _maxTs,
    _maxId``, one per record) and last ``set`` (``originalId, _setTs, _setId``, at most one per
    record)."""
    merged = latest.join(sets, on="originalId", how="left").join(marks, on="originalId", how="left")
    take_set, take_max = _later("_setTs", "_setId", "setTs", "setId"), _later("_maxTs", "_maxId", "maxTs", "maxId")
    return merged.select(
        (pl.col("originalId") if names is None else pl.lit(names).gather(pl.col("originalId"))).alias("id"),
        pl.lit(field, pl.String).alias("field"),
        pl.when(take_set).then(pl.col("_setTs")).otherwise(pl.col("setTs")).alias("setTs"),
        pl.when(take_set).then(pl.col("_setId")).otherwise(pl.col("setId")).alias("setId"),
        pl.when(take_max).then(pl.col("_maxTs")).otherwise(pl.col("maxTs")).alias("maxTs"),
        pl.when(take_max).then(pl.col("_maxId")).otherwise(pl.col("maxId")).alias("maxId"),
    ).cast({k: v for k, v in MARKS_SCHEMA.items()})  # type: ignore[arg-type]


def _last(rows: pl.LazyFrame, ts: str, tid: str) -> pl.DataFrame:
    """Per record, the ``(timestamp, id)`` that sorts last: a max, then the max id among the rows
    at that instant (two group-bys and a join; a full sort is several times slower)."""
    top = rows.group_by("originalId").agg(pl.col("timestamp").max().alias(ts))
    return (
        rows.join(top, left_on=["originalId", "timestamp"], right_on=["originalId", ts])
        .group_by("originalId").agg(pl.col("timestamp").first().alias(ts), pl.col("id").max().alias(tid))
        .collect()
    )


def marks_from_history(rows: pl.DataFrame, field: str) -> pl.DataFrame:
    """Marks rebuilt from a record's complete applied history (recalculation)."""
    empty = pl.DataFrame(schema={"originalId": pl.String(), **{k: v for k, v in MARKS_SCHEMA.items() if k not in ("id", "field")}})
    return new_marks(rows, empty, field)


def late_rows(rows: pl.DataFrame, marks: pl.DataFrame) -> pl.Series:
    """A boolean per row of ``rows``: it sorts before its record's latest applied transaction."""
    joined = rows.select("originalId", "timestamp", "id").join(marks, on="originalId", how="left", maintain_order="left")
    return joined.select(before("timestamp", "id", "maxTs", "maxId").alias("late")).to_series()
