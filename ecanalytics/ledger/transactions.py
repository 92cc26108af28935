"""Transaction rows: validation, cohorts, writing objects, and finding the pending ones.

A transaction object is written once, under a unique time-sortable name, inside its Hive partition
``cohortMonth=…/cohortDate=…``. *Before* the object, the writer creates an empty inbox marker
``_inbox/{cohortDate}.{file_id}``. The consolidator lists only the inbox, so finding pending work
costs O(pending objects), never O(history); after a commit it deletes the markers it consumed.
Writing the marker first means an object can never exist unannounced: a writer that dies between
the two leaves only a marker without an object, which the consolidator skips. It never deletes
such a marker: no age proves that the writer is dead rather than paused, and a writer that wakes
up after any grace would write its object under a marker that is gone, and the write would be
lost. An orphan marker costs one failed GET per consolidation; ``inspect`` counts them.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import numbers
from collections.abc import Collection, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from ecanalytics import _runtime
from ecanalytics.errors import (
    CorruptObjectError,
    InvalidTimezoneError,
    InvalidValueError,
    MissingObjectError,
    SchemaError,
)
from ecanalytics.ledger.keys import AUTO_ID_PREFIX
from ecanalytics.ledger.schema import Attribute, to_decimal
from ecanalytics.storage import Store, decode_parquet
from ecanalytics.storage import paths as P
from ecanalytics.types import OPERATIONS

TX_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(),
    "originalId": pl.String(),
    "field": pl.String(),
    "value": pl.Float64(),
    "operation": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"),
    "source": pl.String(),
}
COHORT_SCHEMA: dict[str, pl.DataType] = {"cohortDate": pl.Date(), "cohortMonth": pl.String()}


def check_timezone(tz: object) -> str:
    """Validate an IANA zone name (``'America/Sao_Paulo'``); raise :class:`InvalidTimezoneError`.

    The zone must be known to Python *and* to Polars, which computes the cohorts: files of the
    zoneinfo folder that are not IANA zones (``localtime``, ``posixrules``, ``right/UTC``) fail.
    """
    if not isinstance(tz, str) or not tz:
        raise InvalidTimezoneError(f"Invalid time zone {P.describe(tz)}: pass an IANA name such as 'UTC'.")
    try:
        ZoneInfo(tz)
        pl.Series([datetime(2000, 1, 1, tzinfo=timezone.utc)]).dt.convert_time_zone(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidTimezoneError(
            f"Unknown time zone {P.describe(tz)}: pass an IANA name such as 'UTC' or 'America/Sao_Paulo'."
        ) from exc
    return tz


def check_amount(value: object, attr: Attribute | None = None) -> float | decimal.Decimal:
    """A finite number (int, float, Decimal, numpy scalar); bools, strings, NaN and infinity fail.
    For a ``decimal(p,s)`` field the amount becomes an exact ``Decimal`` and may not have more
    than ``s`` decimal places. For a ``number`` field it must fit a 64-bit float: an int such as
    ``10**400`` is rejected, never turned into infinity; so are signaling NaN Decimals."""
    if (type(value) is float or type(value) is int) and (attr is None or attr.kind != "decimal"):
        try:  # the common case, without the ABC checks below (every add comes through here)
            number = float(value)
        except OverflowError:
            pass
        else:
            if math.isfinite(number):
                return number
    if attr is not None and attr.kind == "decimal":
        try:
            return to_decimal(value, attr.precision, attr.scale, "The amount")
        except SchemaError as exc:
            raise InvalidValueError(str(exc)) from exc
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise InvalidValueError(
            f"Amounts must be finite numbers; got {type(value).__name__} {P.describe(value)}. Convert it first, "
            "e.g. float('12.5')."
        )
    try:
        # float() of a signaling NaN raises; of a huge int, OverflowError.
        number = float("nan") if isinstance(value, decimal.Decimal) and not value.is_finite() else float(value)
    except (OverflowError, ValueError, TypeError) as exc:
        raise InvalidValueError(
            f"Amounts must be finite 64-bit floats; {P.describe(value)} does not fit one. Nothing was written: "
            "pass a smaller number, or manage a decimal(p,s) attribute for exact large amounts."
        ) from exc
    if not math.isfinite(number):
        raise InvalidValueError(
            f"Amounts must be finite; got {P.describe(value)}. Nothing was written: pass a real number "
            "(check the upstream computation that produced it)."
        )
    return number


def check_timestamp(ts: object) -> datetime:
    """A timezone-aware datetime converted to UTC; naive datetimes are rejected as ambiguous.

    The instant must lie from 0001-01-02 to 9999-12-30 UTC, so that its cohort day exists in
    every time zone (UTC-12 to UTC+14); ``datetime(1, 1, 1, tzinfo=+14:00)``, which is before
    year 1 in UTC, fails.
    """
    if not isinstance(ts, datetime):
        raise InvalidValueError(f"timestamp must be a datetime; got {type(ts).__name__} {P.describe(ts)}.")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidValueError(
            "timestamp must be timezone-aware (e.g. datetime(..., tzinfo=timezone.utc)); "
            "a naive datetime is ambiguous."
        )
    lowest, highest = datetime(1, 1, 2, tzinfo=timezone.utc), datetime(9999, 12, 30, 23, 59, 59, 999999, tzinfo=timezone.utc)
    try:
        utc = ts.astimezone(timezone.utc)
    except OverflowError:  # before year 1 or after 9999 once in UTC
        utc = None
    if utc is None or not lowest <= utc <= highest:
        raise InvalidValueError(
            f"timestamp {ts.isoformat()} is out of range: pass an instant from 0001-01-02 to 9999-12-30 "
            "UTC (its cohort day must exist in every time zone)."
        )
    return utc


def cohort_columns(tz: str) -> list[pl.Expr]:
    """``cohortDate`` (Date) and ``cohortMonth`` (YYYY-MM) of each row's own instant in ``tz``."""
    local = pl.col("timestamp").dt.convert_time_zone(tz)
    return [local.dt.date().alias("cohortDate"), local.dt.strftime("%Y-%m").alias("cohortMonth")]


def tx_schema(value_dtype: pl.DataType | None = None) -> dict[str, pl.DataType]:
    """The transaction columns; ``value`` is Float64, or the field's Decimal(p, s)."""
    return {**TX_SCHEMA, "value": value_dtype or pl.Float64()}


def pending_schema(value_dtype: pl.DataType | None = None) -> dict[str, pl.DataType]:
    """Transaction rows as consolidation carries them: the columns, then ``_object`` (the object's
    index among the keys read) and ``_row`` (the row's position in its object); both are null for
    rows held back by an earlier run."""
    return {**tx_schema(value_dtype), "_object": pl.UInt32(), "_row": pl.UInt32()}


def held_rows(held: pl.DataFrame, value_dtype: pl.DataType | None = None) -> pl.DataFrame:
    """Held rows (transaction columns plus ``_reason``) in :func:`pending_schema` form."""
    return held.drop("_reason").with_columns(pl.lit(None, pl.UInt32).alias("_object"),
                                             pl.lit(None, pl.UInt32).alias("_row")).cast(pending_schema(value_dtype))  # type: ignore[arg-type]


_EPOCH, _MICROSECOND = datetime(1970, 1, 1, tzinfo=timezone.utc), timedelta(microseconds=1)


def tx_frame(rows: Sequence[dict[str, Any]], value_dtype: pl.DataType | None = None) -> pl.DataFrame:
    """Transaction rows (dicts with the columns of :func:`tx_schema`) as a frame.

    Built column by column, with each aware timestamp turned into epoch microseconds here: Polars
    converts aware ``datetime`` objects one by one in Python (about 1.4 us a row, holding the
    GIL that writer threads share; 0.2 us this way)."""
    schema = tx_schema(value_dtype)
    try:
        micros = [(row["timestamp"] - _EPOCH) // _MICROSECOND for row in rows]
    except (TypeError, KeyError):  # a naive or missing timestamp: Polars' own conversion decides
        return pl.DataFrame(list(rows), schema=schema, orient="row")
    columns = {name: micros if name == "timestamp" else [row[name] for row in rows] for name in schema}
    return pl.DataFrame(columns, schema={**schema, "timestamp": pl.Int64()}).with_columns(
        pl.col("timestamp").cast(schema["timestamp"]))


@dataclass(frozen=True)
class PlannedObject:
    """One transaction object to write: its key, its inbox marker and its rows (and, once
    written, its size in bytes, which the manifest keeps)."""

    key: str
    marker: str
    rows: pl.DataFrame
    size: int | None = dataclasses.field(default=None, compare=False)

    def write(self, store: Store) -> None:
        """Marker first, then the object. Safe to repeat: the names are fixed, so a retry after an
        unknown outcome rewrites the same object instead of adding a second copy."""
        store.write(self.marker, b"")
        size = store.write_parquet(self.key, self.rows)
        object.__setattr__(self, "size", size if type(size) is int and size > 0 else None)


def plan_objects(dataset: str, tz: str, txs: pl.DataFrame, max_rows: int | None = None) -> list[PlannedObject]:
    """Split ``txs`` into one object per cohort day (and per ``max_rows`` rows), each under a fresh
    unique name, rows sorted by ``(timestamp, id)``."""
    if txs.is_empty():
        return []
    with_dates = txs.with_columns(cohort_columns(tz)[0])
    planned = []
    for (day,), part in with_dates.group_by("cohortDate", maintain_order=True):
        rows = part.drop("cohortDate").sort("timestamp", "id")
        step = max_rows or rows.height
        for offset in range(0, rows.height, step):
            cohort_date, file_id = str(day), P.new_file_id()
            chunk = rows.slice(offset, step)
            auto = bool(chunk.select(pl.col("id").str.starts_with(AUTO_ID_PREFIX).all()).item())
            planned.append(PlannedObject(P.tx_object(dataset, cohort_date, file_id),
                                         P.inbox_marker(dataset, cohort_date, file_id, auto=auto), chunk))
    return planned


def write_transactions(store: Store, dataset: str, tz: str, txs: pl.DataFrame) -> list[PlannedObject]:
    """Write ``txs`` as one object per cohort day (marker first, then the object)."""
    planned = plan_objects(dataset, tz, txs)
    for obj in planned:
        obj.write(store)
    return planned


@dataclass(frozen=True)
class Inbox:
    """What one LIST of a dataset's inbox says: object key -> marker path, and the markers' ages
    as the store records them (epoch seconds, or None)."""

    markers: dict[str, str]
    times: dict[str, float | None]

    @property
    def auto(self) -> frozenset[str]:
        """Keys whose marker says every id in the object is generated (no deduplication needed)."""
        return frozenset(k for k, m in self.markers.items() if P.marker_is_auto(m))

    @classmethod
    def scan(cls, store: Store, dataset: str) -> Inbox:
        markers: dict[str, str] = {}
        times: dict[str, float | None] = {}
        inbox = P.inbox_dir(dataset)
        for name, mtime in store.listdir_times(inbox).items():
            target = P.marker_to_object(dataset, name)
            if target is not None:
                markers[target[0]] = f"{inbox}/{name}"
                times[target[0]] = mtime
        return cls(markers, times)


def read_objects(store: Store, keys: Sequence[str], *, value_dtype: pl.DataType | None = None,
                 field: str | None = None, start: int = 0, sizes: dict[str, int] | None = None,
                 pool: Executor | None = None) -> tuple[pl.DataFrame, list[str], list[str]]:
    """Read transaction objects. Returns (rows with ``_object``, the index of the row's object in
    ``keys``, plus ``start`` when reading in chunks, and ``_row``, the row's position in its
    object; the keys read; the keys whose object does not exist (yet)). ``sizes`` receives the
    size of each object read; ``pool`` decodes them (else a pool of this call's own).

    ``field`` makes an object whose rows name another field a :class:`CorruptObjectError`.
    """
    blobs = store.read_many(keys)
    read = [k for k in keys if blobs[k] is not None]
    missing = [k for k in keys if blobs[k] is None]
    if sizes is not None:
        sizes.update({k: len(blobs[k] or b"") for k in read})

    def decode(item: tuple[int, str]) -> pl.DataFrame:
        index, key = item
        blob = blobs[key]
        assert blob is not None
        # ``_object`` is the object's rank in sorted key order: a cheap, deterministic tie-break;
        # ``_row`` the row's position in it: what names an occurrence the key rule drops.
        return _conform(decode_parquet(blob, store.url(key)), store.url(key)).with_columns(
            pl.lit(index, pl.UInt32).alias("_object"), pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"))

    # The index is the key's position among ``keys`` (plus ``start``), not among the keys read:
    # a missing object (a writer between marker and object) must not shift the others'.
    items = [(start + i, k) for i, k in enumerate(keys) if blobs[k] is not None]
    # Polars releases the GIL while decoding, so a few threads decode several objects at once.
    frames = list(pool.map(decode, items)) if pool is not None else _runtime.each(decode, items, 8)
    if not frames:
        return pl.DataFrame(schema=pending_schema(value_dtype)), read, missing
    rows = pl.concat(frames, how="vertical")
    # The rows are checked all at once (one pass, not one per object); only a chunk that fails
    # is checked again object by object, to name the object.
    if not rows.select(_valid_rows(rows.schema, field).all()).item():
        for (_index, key), frame in zip(items, frames, strict=True):
            _validate(frame, store.url(key), field)
    return rows, read, missing


def _valid_rows(schema: pl.Schema, field: str | None) -> pl.Expr:
    """True for a row that a transaction object may hold (see :func:`_validate`)."""
    finite = pl.col("value").is_not_null() if isinstance(schema["value"], pl.Decimal) else pl.col("value").is_finite()
    # Three equalities, not ``is_in``: on short strings they take half its time (8.9 against 16.1 ms
    # for 4x10^6 rows).
    known = pl.any_horizontal(*(pl.col("operation") == op for op in OPERATIONS))
    ok = (known & finite & pl.col("id").is_not_null()
          & pl.col("originalId").is_not_null() & pl.col("timestamp").is_not_null())
    if field is not None:  # a null field is not another field (as :func:`_validate` has it)
        ok = ok & (pl.col("field") == field).fill_null(True)
    return ok.fill_null(False)


def _conform(df: pl.DataFrame, where: str) -> pl.DataFrame:
    """``df`` with the transaction columns in their types; a :class:`CorruptObjectError` naming
    ``where`` if a column is missing or cannot be cast."""
    missing = [c for c in TX_SCHEMA if c not in df.columns]
    if missing:
        raise CorruptObjectError(f"{where} lacks transaction columns {missing}; nothing from it was applied.")
    exact = isinstance(df.schema["value"], pl.Decimal)  # a decimal(p,s) field keeps its exact type
    schema = tx_schema(df.schema["value"] if exact else None)
    try:
        if dict(df.schema) != schema:
            df = df.select([pl.col(c).cast(t, strict=True) for c, t in schema.items()])
    except Exception as exc:
        raise CorruptObjectError(f"{where} has columns of the wrong type ({exc}); nothing was applied.") from exc
    return df


def _validate(df: pl.DataFrame, where: str, field: str | None = None) -> pl.DataFrame:
    """:func:`_conform`, then every row checked: a :class:`CorruptObjectError` naming ``where``
    for an invalid row or (with ``field``) a row of another field."""
    df = _conform(df, where)
    bad = df.filter(~_valid_rows(df.schema, None))
    if bad.height:
        raise CorruptObjectError(
            f"{where} holds {bad.height} invalid transaction row(s) (unknown operation, missing or non-finite "
            "value, or missing id); nothing from it was applied. Move the object out of the dataset to continue."
        )
    if field is not None and df.height and (df["field"] != field).any():
        other = df.filter(pl.col("field") != field)["field"][0]
        raise CorruptObjectError(
            f"{where} holds rows of field {other!r} inside the dataset of {field!r}; nothing from it was applied. "
            "Move the object to the right dataset or out of the inbox to continue."
        )
    return df


def history_keys(store: Store, dataset: str, prefixes: Sequence[str] | None = None) -> list[str]:
    """Every transaction object of ``dataset`` (or under the given partition prefixes): a listing
    of the history, for queries and maintenance, never for consolidation."""
    roots = list(prefixes) if prefixes is not None else [dataset]
    return sorted({k for p in roots for k in store.find(p, ".parquet") if "/_" not in k[len(dataset):]})


def read_history(store: Store, keys: Sequence[str], value_dtype: pl.DataType | None = None, *,
                 pending: Collection[str] = ()) -> pl.DataFrame:
    """Transactions of ``keys`` with ``cohortDate``, ``cohortMonth`` (from the path) and ``_object``.

    ``keys`` are applied objects (the manifest names them) or ``pending`` ones (an inbox marker
    names them). A missing applied object raises :class:`MissingObjectError`: an incomplete
    history must never read as fewer rows. A missing pending one has no rows yet."""
    blobs = store.read_many(keys)
    frames = []
    for key, blob in blobs.items():
        if blob is None and key in pending:
            continue  # a marker whose writer has not written (or never wrote) the object: no rows yet
        if blob is None:
            raise MissingObjectError(
                f"{store.url(key)} is named by the committed manifest but is missing: the history is incomplete, "
                "so nothing was read or committed. Restore the object (from a backup or the bucket's versions), "
                "then check the root with `ecanalytics inspect --verify`.", store.url(key))
        day = key.split("cohortDate=", 1)[1].split("/", 1)[0]
        frames.append(_validate(decode_parquet(blob, store.url(key)), store.url(key)).with_columns(
            pl.lit(datetime.fromisoformat(day).date()).alias("cohortDate"),
            pl.lit(day[:7]).alias("cohortMonth"),
            pl.lit(key).alias("_object"),
            pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"),
        ))
    if not frames:
        return pl.DataFrame(schema={**tx_schema(value_dtype), **COHORT_SCHEMA, "_object": pl.String(), "_row": pl.UInt32()})
    return pl.concat(frames, how="vertical")
