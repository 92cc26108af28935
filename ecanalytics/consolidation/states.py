"""Fold pending rows chunk by chunk into per-record states: memory follows the records touched.

The built-in reducers ``default``, ``sum``, ``min`` and ``max`` of a number (``Float64``) field are
folded without holding the pending rows: each chunk of objects, once decoded, is reduced into
per-record arrays and let go. Record ids become dense ``UInt32`` codes once per row (a categorical
mapping private to the fold), so every per-record aggregate is a NumPy scatter (``bincount``,
``ufunc.at``) into an array indexed by code, and every per-row lookup of a record's threshold a
gather: no hash table per row after the coding. Three forms:

* **aggregates** (no ``set`` among the pending rows): per record the reducer's aggregate of the
  signed values, the earliest timestamp and the latest ``(timestamp, id)``. They merge by the same
  aggregate, so the state is O(records) whatever the rows.
* **compact rows** (any reducer once rows folded as an aggregate are dated at or before their
  record's applied marks, and the ``default`` reducer when a ``set`` cannot be taken in the
  hybrid form, below): the default reducer is two aggregations (each record's last ``set`` by
  ``(timestamp, id)``, then the signed sum of what follows it), and the second needs the first's
  answer, which only the last chunk settles. So each row is kept as ``code, timestamp, signed
  value, is-set, object, row`` (29 bytes, no ``id``); at the end one gather of the per-record
  thresholds and one ``bincount`` give the values. A row whose timestamp equals its record's
  threshold or applied maximum needs its ``id`` to break the tie: those few are looked up in
  their objects again (``ids_of``) and folded with Polars.
* **hybrid** (the ``default`` reducer with ``set`` rows pending): only the records with a
  ``set`` are kept as compact rows, from the chunk where their first ``set`` arrives; the rest
  stay aggregates. What a record folded as an aggregate before its first ``set`` counts for
  nothing when it all sorts before that set, since the threshold (its last ``set``) can only
  move later; the aggregate is kept but never read. A bench of 10^7 rows with sets on 5% of
  the records keeps 5 × 10^5 compact rows instead of 10^7.

Every form also keeps, per record, the rows at its latest instant and its latest ``set`` rows
(with their ids, for the marks and the threshold), pruned chunk by chunk as later rows arrive, so
they stay about one row per record; ids come back from codes through the mapping at the end.

A fold starts as aggregates (hybrid once a ``set`` arrives) and raises :class:`Restart` when that
form cannot be exact: a ``set`` arrives for a record whose rows folded so far do not all sort
before it (one at its very instant needs an id the aggregate has lost), or a record has rows
folded as an aggregate dated at or before its applied marks. The caller reads the objects again
as compact rows. Results equal the general path's
(:meth:`ecanalytics.consolidation.consolidator.Consolidator.fold`) on the same rows: the same
marks, late count and records, and the same values for integer-valued amounts (sums of general
floats run in another order and may differ in the last bits).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from ecanalytics.consolidation.eventorder import before, merged_marks
from ecanalytics.consolidation.reducers import signed_value

MERGEABLE: tuple[str, ...] = ("default", "sum", "min", "max")
_TS, _ID = "timestamp", "id"
_NONE = np.iinfo(np.int64).min  # "no such instant" in a per-record timestamp array
_UTC = pl.Datetime("us", "UTC")
_ROW: dict[str, pl.DataType] = {"originalId": pl.String(), _TS: _UTC, _ID: pl.String()}
_TOPS: dict[str, pl.DataType] = {**_ROW, "originalId": pl.UInt32()}  # rows at their record's latest instant
_SETS: dict[str, pl.DataType] = {**_TOPS, "value": pl.Float64()}  # rows at their record's latest set
_START = {"default": 0.0, "sum": 0.0, "min": np.inf, "max": -np.inf}  # the aggregate of no rows
_COMBINE: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    "default": lambda cur, agg: cur + agg, "sum": lambda cur, agg: cur + agg,
    "min": lambda cur, agg: pl.min_horizontal(cur, agg), "max": lambda cur, agg: pl.max_horizontal(cur, agg)}
IdsOf = Callable[[pl.DataFrame], pl.DataFrame]  # ``_object, _row`` -> ``_object, _row, id``
After = Callable[[pl.DataFrame], tuple[pl.DataFrame, int]]  # thresholds -> a second round's sums, late rows
# Compact rows as NumPy columns: code, instant (int64 us), signed value, is-set, object, row.
_Compact = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


Partial = tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]  # states, tops, sets: see :func:`partial_states`


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
    """Per record (a code), the row that sorts last by ``(timestamp, id)``: ``originalId,
    timestamp, id, *extra`` (for the few rows of the ``set`` operations and of the latest
    instants). The latest instant per code is a NumPy scatter; only codes with several rows at
    that instant (rare: microsecond timestamps) are sorted by id."""
    if not rows.height:
        return rows.select("originalId", _TS, _ID, *extra)
    codes, ts = rows["originalId"].to_numpy(), _instants(rows, _TS)
    latest = np.full(int(codes.max()) + 1, _NONE, np.int64)
    np.maximum.at(latest, codes, ts)
    at = ts == latest[codes]
    top = rows.filter(pl.Series(at)).select("originalId", _TS, _ID, *extra)
    if np.bincount(codes[at]).max() > 1:  # several rows at one instant: the greatest id wins
        top = top.sort(_ID).group_by("originalId", maintain_order=True).last()
    return top


def _owned(strings: pl.Series) -> pl.Series:
    """``strings`` (a few, filtered out of a chunk) copied into buffers of their own. A filtered
    string column shares the chunk's buffers (Polars' string views), so the few ids kept per
    chunk would keep every chunk's ids in memory until the fold ends."""
    return pl.select(pl.concat_str([pl.lit(strings), pl.lit("")]).alias(strings.name)).to_series()


def _instants(frame: pl.DataFrame, column: str) -> np.ndarray:
    """A timestamp column as int64 microseconds, :data:`_NONE` for null."""
    return frame[column].cast(_UTC).to_physical().fill_null(_NONE).to_numpy()


class _AtLatest:
    """The rows at each record's latest instant so far (its latest rows, or its latest ``set``
    rows), with ids. Rows come in chunk by chunk and a record's latest instant only grows, so a
    row no longer at it never is again: rows that came in are dropped once they outnumber the
    rows kept (and at the end), so a chunk costs its own rows, not all the records' (at 10^8 rows
    over 10^7 records, filtering every kept row at every chunk took 3.3 of 59 s)."""

    def __init__(self, schema: dict[str, pl.DataType]) -> None:
        self._kept = pl.DataFrame(schema=schema)
        self._new: list[pl.DataFrame] = []
        self._new_rows = 0

    def add(self, rows: pl.DataFrame, instants: np.ndarray) -> None:
        """Take ``rows`` (``originalId`` as codes); ``instants`` is each code's latest instant."""
        if rows.height:
            self._new.append(rows)
            self._new_rows += rows.height
            if self._new_rows > max(self._kept.height, 1024):
                self.frame(instants)

    def frame(self, instants: np.ndarray) -> pl.DataFrame:
        """The rows still at their record's latest instant (``instants`` per code)."""
        if self._new:
            both = pl.concat([self._kept, *self._new], how="vertical")
            self._kept = both.filter(pl.Series(_instants(both, _TS) == instants[both["originalId"].to_numpy()]))
            self._new, self._new_rows = [], 0
        return self._kept

    @property
    def empty(self) -> bool:
        return not (self._kept.height or self._new_rows)


def _aggregate(reducer: str, value: pl.Expr) -> pl.Expr:
    return value.sum() if reducer in ("default", "sum") else value.min() if reducer == "min" else value.max()


def partial_states(rows: pl.DataFrame, reducer: str) -> Partial:
    """``rows`` (pending rows with their ids, record ids as strings) as a partial state, which a
    fold merges with others (:meth:`RecordStates.add_partial`) instead of taking the rows: per
    record ``originalId, _agg, _earliest, _latest, _rows``; the rows at each record's latest
    instant (``originalId, timestamp, id``); and the ``set`` rows at each record's latest ``set``
    instant (``originalId, timestamp, id, value``). It grows with the records, not the rows.

    Without a ``set`` anywhere the partial states are the whole fold (one round). With one, the
    rows that count for the ``default`` reducer are those after each record's last ``set``, which
    only all the partial states together tell: a second round asks each piece of rows for
    :func:`after_threshold` of the merged :meth:`RecordStates.thresholds`."""
    if reducer not in MERGEABLE:
        raise ValueError(f"reducer {reducer!r} does not fold into mergeable states")
    states = rows.group_by("originalId").agg(
        _aggregate(reducer, signed_value().cast(pl.Float64)).alias("_agg"), pl.col(_TS).min().alias("_earliest"),
        pl.col(_TS).max().alias("_latest"), pl.len().alias("_rows"))
    tops = rows.join(states.select("originalId", pl.col("_latest").alias(_TS)), on=["originalId", _TS],
                     how="semi").select("originalId", _TS, _ID)
    set_rows = rows.filter(pl.col("operation") == "set").select("originalId", _TS, _ID, pl.col("value").cast(pl.Float64))
    sets = set_rows.filter(pl.col(_TS) == pl.col(_TS).max().over("originalId")) if set_rows.height else set_rows
    return states, tops, sets


def after_threshold(rows: pl.DataFrame, table: pl.DataFrame, reducer: str) -> tuple[pl.DataFrame, int]:
    """The second round of a fold from partial states (see :func:`partial_states`): ``rows``
    (pending rows with their ids) against ``table`` (:meth:`RecordStates.thresholds`, or its
    coded form): per record the reducer's aggregate of the rows that count (``originalId,
    _agg``), and how many rows are late (sorted before their record's applied maximum)."""
    return _after(rows.select("originalId", _TS, _ID, signed_value().cast(pl.Float64).alias("_v"),
                              (pl.col("operation") == "set").alias("_set")), table, reducer)


def _after(rows: pl.DataFrame, table: pl.DataFrame, reducer: str) -> tuple[pl.DataFrame, int]:
    """:func:`after_threshold` of rows as ``originalId, timestamp, id, _v, _set``."""
    rows = rows.join(table.select("originalId", "_tTs", "_tId", "maxTs", "maxId"), on="originalId", how="left")
    counted = (pl.col("_tTs").is_null() | (pl.col(_TS) > pl.col("_tTs"))
               | ((pl.col(_TS) == pl.col("_tTs")) & (pl.col(_ID) > pl.col("_tId")))).fill_null(False)
    if reducer == "default":
        counted = counted & ~pl.col("_set")
    sums = rows.filter(counted).group_by("originalId").agg(_aggregate(reducer, pl.col("_v")).alias("_agg"))
    return sums, int(rows.select(before(_TS, _ID, "maxTs", "maxId").sum()).item())


def _scatter(reducer: str, into: np.ndarray, codes: np.ndarray, values: np.ndarray) -> None:
    """Aggregate ``values`` into ``into[codes]`` by the reducer's rule, in place."""
    if reducer in ("default", "sum"):
        into += np.bincount(codes, weights=values, minlength=into.size)
    else:
        (np.minimum if reducer == "min" else np.maximum).at(into, codes, values)


class RecordStates:
    """The per-record states of one fold of a ``Float64`` field (see the module docstring).
    ``compact``: keep compact rows from the start (the caller's second attempt after a
    :class:`Restart`)."""

    def __init__(self, reducer: str, *, compact: bool) -> None:
        if reducer not in MERGEABLE:
            raise ValueError(f"reducer {reducer!r} does not fold into mergeable states")
        self.reducer, self.compact = reducer, compact
        self.rows = 0
        # The empty anchor keeps the fold's categorical mapping alive between chunks (Polars
        # frees a mapping no series uses).
        self._categorical = pl.Categorical(pl.Categories.random())
        self._anchor = pl.Series("originalId", [], dtype=self._categorical)
        self._names: pl.Series | None = None
        self._latest = np.full(0, _NONE, np.int64)  # per code: the latest timestamp
        self._earliest = np.full(0, np.iinfo(np.int64).max, np.int64)  # per code: the earliest
        self._agg = np.full(0, _START[reducer])  # per code: the aggregate (aggregates form)
        # The rows at each record's latest instant so far.
        self._tops = _AtLatest(_TOPS)
        self._set_latest = np.full(0, _NONE, np.int64)  # per code: the latest set's timestamp
        self._sets = _AtLatest(_SETS)  # as tops
        self._parts: list[_Compact] = []  # compact rows
        self._exact: list[pl.DataFrame] = []  # compact rows with their id (caller keys and held rows)
        self.compact_rows = 0  # rows kept as compact rows (in ``_parts`` and ``_exact``)
        # The default reducer folds each record as an aggregate until a set of its arrives, and
        # from then on keeps its rows as compact rows (per code: ``_held``).
        self._hybrid = reducer == "default" and not compact
        self._held = np.zeros(0, bool)
        self._held_earliest = np.zeros(0, np.int64)  # per held code: ``_earliest`` when it was held

    # -- codes -----------------------------------------------------------------------------
    def _grow(self, n: int) -> None:
        """Grow the per-code arrays to ``n`` codes."""
        if n > self._latest.size:
            grow = n - self._latest.size
            self._latest = np.concatenate([self._latest, np.full(grow, _NONE, np.int64)])
            self._earliest = np.concatenate([self._earliest, np.full(grow, np.iinfo(np.int64).max, np.int64)])
            self._agg = np.concatenate([self._agg, np.full(grow, _START[self.reducer])])
            self._set_latest = np.concatenate([self._set_latest, np.full(grow, _NONE, np.int64)])
            self._held = np.concatenate([self._held, np.zeros(grow, bool)])
            self._held_earliest = np.concatenate([self._held_earliest, np.full(grow, np.iinfo(np.int64).max, np.int64)])

    def _coded(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with ``originalId`` as this fold's code; the per-code arrays grow to fit."""
        coded = frame.with_columns(pl.col("originalId").cast(self._categorical).to_physical())
        self._grow(int(coded["originalId"].max()) + 1 if coded.height else 0)  # type: ignore[arg-type]
        return coded

    def _names_by_code(self) -> pl.Series:
        """The record id of each code (codes turned back into the mapping's strings)."""
        if self._names is None or self._names.len() < self._latest.size:  # codes were added since
            self._names = pl.Series(np.arange(self._latest.size, dtype=np.uint32)).cat.to(
                self._categorical).cast(pl.String)
        return self._names

    def _named(self, frame: pl.DataFrame) -> pl.DataFrame:
        """``frame`` with ``originalId`` codes back as record ids."""
        return frame.with_columns(self._names_by_code().gather(frame["originalId"]).alias("originalId"))

    # -- folding chunks --------------------------------------------------------------------
    def add(self, rows: pl.DataFrame, *, exact: bool = False) -> None:
        """Fold one chunk of pending rows (``pending_schema``). As compact rows, ``exact`` ones
        (caller-supplied keys, held rows: few, and without an object to look an id up in) keep
        their ids. Raises :class:`Restart` when a ``set`` arrives for a record whose rows folded
        so far as an aggregate do not all sort before it (see the module docstring)."""
        if not rows.height:
            return
        # One pass of Polars' streaming engine (parallel over the chunk's morsels) codes the
        # record ids and projects what the fold keeps; the ids stay in ``rows``.
        part = rows.lazy().select(
            pl.col("originalId").cast(self._categorical).to_physical(), pl.col(_TS).to_physical(),
            signed_value().cast(pl.Float64).alias("_v"), (pl.col("operation") == "set").alias("_set"),
            *([] if exact else ["_object", "_row"])).collect(engine="streaming")
        codes, ts, is_set = part["originalId"].to_numpy(), part[_TS].to_numpy(), part["_set"].to_numpy()
        self._grow(int(codes.max()) + 1)
        self.rows += rows.height
        # Rows are picked by position (``flatnonzero``, then ``take``): NumPy's boolean indexing
        # took 5.9 ms for six columns of 8x10^5 rows at 5%, ``take`` 0.9 ms.
        def picked(at: np.ndarray, *extra: pl.Series) -> pl.DataFrame:
            """The rows at positions ``at``: code, instant, id (in buffers of its own) and ``extra``."""
            return pl.DataFrame({"originalId": codes.take(at), _TS: ts.take(at)}).with_columns(
                pl.col(_TS).cast(_UTC), _owned(rows[_ID].gather(at)), *(c.gather(at) for c in extra))

        if is_set.any():  # each record's latest set rows so far (one per record, mostly), with ids
            sets = np.flatnonzero(is_set)
            set_codes, set_ts = codes.take(sets), ts.take(sets)
            np.maximum.at(self._set_latest, set_codes, set_ts)
            latest = sets.take(np.flatnonzero(set_ts == self._set_latest[set_codes]))
            self._sets.add(picked(latest, rows["value"].cast(pl.Float64)), self._set_latest)
            if self._hybrid:
                self._hold(set_codes)
        # The rows at their record's latest instant so far carry the id the marks need.
        np.maximum.at(self._latest, codes, ts)
        self._tops.add(picked(np.flatnonzero(ts == self._latest[codes])), self._latest)
        if not self.compact:
            # Every row, held ones too: a held record's aggregate is never read (see
            # :meth:`finish`), and one pass with no copies is cheaper than leaving them out.
            np.minimum.at(self._earliest, codes, ts)
            _scatter(self.reducer, self._agg, codes, part["_v"].to_numpy())
        # The rows kept as compact rows: every one (``at`` None), or those of the held records.
        at = None
        if not self.compact:
            held = self._held[codes] if self._hybrid else None
            if held is None or not held.any():
                return
            if not held.all():
                at = np.flatnonzero(held)
        if exact:  # with their ids
            frame = part.with_columns(pl.col(_TS).cast(_UTC), rows[_ID])
            self._exact.append(frame if at is None else frame[at])
        else:  # as NumPy columns: what the end reads, with no conversion
            values, objects, positions = part["_v"].to_numpy(), part["_object"].to_numpy(), part["_row"].to_numpy()
            self._parts.append((codes, ts, values, is_set, objects, positions) if at is None else
                               (codes.take(at), ts.take(at), values.take(at), is_set.take(at), objects.take(at),
                                positions.take(at)))
        self.compact_rows += codes.size if at is None else at.size

    def _hold(self, set_codes: np.ndarray) -> None:
        """Keep the records of ``set_codes`` (with a ``set`` in the chunk being folded, whose set
        instants are already in ``_set_latest``) as compact rows from now on. What they folded
        as an aggregate so far counts for nothing if it all sorts before their latest set (the
        threshold can only move later); else :class:`Restart`."""
        new = set_codes[~self._held[set_codes]]
        if new.size:
            # Rows folded so far are at or before ``_latest`` (not yet updated for this chunk);
            # one at the set's very instant needs its id, which an aggregate has lost.
            if (self._latest[new] >= self._set_latest[new]).any():
                raise Restart
            self._held[new] = True
            # Their rows so far may still be late (see :meth:`finish`); from now on their
            # compact rows tell it row by row.
            self._held_earliest[new] = self._earliest[new]

    def add_partial(self, partial: Partial) -> None:
        """Merge a partial state (:func:`partial_states`) of rows read elsewhere (a cluster's
        partition task) into this aggregates-form fold, as :meth:`add` of those rows would.
        With a ``set`` among them, the aggregate needs a second round (:meth:`thresholds`)."""
        if self.compact or self._held.any():
            raise ValueError("partial states merge into the aggregates form only")
        states, tops, sets = partial
        if not states.height:
            return
        states = self._coded(states)
        codes = states["originalId"].to_numpy()
        self.rows += int(states["_rows"].sum())
        np.maximum.at(self._latest, codes, _instants(states, "_latest"))
        np.minimum.at(self._earliest, codes, _instants(states, "_earliest"))
        _scatter(self.reducer, self._agg, codes, states["_agg"].to_numpy())
        self._tops.add(self._coded(tops).cast(_TOPS), self._latest)  # type: ignore[arg-type]
        if sets.height:
            sets = self._coded(sets).cast(_SETS)  # type: ignore[arg-type]
            np.maximum.at(self._set_latest, sets["originalId"].to_numpy(), _instants(sets, _TS))
            self._sets.add(sets, self._set_latest)

    @property
    def records(self) -> int:
        """The records folded so far."""
        return self._latest.size

    @property
    def form(self) -> str:
        """``aggregates`` (every record an aggregate), ``compact`` (every row a compact row) or
        ``hybrid`` (the records with a pending ``set`` as compact rows, the rest aggregates)."""
        return "compact" if self.compact else "hybrid" if self.compact_rows else "aggregates"

    @property
    def has_sets(self) -> bool:
        """Whether a ``set`` is among the rows folded."""
        return not self._sets.empty

    def touched(self) -> pl.Series:
        """The records with pending rows."""
        return self._names_by_code().alias("originalId")

    # -- the end ---------------------------------------------------------------------------
    def _last_rows(self) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Per record, its last row and its last ``set`` row (see :func:`_last`)."""
        return _last(self._tops.frame(self._latest)), _last(self._sets.frame(self._set_latest), "value")

    def thresholds(self, marks: pl.DataFrame) -> pl.DataFrame:
        """Per record touched (as record ids), against its applied ``marks``: the threshold
        ``_tTs, _tId`` after which rows count (all rows where it is null) and the applied maximum
        ``maxTs, maxId``: what :func:`after_threshold` needs in the second round."""
        return self._thresholds(self._table(*self._last_rows(), self._coded(marks)))

    def _thresholds(self, table: pl.DataFrame) -> pl.DataFrame:
        """:meth:`thresholds` of a :meth:`_table`."""
        return self._named(table.select("originalId", "_tTs", "_tId", "maxTs", "maxId"))

    def finish(self, current: pl.DataFrame, marks: pl.DataFrame, default: float, field: str,
               ids_of: IdsOf, after: After | None = None) -> StateOutcome:
        """Merge the states against ``current`` (``originalId, current``) and ``marks``
        (``originalId, setTs, setId, maxTs, maxId``) of the records touched; ``default`` is the
        value a missing record starts from. ``after`` gives the second round of partial states
        from the :meth:`thresholds` (:func:`after_threshold` of every piece, concatenated, and
        the late rows summed). Raises :class:`Restart` if the aggregate form cannot be exact
        (rows dated at or before a record's applied marks)."""
        tops, sets = self._last_rows()
        current, marks = self._coded(current), self._coded(marks)
        # ``tops`` and ``sets`` are each record's last row and last ``set`` already (the last row
        # of all sorts at or after the last set): what :func:`new_marks` would reduce them to.
        new = merged_marks(tops.rename({_TS: "_maxTs", _ID: "_maxId"}),
                           sets.select("originalId", pl.col(_TS).alias("_setTs"), pl.col(_ID).alias("_setId")), marks,
                           field, names=self._names_by_code())
        table = self._table(tops, sets, marks)
        default_fold = self.reducer == "default"
        if after is not None:
            second, late = after(self._thresholds(table))
            agg, sums = np.full(self._latest.size, _START[self.reducer]), self._coded(second)
            _scatter(self.reducer, agg, sums["originalId"].to_numpy(), sums["_agg"].to_numpy())
        elif self.compact:
            agg, late = self._fold_compact(table, ids_of)
        else:
            # A held record's rows before it was held count here, its compact rows in the end.
            earliest = np.where(self._held, self._held_earliest, self._earliest)
            if marks.height and (earliest[marks["originalId"].to_numpy()] <= _instants(marks, "maxTs")).any():
                raise Restart  # rows dated at or before the applied ones: only rows tell how late
            agg, late = self._agg, 0
            if self.compact_rows:  # the records held as compact rows (see :meth:`_hold`)
                compact_agg, late = self._fold_compact(table, ids_of)
                agg = np.where(self._held, compact_agg, self._agg)
        kept = table.join(tops.rename({_TS: "_topTs", _ID: "_topId"}), on="originalId")
        if default_fold:  # a record whose rows all sort before its applied set is left as it is
            kept = kept.filter(~before("_topTs", "_topId", "setTs", "setId"))
        start = pl.lit(default, pl.Float64)
        values = kept.join(current, on="originalId", how="left").select(
            "originalId",
            _COMBINE[self.reducer](pl.coalesce("_base", "current", start) if default_fold
                                   else pl.col("current").fill_null(start),
                                   pl.lit(pl.Series(agg)).gather(pl.col("originalId"))).alias("value"))
        late_sets = table.filter(pl.col("_lateSet") & default_fold).select(
            "originalId", pl.col("_sTs").alias("_ts"), pl.col("_sId").alias("_id"))
        return StateOutcome(self._named(values), new, late, self._named(late_sets))

    def _table(self, tops: pl.DataFrame, sets: pl.DataFrame, marks: pl.DataFrame) -> pl.DataFrame:
        """Per record (a code): the threshold (the set whose value stands: the pending last set,
        unless the applied set sorts after it) and the applied maximum, for late rows."""
        table = tops.select("originalId").join(sets.rename({_TS: "_sTs", _ID: "_sId", "value": "_sVal"}),
                                               on="originalId", how="left").join(marks, on="originalId", how="left")
        wins = pl.col("_sTs").is_not_null() & (pl.col("setTs").is_null() | ~before("_sTs", "_sId", "setTs", "setId"))
        default_fold = self.reducer == "default"
        table = table.with_columns(
            pl.when(wins & default_fold).then(pl.col("_sTs")).otherwise(pl.col("setTs") if default_fold else None)
            .alias("_tTs"),
            pl.when(wins & default_fold).then(pl.col("_sId")).otherwise(pl.col("setId") if default_fold else None)
            .alias("_tId"),
            pl.when(wins).then(pl.col("_sVal")).otherwise(None).alias("_base"),
            (wins & before("_sTs", "_sId", "maxTs", "maxId")).alias("_lateSet"))
        return table

    def _fold_compact(self, table: pl.DataFrame, ids_of: IdsOf) -> tuple[np.ndarray, int]:
        """(the aggregate per code, the late rows) of the compact rows against ``table``'s
        thresholds and applied maxima."""
        agg = np.full(self._latest.size, _START[self.reducer])
        threshold = np.full(self._latest.size, _NONE, np.int64)
        latest_applied = np.full(self._latest.size, _NONE, np.int64)
        codes = table["originalId"].to_numpy()
        threshold[codes], latest_applied[codes] = _instants(table, "_tTs"), _instants(table, "maxTs")
        late = 0
        exact = list(self._exact)
        marked = bool((latest_applied != _NONE).any())
        for k, ts, v, is_set, objects, positions in self._parts:  # chunk by chunk: no copy of all rows at once
            at = threshold[k]
            # Most rows sort clear of both marks of their record and need no id; a row at its
            # record's threshold or applied maximum needs its id (a set never ties with itself:
            # its own contribution is nil).
            tie = (ts == at) & ~is_set
            if marked:
                applied_max = latest_applied[k]
                tie |= ts == applied_max
                late += int(np.count_nonzero((ts < applied_max) & ~tie))
            counts = ~tie & (ts > at)
            if self.reducer == "default":
                counts &= ~is_set
            if self.reducer in ("default", "sum"):
                agg += np.bincount(k, weights=np.where(counts, v, 0.0), minlength=agg.size)
            else:
                counted = np.flatnonzero(counts)
                _scatter(self.reducer, agg, k.take(counted), v.take(counted))
            if tie.any():  # the few rows whose order at their instant is decided by the id
                ties = pl.DataFrame({"originalId": k[tie], _TS: ts[tie], "_v": v[tie], "_set": is_set[tie],
                                     "_object": objects[tie], "_row": positions[tie]}).with_columns(
                    pl.col(_TS).cast(_UTC))
                found = ties.join(ids_of(ties.select("_object", "_row")), on=["_object", "_row"], how="left")
                if found[_ID].null_count():
                    raise RuntimeError("a pending row's id could not be read again; consolidate again")
                exact.append(found.drop("_object", "_row"))
        if exact:
            sums, late_exact = _after(pl.concat([e.select("originalId", _TS, _ID, "_v", "_set") for e in exact],
                                                how="vertical"), table, self.reducer)
            _scatter(self.reducer, agg, sums["originalId"].to_numpy(), sums["_agg"].to_numpy())
            late += late_exact
        return agg, late
