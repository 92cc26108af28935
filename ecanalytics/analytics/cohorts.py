"""Cohort keys and rollups of one managed field, computed by DuckDB from the transaction history.

Periods and their keys, all in the plugin's time zone:

======= ================== =========================================
hour    ``2026-11-27T14``  local hour
day     ``2026-11-27``     ``cohortDate``
week    ``2026-W48``       ISO week (``%G-W%V``), Monday to Sunday
month   ``2026-11``        ``cohortMonth``
======= ================== =========================================

``start`` and ``end`` are inclusive. Each may be a key of the period, an ISO date or datetime
string, a ``date``, or a ``datetime`` (naive ones are read in the plugin's zone). Values are signed:
a ``sub`` counts as ``-value``. Queries filter on ``cohortDate`` first, so only the partitions
that can hold the cohorts are read. Days that ``gc`` archived are read from the archive (see
:class:`~ecanalytics.analytics.engine.SqlEngine`).

A key or date that does not exist (``2026-13-01``, ``2026-02-30``, ``2026-W60``, hour ``24``), or a
range that reaches outside the calendar (years 1 to 9999 in the plugin's zone), raises
:class:`~ecanalytics.errors.InvalidValueError`: it never silently matches nothing. Rollups list at
most :data:`MAX_COHORTS` cohorts when they fill gaps (``get_last_n``'s ``n`` has the same bound).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal, get_args
from zoneinfo import ZoneInfo

import polars as pl

from ecanalytics import _runtime
from ecanalytics.analytics.engine import day_view
from ecanalytics.errors import InvalidValueError, ValidationError
from ecanalytics.storage.paths import describe
from ecanalytics.types import is_positive_int

if TYPE_CHECKING:
    from ecanalytics.analytics.engine import SqlEngine

Period = Literal["hour", "day", "week", "month"]
Metric = Literal["transactionCount", "totalValue"]
# \Z, not $ (which also matches before a final newline); ASCII digits only.
_KEY_FORMATS = {
    "hour": re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}\Z"),
    "day": re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z"),
    "week": re.compile(r"^[0-9]{4}-W[0-9]{2}\Z"),
    "month": re.compile(r"^[0-9]{4}-[0-9]{2}\Z"),
}
MAX_COHORTS = 1_000_000  # about 114 years of hours; filling more would take minutes
_AVERAGE_DAYS = {"hour": 1 / 24, "day": 1, "week": 7, "month": 30.4}
_SIGNED = "CASE WHEN operation = 'sub' THEN -value ELSE value END"


@contextmanager
def _calendar(what: str) -> Iterator[None]:
    """Turn a date computation that leaves the calendar (OverflowError) into a typed error."""
    try:
        yield
    except OverflowError as exc:
        raise InvalidValueError(
            f"{what} would reach outside the calendar (years 1 to 9999 in the plugin's zone); pass dates inside it."
        ) from exc


def check_period(period: str) -> Period:
    if period not in get_args(Period):
        raise ValidationError(f"period must be one of {list(get_args(Period))}; got {describe(period)}.")
    return period  # type: ignore[return-value]


def key_sql(period: Period, tz: str) -> str:
    """SQL for the cohort key of each row of a transaction view."""
    local = f"timezone('{tz}', timestamp)"
    return {
        "hour": f"strftime({local}, '%Y-%m-%dT%H')",
        "day": "strftime(cohortDate, '%Y-%m-%d')",
        "week": f"strftime({local}, '%G-W%V')",
        "month": "cohortMonth",
    }[period]


def _key_of_datetime(period: Period, local: dt.datetime) -> str:
    if period == "hour":
        return local.strftime("%Y-%m-%dT%H")
    return _key_of_date(period, local.date())


def _key_of_date(period: Period, day: dt.date, *, end: bool = False) -> str:
    if period == "hour":
        return f"{day.isoformat()}T{'23' if end else '00'}"
    if period == "day":
        return day.isoformat()
    if period == "week":
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return day.isoformat()[:7]


def to_key(period: Period, value: Any, tz: str, *, end: bool = False) -> str:
    """The cohort key of ``value`` for ``period`` (see the module docstring for accepted values)."""
    if isinstance(value, str):
        try:
            if _KEY_FORMATS[period].match(value):
                date_bounds(period, value, value)  # the key must name a real cohort: not 2026-13-01
                if period == "hour" and not 0 <= int(value[11:]) <= 23:
                    raise ValueError("hour must be in 0..23")
                return value
            value = dt.datetime.fromisoformat(value) if "T" in value or " " in value else dt.date.fromisoformat(value)
        except (ValueError, OverflowError) as exc:
            raise InvalidValueError(
                f"Cannot read {describe(value)} as a {period} cohort, a date or a datetime ({exc}); "
                "pass an existing date such as '2026-11-27'."
            ) from exc
    if isinstance(value, dt.datetime):
        with _calendar(f"{value.isoformat()}"):
            local = value.replace(tzinfo=ZoneInfo(tz)) if value.tzinfo is None else value.astimezone(ZoneInfo(tz))
            return _key_of_datetime(period, local)
    if isinstance(value, dt.date):
        return _key_of_date(period, value, end=end)
    raise InvalidValueError(f"Expected a cohort key, date or datetime; got {type(value).__name__} {describe(value)}.")


def date_bounds(period: Period, start_key: str, end_key: str) -> tuple[dt.date, dt.date]:
    """The cohortDate range that holds every cohort from ``start_key`` to ``end_key``."""
    def first(key: str) -> dt.date:
        if period == "week":
            year, week = key.split("-W")
            return dt.date.fromisocalendar(int(year), int(week), 1)
        if period == "month":
            return dt.date.fromisoformat(key + "-01")
        return dt.date.fromisoformat(key[:10])

    def last(key: str) -> dt.date:
        if period == "week":
            return first(key) + dt.timedelta(days=6)
        if period == "month":
            nxt = first(key).replace(day=28) + dt.timedelta(days=4)
            return nxt - dt.timedelta(days=nxt.day)
        return dt.date.fromisoformat(key[:10])

    return first(start_key), last(end_key)


def keys_between(period: Period, start_key: str, end_key: str, tz: str) -> list[str]:
    """Every cohort key from ``start_key`` to ``end_key`` inclusive, in order."""
    lo, hi = date_bounds(period, start_key, end_key)
    keys: list[str] = []
    if period == "hour":
        zone = ZoneInfo(tz)
        cursor = dt.datetime.combine(lo, dt.time(), zone).astimezone(dt.UTC)
        stop = dt.datetime.combine(hi + dt.timedelta(days=1), dt.time(), zone).astimezone(dt.UTC)
        while cursor < stop:
            key = cursor.astimezone(zone).strftime("%Y-%m-%dT%H")
            if (not keys or keys[-1] != key) and start_key <= key <= end_key:
                keys.append(key)
            cursor += dt.timedelta(hours=1)
        return keys
    day = lo
    while day <= hi:
        key = _key_of_date(period, day)
        if not keys or keys[-1] != key:
            keys.append(key)
        day += dt.timedelta(days=1)
    return keys


def shift(period: Period, key: str, steps: int, tz: str) -> str:
    """The key ``steps`` periods before (negative) or after ``key``."""
    if period == "hour":
        zone = ZoneInfo(tz)
        local = dt.datetime.strptime(key, "%Y-%m-%dT%H").replace(tzinfo=zone)
        return (local.astimezone(dt.UTC) + dt.timedelta(hours=steps)).astimezone(zone).strftime("%Y-%m-%dT%H")
    if period == "day":
        return (dt.date.fromisoformat(key) + dt.timedelta(days=steps)).isoformat()
    if period == "week":
        return _key_of_date("week", date_bounds("week", key, key)[0] + dt.timedelta(weeks=steps))
    year, month = map(int, key.split("-"))
    index = year * 12 + (month - 1) + steps
    if not 1 <= index // 12 <= 9999:
        raise OverflowError("month out of range")
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


# The one vocabulary of rollups and SQL reports: camelCase, counts end in ``Count``, the signed sum
# is ``totalValue`` (``get_cohort_stats``, ``get_top_records`` and the reports say the same).
ROLLUP_SCHEMA: dict[str, pl.DataType] = {
    "cohort": pl.String(), "transactionCount": pl.Int64(), "totalValue": pl.Float64(), "avgValue": pl.Float64(),
    "minValue": pl.Float64(), "maxValue": pl.Float64(), "recordCount": pl.Int64(),
    **{f"{op}Count": pl.Int64() for op in ("set", "add", "sub")},
    **{f"{op}Sum": pl.Float64() for op in ("set", "add", "sub")},
}



def _days(lo: dt.date, hi: dt.date) -> set[str]:
    """Every cohort day from ``lo`` to ``hi`` (ISO): what a rollup's views need to name."""
    return {(lo + dt.timedelta(days=n)).isoformat() for n in range((hi - lo).days + 1)}

class Cohorts:
    """Rollups of one transaction dataset; reached through the plugin's ``get_*`` methods."""

    def __init__(self, engine: SqlEngine, dataset: str, tz: str) -> None:
        self.engine = engine
        self.dataset = dataset
        self.tz = tz

    def stats(self, date: Any) -> dict[str, Any]:
        day = to_key("day", date, self.tz)
        row = self.engine.frame(
            f"""SELECT count(*), count(*) FILTER (operation = 'set'), count(*) FILTER (operation = 'add'),
                       count(*) FILTER (operation = 'sub'), coalesce(sum({_SIGNED}), 0)
                FROM "{day_view(self.dataset)}" WHERE cohortDate = $day::DATE""",
            {"day": day}, days={day},
        ).row(0)
        total = row[4] if isinstance(row[4], Decimal) else float(row[4])  # exact for decimal fields
        return {"date": day, "transactionCount": row[0], "byOperation": {"set": row[1], "add": row[2], "sub": row[3]},
                "totalValue": total}

    def analytics(self, period: str, start: Any, end: Any, record_id: str | None, fill_gaps: bool) -> pl.DataFrame:
        p = check_period(period)
        start_key, end_key = to_key(p, start, self.tz), to_key(p, end, self.tz, end=True)
        if start_key > end_key:
            raise InvalidValueError(f"start {start_key} is after end {end_key}; swap them.")
        with _calendar(f"The range {start_key} to {end_key}"):
            lo, hi = date_bounds(p, start_key, end_key)
        if fill_gaps and ((hi - lo).days + 1) / _AVERAGE_DAYS[p] > MAX_COHORTS:
            raise InvalidValueError(
                f"Filling the gaps from {start_key} to {end_key} would list more than {MAX_COHORTS:,} {p} cohorts; "
                "narrow the range, use a longer period, or pass fill_gaps=False."
            )
        per_op = ", ".join(
            f"count(*) FILTER (operation = '{op}') AS {op}Count, coalesce(sum(sv) FILTER (operation = '{op}'), 0) AS {op}Sum"
            for op in ("set", "add", "sub")
        )
        df: pl.DataFrame = self.engine.frame(
            f"""SELECT cohort, count(*) AS transactionCount, sum(sv) AS totalValue, avg(sv) AS avgValue,
                       min(sv) AS minValue, max(sv) AS maxValue,
                       count(DISTINCT originalId) AS recordCount, {per_op}
                FROM (SELECT {key_sql(p, self.tz)} AS cohort, originalId, operation, {_SIGNED} AS sv
                      FROM "{day_view(self.dataset)}"
                      WHERE cohortDate BETWEEN $lo::DATE AND $hi::DATE
                        AND ($record_id IS NULL OR originalId = $record_id))
                WHERE cohort BETWEEN $start_key AND $end_key
                GROUP BY cohort ORDER BY cohort""",
            {"lo": lo.isoformat(), "hi": hi.isoformat(), "record_id": record_id, "start_key": start_key, "end_key": end_key},
            days=_days(lo, hi),
        )
        # Counts are integers; sums stay DOUBLE, or exact DECIMAL for decimal(p,s) fields.
        df = df.with_columns([pl.col(c).cast(t) for c, t in ROLLUP_SCHEMA.items() if t == pl.Int64 or c == "cohort"])
        df = df.select(list(ROLLUP_SCHEMA))
        if not fill_gaps:
            return df
        with _calendar(f"The range {start_key} to {end_key}"):
            keys = pl.DataFrame({"cohort": keys_between(p, start_key, end_key, self.tz)})
        zeros = {c: pl.col(c).fill_null(0) for c in ROLLUP_SCHEMA if c not in ("cohort", "avgValue", "minValue", "maxValue")}
        return keys.join(df, on="cohort", how="left").with_columns(**zeros).select(list(ROLLUP_SCHEMA))

    def top_records(self, period: str, date: Any, metric: str, limit: int) -> pl.DataFrame:
        p = check_period(period)
        if metric not in get_args(Metric):
            raise ValidationError(f"metric must be one of {list(get_args(Metric))}; got {describe(metric)}.")
        if not is_positive_int(limit):
            raise InvalidValueError(f"limit must be a positive integer (at most 2**63 - 1); got {describe(limit)}.")
        key = to_key(p, date, self.tz)
        with _calendar(f"Cohort {key}"):
            lo, hi = date_bounds(p, key, key)
        top: pl.DataFrame = self.engine.frame(
            f"""SELECT originalId, count(*) AS transactionCount, sum({_SIGNED}) AS totalValue
                FROM "{day_view(self.dataset)}"
                WHERE cohortDate BETWEEN $lo::DATE AND $hi::DATE AND {key_sql(p, self.tz)} = $key
                GROUP BY originalId ORDER BY {metric} DESC, originalId LIMIT {limit}""",
            {"lo": lo.isoformat(), "hi": hi.isoformat(), "key": key}, days=_days(lo, hi),
        )
        return top

    def last_n(self, period: str, n: int, fill_gaps: bool, now: dt.datetime | None = None) -> pl.DataFrame:
        p = check_period(period)
        if not is_positive_int(n, MAX_COHORTS):
            raise InvalidValueError(f"n must be a positive integer up to {MAX_COHORTS:,}; got {describe(n)}.")
        end_key = to_key(p, now or _runtime.now(), self.tz)
        with _calendar(f"The last {n} {p} cohorts"):
            start_key = shift(p, end_key, -(n - 1), self.tz)
        rollup: pl.DataFrame = self.analytics(p, start_key, end_key, None, fill_gaps)
        return rollup
