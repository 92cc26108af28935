"""Fold pending rows chunk by chunk into per-record states: memory follows the records touched.

The built-in reducers ``default``, ``sum``, ``min`` and ``max`` are folded without holding the
pending rows: each chunk of objects, once decoded, is reduced to a few per-record frames and let
go. Two forms:

* **aggregates** (:data:`MERGEABLE`, no ``set`` among the pending rows): per record, the reducer's
  partial aggregate of the signed values, the earliest timestamp and the latest ``(timestamp,
  id)``. Partials merge by the same aggregate, so the state is O(records) whatever the rows.
* **compact rows** (the ``default`` reducer once a ``set`` is pending, or late rows): the default
  reducer is two aggregations (each record's last ``set`` by ``(timestamp, id)``, then the signed
  sum of what follows it), and the second needs the first's answer, which only the last chunk
  settles. So each row is kept as ``originalId, timestamp, signed value, is-set, object, row``
  (about 40 bytes, with no ``id``); at the end one join with the per-record thresholds and one
  group-by give the values. A row whose timestamp equals its threshold needs its ``id`` to
  break the tie: those few are looked up in their objects again (``ids_of``).

A fold starts as aggregates and raises :class:`Restart` when that form cannot be exact (a ``set``
arrives, or a record has rows dated before its applied marks); the caller reads the objects again
as compact rows. Results equal :meth:`ecanalytics.consolidation.consolidator.Consolidator.fold`
on the same rows: same values (sums in another order, so general floats may differ in the last
bits; integer-valued and decimal amounts are exact), marks, late count and records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import polars as pl

from ecanalytics.consolidation.eventorder import before, new_marks
from ecanalytics.consolidation.reducers import signed_value

MERGEABLE: tuple[str, ...] = ("default", "sum", "min", "max")
_TS, _ID = "timestamp", "id"
_AGG: dict[str, Callable[[pl.Expr], pl.Expr]] = {
    "default": lambda e: e.sum(), "sum": lambda e: e.sum(), "min": lambda e: e.min(), "max": lambda e: e.max()}
_COMBINE: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    "default": lambda cur, agg: cur + agg.fill_null(0), "sum": lambda cur, agg: cur + agg.fill_null(0),
    "min": lambda cur, agg: pl.min_horizontal(cur, agg), "max": lambda cur, agg: pl.max_horizontal(cur, agg)}
_ROW: dict[str, pl.DataType] = {"originalId": pl.String(), _TS: pl.Datetime("us", "UTC"), _ID: pl.String()}
_LATE_SETS: dict[str, pl.DataType] = {"originalId": pl.String(), "_ts": pl.Datetime("us", "UTC"), "_id": pl.String()}
IdsOf = Callable[[pl.DataFrame], pl.DataFrame]  # ``_object, _row`` -> ``_object, _row, id``


class Restart(Exception):
    """The aggregate form cannot fold these rows exactly: fold them again as compact rows."""


@dataclass(frozen=True)
class StateOutcome:
    """What :meth:`RecordStates.finish` returns."""

    values: pl.DataFrame  # originalId, value (before the late sets' applied history is added)
    marks: pl.DataFrame  # the new marks (``MARKS_SCHEMA``) of every record touched
    late: int  # rows dated before their record's latest applied transaction
    late_sets: pl.DataFrame  # originalId, _ts, _id: pending last sets dated before the marks


def _last(rows: pl.DataFrame, *extra: str) -> pl.DataFrame:
    """Per record, the row that sorts last by ``(timestamp, id)``: ``originalId, timestamp, id,
    *extra``. One group-by over the rows; the candidates at each record's latest instant are few."""
    if not rows.height:
        return rows.select("originalId", _TS, _ID, *extra)
    top = rows.group_by("originalId").agg(pl.col(_TS).max())
    candidates = rows.filter(pl.col(_TS).is_in(top[_TS].implode())).join(top, on=["originalId", _TS])
    if not extra:
        return candidates.group_by("originalId").agg(pl.col(_TS).first(), pl.col(_ID).max())
    return candidates.sort(_ID).group_by("originalId").agg(pl.col(_TS, _ID, *extra).last())


class RecordStates:
    """The per-record states of one fold (see the module docstring). ``compact``: keep compact
    rows from the start (the caller's second attempt after a :class:`Restart`)."""

    def __init__(self, reducer: str, dtype: pl.DataType, *, compact: bool) -> None:
        if reducer not in MERGEABLE:
            raise ValueError(f"reducer {reducer!r} does not fold into mergeable states")
        self.reducer, self.dtype, self.compact = reducer, dtype, compact
        self.rows = 0
        self._tops: list[pl.DataFrame] = []  # originalId, timestamp, id: each chunk's latest per record
        self._sets: list[pl.DataFrame] = []  # originalId, timestamp, id, value: each chunk's last set per record
        self._parts: list[pl.DataFrame] = []  # aggregates, or compact rows
        self._exact: list[pl.DataFrame] = []  # compact rows with their id (caller keys and held rows)
        # Record ids become UInt32 codes once per row (a categorical mapping private to this
        # fold): every group-by and join after that hashes 4 bytes, and compact rows shrink. The
        # empty anchor keeps the mapping alive between chunks (Polars frees unused ones).
        self._categorical = pl.Categorical(pl.Categories.random())
        self._anchor = pl.Series("originalId", [], dtype=self._categorical)
        self._names: pl.Series | None = None
        self._codes = 0  # codes handed out so far (the mapping's length)

    def _coded(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with ``originalId`` as this fold's code."""
        coded = frame.with_columns(pl.col("originalId").cast(self._categorical).to_physical())
        if coded.height:
            self._codes = max(self._codes, int(coded["originalId"].max()) + 1)  # type: ignore[arg-type]
        return coded

    def _named(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with ``originalId`` codes back as record ids."""
        if self._names is None or self._names.len() < self._codes:  # the mapping grew since
            self._names = self._categorical.categories.to_series()
        return frame.with_columns(self._names.gather(frame["originalId"]).alias("originalId"))

    def add(self, rows: pl.DataFrame, *, exact: bool = False) -> None:
        """Fold one chunk of pending rows (``pending_schema``). As compact rows, ``exact`` ones
        (caller-supplied keys, held rows: few, and without an object to look an id up in) keep
        their ids."""
        if not rows.height:
            return
        rows = self._coded(rows)
        sets = rows.filter(pl.col("operation") == "set")
        if sets.height and not self.compact and self.reducer == "default":
            raise Restart
        self.rows += rows.height
        value = signed_value().cast(self.dtype).alias("_v")
        if self.compact:
            self._tops.append(_last(rows.select("originalId", _TS, _ID)))
            part = rows.select("originalId", _TS, value, (pl.col("operation") == "set").alias("_set"),
                               *([_ID] if exact else ["_object", "_row"]))
            (self._exact if exact else self._parts).append(part)
        else:
            agg = rows.group_by("originalId").agg(_AGG[self.reducer](value).alias("_agg"),
                                                  pl.col(_TS).min().alias("_first"), pl.col(_TS).max())
            self._parts.append(agg.drop(_TS))
            self._tops.append(rows.select("originalId", _TS, _ID).filter(pl.col(_TS).is_in(agg[_TS].implode()))
                              .join(agg.select("originalId", _TS), on=["originalId", _TS], how="semi")
                              .group_by("originalId").agg(pl.col(_TS).first(), pl.col(_ID).max()))
        if sets.height:
            self._sets.append(_last(sets, "value"))

    def touched(self) -> pl.Series:
        """The records with pending rows."""
        if not self._tops:
            return pl.Series("originalId", [], dtype=pl.String)
        return self._named(pl.concat([t.select("originalId") for t in self._tops]).unique())["originalId"]

    def finish(self, current: pl.DataFrame, marks: pl.DataFrame, default: object, field: str,
               ids_of: IdsOf) -> StateOutcome:
        """Merge the states against ``current`` (``originalId, current``) and ``marks``
        (``originalId, setTs, setId, maxTs, maxId``) of the records touched; ``default`` is the
        value a missing record starts from. Raises :class:`Restart` if the aggregate form
        cannot be exact (rows dated before a record's marks)."""
        if not self._tops:  # every row dropped by the key rule: nothing to change
            return StateOutcome(pl.DataFrame(schema={"originalId": pl.String(), "value": self.dtype}),
                                new_marks(pl.DataFrame(schema={**_ROW, "operation": pl.String()}), marks, field), 0,
                                pl.DataFrame(schema=_LATE_SETS))
        tops = _last(pl.concat(self._tops, how="vertical"))
        sets = (_last(pl.concat(self._sets, how="vertical"), "value") if self._sets
                else pl.DataFrame(schema={**_ROW, "originalId": pl.UInt32(), "value": self.dtype}))
        reduced = pl.concat([tops.with_columns(pl.lit("add").alias("operation")),
                             sets.drop("value").with_columns(pl.lit("set").alias("operation"))], how="vertical")
        new = new_marks(self._named(reduced), marks, field)
        base = pl.lit(default).cast(self.dtype)
        current, marks = self._coded(current), self._coded(marks)
        if not self.compact:
            values, late, late_sets = self._finish_aggregates(current, marks, base), 0, None
        else:
            values, late, late_sets = self._finish_compact(tops, sets, current, marks, base, ids_of)
        return StateOutcome(self._named(values), new, late,
                            pl.DataFrame(schema=_LATE_SETS) if late_sets is None else self._named(late_sets))

    def _finish_aggregates(self, current: pl.DataFrame, marks: pl.DataFrame, base: pl.Expr) -> pl.DataFrame:
        parts = pl.concat(self._parts, how="vertical").group_by("originalId").agg(
            _AGG[self.reducer](pl.col("_agg")).alias("_agg"), pl.col("_first").min())
        if marks.height:
            early = parts.join(marks, on="originalId").filter(pl.col("_first") <= pl.col("maxTs"))
            if early.height:  # rows dated at or before the applied ones: only rows tell how late
                raise Restart
        return parts.join(current, on="originalId", how="left").select(
            "originalId", _COMBINE[self.reducer](pl.col("current").fill_null(base), pl.col("_agg"))
            .cast(self.dtype).alias("value"))

    def _aggregate(self, rows: pl.LazyFrame) -> pl.LazyFrame:
        """Per record, the reducer's aggregate of the rows that count and how many rows are late,
        over compact rows joined with their record's threshold and maximum."""
        counted = pl.col("_tTs").is_null() | (pl.col(_TS) > pl.col("_tTs")) | (
            (pl.col(_TS) == pl.col("_tTs")) & (pl.col(_ID) > pl.col("_tId"))).fill_null(False)
        contribution = (pl.when(counted & ~pl.col("_set")).then(pl.col("_v")).otherwise(None)
                        if self.reducer == "default" else pl.col("_v"))
        return rows.group_by("originalId").agg(_AGG[self.reducer](contribution).alias("_agg"),
                                               before(_TS, _ID, "maxTs", "maxId").sum().alias("_late"))

    def _finish_compact(self, tops: pl.DataFrame, sets: pl.DataFrame, current: pl.DataFrame, marks: pl.DataFrame,
                        base: pl.Expr, ids_of: IdsOf) -> tuple[pl.DataFrame, int, pl.DataFrame]:
        default = self.reducer == "default"
        # Per record: the threshold (the set whose value stands: the pending last set, unless the
        # applied set sorts after it) and the applied maximum, for late rows.
        table = tops.select("originalId").join(sets.rename({_TS: "_sTs", _ID: "_sId", "value": "_sVal"}),
                                               on="originalId", how="left").join(marks, on="originalId", how="left")
        wins = pl.col("_sTs").is_not_null() & (pl.col("setTs").is_null() | ~before("_sTs", "_sId", "setTs", "setId"))
        table = table.with_columns(
            pl.when(wins).then(pl.col("_sTs")).otherwise(pl.col("setTs")).alias("_tTs"),
            pl.when(wins).then(pl.col("_sId")).otherwise(pl.col("setId")).alias("_tId"),
            pl.when(wins).then(pl.col("_sVal")).otherwise(None).alias("_base"),
            (wins & before("_sTs", "_sId", "maxTs", "maxId")).alias("_lateSet"))
        if not default:  # order-free: every row counts, only lateness needs the marks
            table = table.with_columns(pl.lit(None, pl.Datetime("us", "UTC")).alias("_tTs"),
                                       pl.lit(None, pl.String).alias("_tId"))
        probe = table.select("originalId", "_tTs", "_tId", "maxTs", "maxId")
        aggs = []
        if self._parts:
            # Most rows sort clear of both marks of their record and need no id: one streaming
            # join and group-by. A row at its record's threshold or maximum needs its id (a set
            # never ties with itself: its own contribution is nil).
            rows = pl.concat(self._parts, how="vertical", rechunk=False).lazy().join(
                probe.lazy().select("originalId", "_tTs", "maxTs"), on="originalId", how="left")
            tie = (((pl.col(_TS) == pl.col("_tTs")) & ~pl.col("_set")) | (pl.col(_TS) == pl.col("maxTs"))).fill_null(False)
            clear, ties = pl.collect_all(
                [self._aggregate(rows.filter(~tie).with_columns(pl.lit(None, pl.String).alias(_ID),
                                                                pl.lit(None, pl.String).alias("_tId"),
                                                                pl.lit(None, pl.String).alias("maxId"))),
                 rows.filter(tie).select("originalId", "_object", "_row")], engine="streaming")
            aggs.append(clear)
            if ties.height:  # the few rows whose order at their instant is decided by the id
                found = ties.join(ids_of(ties.select("_object", "_row")), on=["_object", "_row"], how="left")
                again = pl.concat(self._parts, how="vertical", rechunk=False).join(found, on=["originalId", "_object", "_row"])
                aggs.append(self._aggregate(again.drop("_object", "_row").lazy().join(probe.lazy(), on="originalId",
                                                                                      how="left")).collect())
        if self._exact:
            aggs.append(self._aggregate(pl.concat(self._exact, how="vertical").lazy().join(
                probe.lazy(), on="originalId", how="left")).collect())
        agg = pl.concat(aggs, how="vertical").group_by("originalId").agg(
            _AGG[self.reducer](pl.col("_agg")).alias("_agg"), pl.col("_late").sum())
        kept = table.join(tops.rename({_TS: "_topTs", _ID: "_topId"}), on="originalId")
        if default:  # a record whose rows all sort before its applied set is left as it is
            kept = kept.filter(~before("_topTs", "_topId", "setTs", "setId"))
        values = kept.join(agg, on="originalId", how="left").join(current, on="originalId", how="left").select(
            "originalId",
            _COMBINE[self.reducer](pl.coalesce("_base", "current", base) if default else pl.col("current").fill_null(base),
                                   pl.col("_agg")).cast(self.dtype).alias("value"))
        late_sets = table.filter(pl.col("_lateSet") & default).select("originalId", pl.col("_sTs").alias("_ts"),
                                                                     pl.col("_sId").alias("_id"))
        return values, int(agg["_late"].sum()), late_sets
