"""Transaction files for ``ecanalytics ingest``: Parquet, CSV and NDJSON read into a frame.

A file that cannot be read as transactions raises :class:`MalformedFileError` naming the file,
its first bad row (0-based, as for frames) and, for text files, the line. Reading writes nothing;
the caller validates the frame (:func:`ecanalytics.ledger.ingest.transactions`) before it writes.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import polars as pl

from ecanalytics.errors import MalformedFileError

SUFFIXES = (".parquet", ".csv", ".ndjson", ".jsonl")


def digest(path: str | Path) -> str:
    """A digest of the file's bytes: the seed of the ids its rows without one get
    (:func:`ecanalytics.ledger.ingest.derived_ids`), so ingesting the same file again counts once."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]


def read_transactions(path: str | Path, dtype: pl.DataType) -> pl.DataFrame:
    """The rows of one transaction file, with ``value`` parsed as ``dtype`` (the field's type).

    Example:
        >>> import tempfile, os
        >>> folder = tempfile.mkdtemp()
        >>> p = os.path.join(folder, "t.csv")
        >>> _ = open(p, "w").write("originalId,value\\nw1,5\\nw2,abc\\n")
        >>> read_transactions(p, pl.Float64)
        Traceback (most recent call last):
        ...
        ecanalytics.errors.MalformedFileError: ...t.csv line 3 (row 1): value 'abc' is not a number; 1 row(s) like that. No file was written.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise MalformedFileError(f"{path}: use .parquet, .csv, .ndjson or .jsonl files. No file was written.")
    if suffix == ".parquet":
        try:
            frame = pl.read_parquet(path)
        except Exception as exc:  # polars raises several unrelated types for bad bytes
            raise MalformedFileError(f"{path} is not a readable Parquet file ({type(exc).__name__}: {exc}). "
                                     "No file was written.") from exc
        return _parse_values(frame, dtype, path, header_lines=None)
    if suffix == ".csv":
        try:
            frame = pl.read_csv(path, infer_schema=False)  # every column as text: values parsed below
        except Exception as exc:
            raise _csv_problem(path, exc) from exc
        return _parse_values(frame, dtype, path, header_lines=1)
    try:
        frame = pl.read_ndjson(path, infer_schema_length=None)
    except Exception as exc:
        raise _ndjson_problem(path, exc) from exc
    return _parse_values(frame, dtype, path, header_lines=0)


def _where(path: Path, row: int, header_lines: int | None) -> str:
    return f"{path} row {row}" if header_lines is None else f"{path} line {row + header_lines + 1} (row {row})"


def _parse_values(frame: pl.DataFrame, dtype: pl.DataType, path: Path, header_lines: int | None) -> pl.DataFrame:
    """Text values parsed as the field's type; the first one that is not a number is named."""
    if "value" not in frame.columns or frame.schema["value"] != pl.String:
        return frame
    target = dtype if isinstance(dtype, pl.Decimal) else pl.Float64
    parsed = pl.col("value").str.strip_chars().cast(target, strict=False)
    bad = frame.with_row_index("_row").filter(pl.col("value").is_not_null() & parsed.is_null())
    if bad.height:
        row, text = bad.row(0)[0], bad["value"][0]
        kind = f"a {dtype} number" if isinstance(dtype, pl.Decimal) else "a number"
        raise MalformedFileError(f"{_where(path, row, header_lines)}: value {text!r} is not {kind}; "
                                 f"{bad.height} row(s) like that. No file was written.")
    return frame.with_columns(parsed.alias("value"))


def _csv_problem(path: Path, exc: Exception) -> MalformedFileError:
    """Name the first line whose field count differs from the header's (Polars' message does not)."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            for row, fields in enumerate(reader):
                if fields and len(fields) != len(header):
                    return MalformedFileError(
                        f"{path} line {reader.line_num} (row {row}): {len(fields)} fields where the header has "
                        f"{len(header)}. No file was written.")
    except (OSError, UnicodeDecodeError, csv.Error) as scan_error:
        return MalformedFileError(f"{path} cannot be read as CSV ({type(scan_error).__name__}: {scan_error}). "
                                  "No file was written.")
    return MalformedFileError(f"{path} cannot be read as CSV ({type(exc).__name__}: {exc}). No file was written.")


def _ndjson_problem(path: Path, exc: Exception) -> MalformedFileError:
    """Name the first line that is not a JSON object, or whose value is not a number."""
    try:
        with path.open(encoding="utf-8") as handle:
            row = 0
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as bad:
                    return MalformedFileError(f"{path} line {number} (row {row}): not JSON ({bad.msg}). "
                                              "No file was written.")
                if not isinstance(item, dict):
                    return MalformedFileError(f"{path} line {number} (row {row}): not a JSON object. No file was written.")
                value = item.get("value")
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, str))
                                          or (isinstance(value, float) and not math.isfinite(value))):
                    return MalformedFileError(f"{path} line {number} (row {row}): value {value!r} is not a number. "
                                              "No file was written.")
                row += 1
    except (OSError, UnicodeDecodeError) as scan_error:
        return MalformedFileError(f"{path} cannot be read as NDJSON ({type(scan_error).__name__}: {scan_error}). "
                                  "No file was written.")
    return MalformedFileError(f"{path} cannot be read as NDJSON ({type(exc).__name__}: {exc}). No file was written.")
