"""Frames in: turn what users hand us (Polars, Arrow, pandas, dicts) into validated rows.

Validation is vectorized and follows the same rules as a single write (``check_amount``,
``check_timestamp``, ``validate_record_id``). A bad frame is rejected whole: the typed error names
the first bad row (0-based, in the order given) and how many rows are bad, and nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import polars as pl

from ecanalytics.errors import InvalidNameError, InvalidValueError, SchemaError
from ecanalytics.ledger.keys import AUTO_ID_PREFIX
from ecanalytics.ledger.schema import Schema
from ecanalytics.ledger.transactions import tx_schema
from ecanalytics.storage import paths as P
from ecanalytics.types import OPERATIONS

FrameLike = Any  # pl.DataFrame | pl.LazyFrame | pa.Table | pa.RecordBatchReader | __arrow_c_stream__ | list[dict]
_TS_LOW = datetime(1, 1, 2, tzinfo=timezone.utc)
_TS_HIGH = datetime(9999, 12, 30, 23, 59, 59, tzinfo=timezone.utc)


def to_frame(data: FrameLike) -> pl.DataFrame:
    """A Polars DataFrame from a DataFrame, LazyFrame, pyarrow Table or RecordBatchReader, anything
    with ``__arrow_c_stream__`` (pandas, DuckDB relations), or a list of dicts."""
    try:
        if isinstance(data, pl.DataFrame):
            return data
        if isinstance(data, pl.LazyFrame):
            return data.collect()
        if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
            if not all(isinstance(row, Mapping) for row in data):
                raise InvalidValueError("A list of rows must hold dicts such as {'originalId': 'w1', 'value': 5}.")
            return pl.DataFrame(list(data), infer_schema_length=None)
        if hasattr(data, "__arrow_c_stream__") or type(data).__module__.startswith("pyarrow"):
            frame = pl.from_arrow(_arrow_for_polars(data))
            return frame if isinstance(frame, pl.DataFrame) else frame.to_frame()
    except InvalidValueError:
        raise
    except Exception as exc:  # polars raises several types for data it cannot convert
        raise InvalidValueError(f"Cannot read the frame ({type(exc).__name__}: {exc}); nothing was written.") from exc
    raise InvalidValueError(
        f"Expected a Polars DataFrame or LazyFrame, a pyarrow Table or RecordBatchReader, an object with "
        f"__arrow_c_stream__ (e.g. pandas), or a list of dicts; got {type(data).__name__}."
    )


def _arrow_for_polars(data: Any) -> Any:
    """``data`` as a pyarrow Table or Array Polars can read: ``decimal256`` columns (which Polars
    cannot hold, and panics on) become ``decimal128`` when their precision fits 38 digits."""
    import pyarrow as pa

    if isinstance(data, pa.RecordBatchReader):
        data = data.read_all()
    elif isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    elif not isinstance(data, (pa.Table, pa.Array, pa.ChunkedArray)):
        data = pa.table(data)  # anything with __arrow_c_stream__ (pandas, DuckDB relations)
    if not isinstance(data, pa.Table):
        return data
    fields = []
    for f in data.schema:
        if pa.types.is_decimal256(f.type):
            if f.type.precision > 38:
                raise InvalidValueError(
                    f"Column {f.name!r} is {f.type}: more than 38 digits, which no engine here holds exactly. Cast it "
                    f"to decimal128(38, {min(f.type.scale, 38)}) or float64 first; nothing was written.")
            fields.append(f.with_type(pa.decimal128(f.type.precision, f.type.scale)))
        else:
            fields.append(f)
    schema = pa.schema(fields)
    return data if schema == data.schema else data.cast(schema)


def _reject(frame: pl.DataFrame, bad: pl.Expr, error: type[Exception], what: str, detail: pl.Expr | None = None) -> None:
    """Raise ``error`` naming the first row where ``bad`` holds and how many rows do."""
    if not frame.select(bad.fill_null(True).any()).item():  # one cheap pass in the common case
        return
    flagged = frame.with_row_index("_row").filter(bad.fill_null(True))
    if flagged.height:
        first = flagged.row(0, named=True)
        why = f" ({flagged.select(detail).item(0, 0)})" if detail is not None else ""
        raise error(
            f"{flagged.height} row(s) have {what}; the first is row {first['_row']}{why}. "
            "Nothing was written: fix or drop those rows and retry."
        )


def _check_ids(frame: pl.DataFrame, column: str) -> None:
    if not frame.select(P.any_id_problem(pl.col(column)).any()).item():  # one pass when all are fine
        return
    problem = P.id_problems(pl.col(column))
    _reject(frame.with_columns(_problem=problem), pl.col("_problem").is_not_null(), InvalidNameError,
            f"an invalid {column!r}", pl.format("'{}': {}", pl.col(column), pl.col("_problem")).first())


def content_digest(frame: pl.DataFrame) -> str:
    """A digest of ``frame``'s content (its Arrow IPC bytes, one chunk): equal for a retry of the
    same frame, so ids derived from it repeat and the retry counts once."""
    import hashlib
    import io

    buffer = io.BytesIO()
    frame.rechunk().write_ipc(buffer, compression="uncompressed")
    return hashlib.sha256(buffer.getvalue()).hexdigest()


DERIVED_ID_PREFIX = "row-"


def derived_ids(seed: str) -> pl.Expr:
    """Ids for rows without one, derived from ``seed`` (a digest of their source, or a batch name
    the caller chose) and the row's position: a retry of the same input gets the same ids, so it
    counts once. They are idempotency keys like caller-supplied ones (remembered for
    ``dedup_window``)."""
    return pl.format(f"{DERIVED_ID_PREFIX}{seed}-" + "{}", pl.int_range(pl.len()).cast(pl.String).str.zfill(12))


def transactions(data: FrameLike, field: str, dtype: pl.DataType, *, id_seed: str | None = None) -> pl.DataFrame:
    """Validated transaction rows for ``field``: columns ``originalId``, ``value`` and optionally
    ``operation`` (``add`` by default), ``timestamp`` (timezone-aware; default now), ``id``
    (idempotency key; default generated) and ``source`` (default ``"api"``). A null in an
    optional column means "not given" (rows built from dicts with different keys), so it takes
    the default too. With ``id_seed``, rows without an id get :func:`derived_ids` instead of
    generated ones (``""`` derives the seed from the frame's content)."""
    frame = to_frame(data)
    if id_seed == "":
        id_seed = content_digest(frame)[:32]
    elif id_seed is not None:
        P.validate_record_id(id_seed)
    allowed = {"originalId", "value", "operation", "timestamp", "id", "source", "field"}
    unknown = sorted(set(frame.columns) - allowed)
    missing = sorted({"originalId", "value"} - set(frame.columns))
    if unknown or missing:
        raise SchemaError(
            f"Transaction frames have the columns originalId and value, optionally operation, timestamp, id and "
            f"source; {'missing ' + str(missing) if missing else ''}{' and ' if unknown and missing else ''}"
            f"{'unknown ' + str(unknown) if unknown else ''}."
        )
    if "field" in frame.columns:
        _reject(frame, pl.col("field") != field, SchemaError, f"a field other than {field!r}")
        frame = frame.drop("field")
    if not frame.schema["originalId"] == pl.String:
        raise InvalidNameError(f"originalId must be a string column; got {frame.schema['originalId']}.")
    _check_ids(frame, "originalId")
    value = frame.schema["value"]
    if isinstance(dtype, pl.Decimal):
        try:
            frame = frame.with_columns(pl.col("value").cast(dtype, strict=True))
        except Exception as exc:
            raise InvalidValueError(f"value does not fit {dtype} without rounding or overflow ({exc}); nothing was written.") from exc
        _reject(frame, pl.col("value").is_null(), InvalidValueError, "a missing value")
    else:
        if not value.is_numeric() or value == pl.Boolean:
            raise InvalidValueError(f"value must be a numeric column; got {value}. Cast it first, e.g. pl.col('value').cast(pl.Float64).")
        frame = frame.with_columns(pl.col("value").cast(pl.Float64))
        _reject(frame, ~pl.col("value").is_finite(), InvalidValueError, "a missing, NaN or infinite value",
                pl.col("value").first())
    if "operation" in frame.columns:
        frame = frame.with_columns(pl.col("operation").fill_null("add"))
        _reject(frame, ~pl.col("operation").is_in(list(OPERATIONS)), InvalidValueError,
                f"an operation other than {list(OPERATIONS)}", pl.col("operation").first())
    else:
        frame = frame.with_columns(operation=pl.lit("add"))
    now = datetime.now(timezone.utc)
    if "timestamp" in frame.columns:
        ts = frame.schema["timestamp"]
        if ts == pl.String:
            # A string without an offset is as ambiguous as a naive datetime: never read it as UTC.
            _reject(frame, pl.col("timestamp").is_not_null() & ~pl.col("timestamp").str.contains(
                r"[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)$"), InvalidValueError, "a timestamp string without a UTC offset "
                "(write e.g. 2026-11-01T00:30:00-03:00 or ...Z)", pl.col("timestamp").first())
            try:
                frame = frame.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))
            except Exception as exc:
                raise InvalidValueError(f"timestamp strings must be ISO 8601 with an offset ({exc}).") from exc
        elif not isinstance(ts, pl.Datetime) or ts.time_zone is None:
            raise InvalidValueError(
                f"timestamp must be a timezone-aware datetime column (e.g. pl.Datetime('us', 'UTC')); got {ts}. "
                "A naive datetime is ambiguous: use .dt.replace_time_zone(...) first."
            )
        frame = frame.with_columns(pl.col("timestamp").dt.convert_time_zone("UTC").dt.cast_time_unit("us")
                                   .fill_null(pl.lit(now, pl.Datetime("us", "UTC"))))
        _reject(frame, ~pl.col("timestamp").is_between(_TS_LOW, _TS_HIGH), InvalidValueError,
                "a missing timestamp or one outside 0001-01-02 .. 9999-12-30 UTC")
    else:
        frame = frame.with_columns(timestamp=pl.lit(now, pl.Datetime("us", "UTC")))
    stamp = f"{AUTO_ID_PREFIX}{now.strftime('%Y%m%d%H%M%S%f')}-{P.new_file_id()[-16:]}-"
    generated = (derived_ids(id_seed) if id_seed is not None
                 else pl.format(stamp + "{}", pl.int_range(pl.len()).cast(pl.String).str.zfill(12)))
    if "id" in frame.columns:
        if frame.schema["id"] not in (pl.String, pl.Null):
            raise InvalidNameError(f"id must be a string column; got {frame.schema['id']}.")
        given = frame.filter(pl.col("id").is_not_null())
        _check_ids(given, "id")
        _reject(given, pl.col("id").str.starts_with(AUTO_ID_PREFIX), InvalidValueError,
                f"an id starting with the reserved prefix {AUTO_ID_PREFIX!r}")
        frame = frame.with_columns(pl.coalesce(pl.col("id").cast(pl.String), generated).alias("id"))
    else:
        frame = frame.with_columns(id=generated)
    if "source" in frame.columns:
        frame = frame.with_columns(pl.col("source").cast(pl.String).fill_null("api"))
    else:
        frame = frame.with_columns(source=pl.lit("api"))
    return frame.with_columns(field=pl.lit(field)).select(list(tx_schema(dtype))).cast(tx_schema(dtype))  # type: ignore[arg-type]


def _fits_kind(dtype: pl.DataType, kind: str) -> bool:
    """Whether a column of ``dtype`` holds values of an attribute ``kind`` without reinterpreting
    them (the rules of :meth:`Attribute.check`: no number becomes a string, no bool a number)."""
    if dtype == pl.Null:
        return True
    if kind == "string":
        return dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum)
    if kind == "boolean":
        return dtype == pl.Boolean
    if kind == "integer":
        return dtype.is_integer()
    return dtype.is_numeric()  # number, decimal(p,s): range and precision are checked by the cast


def records(data: FrameLike, schema: Schema) -> pl.DataFrame:
    """Validated full records: known attributes only, ``id`` valid and unique, required ones
    present, defaults filled in, every value cast to its attribute's type."""
    frame = to_frame(data)
    unknown = sorted(set(frame.columns) - set(schema.attributes))
    if unknown:
        raise SchemaError(f"Unknown attribute(s) {unknown}; the schema has {sorted(schema.attributes)}.")
    if "id" not in frame.columns or frame.schema["id"] != pl.String:
        raise InvalidNameError("Records need an 'id' column of strings.")
    _check_ids(frame, "id")
    _reject(frame, pl.col("id").is_duplicated(), SchemaError, "an id that appears more than once", pl.col("id").first())
    for name, attr in schema.attributes.items():
        if name in frame.columns and not _fits_kind(frame.schema[name], attr.kind):
            raise SchemaError(
                f"Attribute {name!r} is {attr.kind}; the column is {frame.schema[name]}. Nothing was written: cast the "
                f"column first (as insert() refuses such a value too), e.g. pl.col({name!r}).cast(...).")
    columns = []
    for name, attr in schema.attributes.items():
        if name in frame.columns:
            column = pl.col(name)
            if attr.default is not None:
                column = column.fill_null(pl.lit(attr.default, attr.dtype))
        else:
            column = pl.lit(attr.default, attr.dtype)
        columns.append(column.alias(name))
    try:
        out = frame.select(columns).cast(schema.polars_schema, strict=True)  # type: ignore[arg-type]
    except Exception as exc:
        raise SchemaError(f"The frame does not fit the schema {schema.to_spec()} ({exc}).") from exc
    for name, attr in schema.attributes.items():
        if attr.required:
            _reject(out, pl.col(name).is_null(), SchemaError, f"no value for the required attribute {name!r}")
        if attr.numeric and not isinstance(attr.dtype, pl.Decimal):
            _reject(out, ~pl.col(name).is_finite().fill_null(True), InvalidValueError, f"a NaN or infinite {name!r}")
    return out
