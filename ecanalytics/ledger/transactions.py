"""Transaction rows: validation, cohorts, writing objects, and finding the pending ones.

A transaction object is written once, under a unique time-sortable name, inside its Hive partition
``cohortMonth=…/cohortDate=…``. *Before* the object, the writer creates an empty inbox marker
``_inbox/{cohortDate}.{file_id}``. The consolidator lists only the inbox, so finding pending work
costs O(pending objects), never O(history); after a commit it deletes the markers it consumed.
Writing the marker first means an object can never exist unannounced: a writer that dies between
the two leaves only a marker without an object, which the consolidator ignores and removes after
:data:`ORPHAN_MARKER_GRACE_S`.
"""

from __future__ import annotations

import decimal
import math
import numbers
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from ecanalytics.errors import CorruptObjectError, InvalidTimezoneError, InvalidValueError, SchemaError
from ecanalytics.ledger.schema import Attribute, to_decimal
from ecanalytics.storage import Store, decode_parquet
from ecanalytics.storage import paths as P
from ecanalytics.types import OPERATIONS

ORPHAN_MARKER_GRACE_S = 15 * 60
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
    """Validate an IANA zone name (``'America/Sao_Paulo'``); raise :class:`InvalidTimezoneError`."""
    if not isinstance(tz, str) or not tz:
        raise InvalidTimezoneError(f"Invalid time zone {tz!r}: pass an IANA name such as 'UTC'.")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidTimezoneError(
            f"Unknown time zone {tz!r}: pass an IANA name such as 'UTC' or 'America/Sao_Paulo'."
        ) from exc
    return tz


def check_amount(value: object, attr: Attribute | None = None) -> float | decimal.Decimal:
    """A finite number (int, float, Decimal, numpy scalar); bools, strings, NaN and infinity fail.
    For a ``decimal(p,s)`` field the amount becomes an exact ``Decimal`` and may not have more
    than ``s`` decimal places."""
    if attr is not None and attr.kind == "decimal":
        try:
            return to_decimal(value, attr.precision, attr.scale, "The amount")
        except SchemaError as exc:
            raise InvalidValueError(str(exc)) from exc
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
        raise InvalidValueError(
            f"Amounts must be finite numbers; got {type(value).__name__} {value!r}. Convert it first, "
            "e.g. float('12.5')."
        )
    number = float(value)
    if not math.isfinite(number):
        raise InvalidValueError(
            f"Amounts must be finite; got {value!r}. Nothing was written: pass a real number "
            "(check the upstream computation that produced it)."
        )
    return number


def check_timestamp(ts: object) -> datetime:
    """A timezone-aware datetime converted to UTC; naive datetimes are rejected as ambiguous."""
    if not isinstance(ts, datetime):
        raise InvalidValueError(f"timestamp must be a datetime; got {type(ts).__name__}.")
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise InvalidValueError(
            "timestamp must be timezone-aware (e.g. datetime(..., tzinfo=timezone.utc)); "
            "a naive datetime is ambiguous."
        )
    return ts.astimezone(timezone.utc)


def cohort_columns(tz: str) -> list[pl.Expr]:
    """``cohortDate`` (Date) and ``cohortMonth`` (YYYY-MM) of each row's own instant in ``tz``."""
    local = pl.col("timestamp").dt.convert_time_zone(tz)
    return [local.dt.date().alias("cohortDate"), local.dt.strftime("%Y-%m").alias("cohortMonth")]


def tx_schema(value_dtype: pl.DataType | None = None) -> dict[str, pl.DataType]:
    """The transaction columns; ``value`` is Float64, or the field's Decimal(p, s)."""
    return {**TX_SCHEMA, "value": value_dtype or pl.Float64()}


def tx_frame(rows: Sequence[dict[str, Any]], value_dtype: pl.DataType | None = None) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=tx_schema(value_dtype), orient="row")


@dataclass(frozen=True)
class WrittenObject:
    key: str
    marker: str
    rows: int


def write_transactions(store: Store, dataset: str, tz: str, txs: pl.DataFrame) -> list[WrittenObject]:
    """Write ``txs`` as one object per cohort day (marker first, then the object)."""
    if txs.is_empty():
        return []
    with_dates = txs.with_columns(cohort_columns(tz)[0])
    written = []
    for (day,), part in with_dates.group_by("cohortDate", maintain_order=True):
        cohort_date = str(day)
        file_id = P.new_file_id()
        marker = P.inbox_marker(dataset, cohort_date, file_id)
        key = P.tx_object(dataset, cohort_date, file_id)
        store.write(marker, b"")
        store.write_parquet(key, part.drop("cohortDate").sort("timestamp", "id"))
        written.append(WrittenObject(key, marker, part.height))
    return written


@dataclass(frozen=True)
class Inbox:
    """What the inbox of a dataset says: object key -> marker path, plus orphaned markers."""

    markers: dict[str, str]

    @classmethod
    def scan(cls, store: Store, dataset: str) -> Inbox:
        markers: dict[str, str] = {}
        inbox = P.inbox_dir(dataset)
        for name in store.listdir(inbox):
            target = P.marker_to_object(dataset, name)
            if target is not None:
                markers[target[0]] = f"{inbox}/{name}"
        return cls(markers)


def read_objects(store: Store, keys: Sequence[str], *, now_ns: int,
                 value_dtype: pl.DataType | None = None) -> tuple[pl.DataFrame, list[str], list[str]]:
    """Read transaction objects. Returns (rows with ``_object``, the index of the row's object in
    the sorted keys read; the keys read; orphaned keys).

    A missing object whose marker is older than the grace period is an orphan (its writer died
    between the marker and the object); a younger one is still being written and is skipped.
    """
    blobs = store.read_many(keys)
    read, orphans = [], []
    for key in keys:
        if blobs[key] is not None:
            read.append(key)
            continue
        file_id = key.rsplit("/", 1)[-1].removesuffix(".parquet")
        if now_ns - P.file_id_time_ns(file_id) > ORPHAN_MARKER_GRACE_S * 1_000_000_000:
            orphans.append(key)

    def decode(item: tuple[int, str]) -> pl.DataFrame:
        index, key = item
        blob = blobs[key]
        assert blob is not None
        # ``_object`` is the object's rank in sorted key order: a cheap, deterministic tie-break.
        return _validate(decode_parquet(blob, store.url(key)), store.url(key)).with_columns(
            pl.lit(index, pl.UInt32).alias("_object"))

    # Polars releases the GIL while decoding, so a few threads decode several objects at once.
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(read)))) as pool:
        frames = list(pool.map(decode, enumerate(read)))
    if not frames:
        return tx_frame([], value_dtype).with_columns(pl.lit(None, pl.UInt32).alias("_object")), read, orphans
    return pl.concat(frames, how="vertical"), read, orphans


def _validate(df: pl.DataFrame, where: str) -> pl.DataFrame:
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
    finite = pl.col("value").is_not_null() if exact else pl.col("value").is_finite()
    bad = df.filter(
        ~pl.col("operation").is_in(OPERATIONS) | ~finite | pl.col("id").is_null()
        | pl.col("originalId").is_null() | pl.col("timestamp").is_null()
    )
    if bad.height:
        raise CorruptObjectError(
            f"{where} holds {bad.height} invalid transaction row(s) (unknown operation, non-finite value or "
            "missing id); nothing from it was applied. Move the object out of the dataset to continue."
        )
    return df


def history_keys(store: Store, dataset: str, prefixes: Sequence[str] | None = None) -> list[str]:
    """Every transaction object of ``dataset`` (or under the given partition prefixes): a listing
    of the history, for queries and maintenance, never for consolidation."""
    roots = list(prefixes) if prefixes is not None else [dataset]
    return sorted({k for p in roots for k in store.find(p, ".parquet") if "/_" not in k[len(dataset):]})


def read_history(store: Store, keys: Sequence[str], value_dtype: pl.DataType | None = None) -> pl.DataFrame:
    """Transactions of ``keys`` with ``cohortDate``, ``cohortMonth`` (from the path) and ``_object``."""
    blobs = store.read_many(keys)
    frames = []
    for key, blob in blobs.items():
        if blob is None:  # deleted since it was listed (a maintenance job moved it)
            continue
        day = key.split("cohortDate=", 1)[1].split("/", 1)[0]
        frames.append(_validate(decode_parquet(blob, store.url(key)), store.url(key)).with_columns(
            pl.lit(datetime.fromisoformat(day).date()).alias("cohortDate"),
            pl.lit(day[:7]).alias("cohortMonth"),
            pl.lit(key).alias("_object"),
        ))
    if not frames:
        return pl.DataFrame(schema={**tx_schema(value_dtype), **COHORT_SCHEMA, "_object": pl.String()})
    return pl.concat(frames, how="vertical")
