"""Every storage path is built here, and every user-supplied name is validated here.

Layout under the root::

    _catalog/{resource}.json
    {resource}/_log/{version:020d}.json           create-only commit log
    {resource}/_log/{version:020d}.checkpoint.json  which objects hold each bucket at a checkpoint
    {resource}/_log/_last_checkpoint.json         the latest of those, overwritten
    {resource}/_data/{version:020d}-{token}.*     deltas and checkpoints named by commits
    {resource}/_work/{run}/b{bucket}-m{index}.parquet   per-bucket runs of cluster runs before 2026-12-06 (swept)
    {resource}_transactions_{field}/cohortMonth=YYYY-MM/cohortDate=YYYY-MM-DD/{file_id}.parquet
    {resource}_transactions_{field}/_inbox/{YYYY-MM-DD}.{file_id}      pending-object markers
    _archive/{resource}_transactions_{field}/cohortMonth=…/cohortDate=…/{file_id}.parquet   retention
    _export/{resource}/records.parquet            records snapshot for external engines (ddl --export)

Record ids are data and never appear in a path. Resource and field names do, so they must be
identifiers: they also name DuckDB views and Polars columns.
"""

from __future__ import annotations

import re

import polars as pl

from ecanalytics import _runtime
from ecanalytics.errors import InvalidNameError

# Anchored with \Z, not $: '$' also matches before a final newline ("wallets\n").
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,99}\Z")
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_FILE_ID = re.compile(r"^[0-9]{20}-[0-9a-f]{32}\Z")
TX_INFIX = "_transactions_"
MAX_ID_LENGTH = 1024


def describe(value: object, limit: int = 60) -> str:
    """A short ``repr`` for error messages: long values are cut, and an int too large for
    ``repr`` (Python refuses more than 4300 digits) is described by its size instead."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not hide the real error
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def validate_name(kind: str, name: object) -> str:
    """Check a resource or field name; it must be an identifier such as ``wallets``."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidNameError(
            f"Invalid {kind} name {describe(name)}: use a letter followed by letters, digits or '_' "
            "(no '/', '=', '.', spaces or empty names), at most 100 characters."
        )
    return name


def validate_resource_name(name: object) -> str:
    """A resource name, which must not collide with a transaction dataset."""
    checked = validate_name("resource", name)
    if TX_INFIX in checked:
        raise InvalidNameError(
            f"Resource name {checked!r} contains {TX_INFIX!r}, which is reserved for the transaction "
            "datasets ({resource}_transactions_{field}); choose another name."
        )
    return checked


# Any of the characters or the '..' that the checks of validate_record_id reject.
_SUSPECT = re.compile(r"[/\\=\x00-\x1f\x7f-\x9f\ud800-\udfff]|\.\.")


def validate_record_id(record_id: object) -> str:
    """Check a record id (or a transaction id): a non-empty string that cannot be read as a path.

    Control characters (C0, DEL and C1, so also a trailing newline) and lone surrogates
    (``"\\ud800"``, which is not Unicode text and cannot be stored as UTF-8) are rejected.
    """
    if isinstance(record_id, str) and 0 < len(record_id) <= MAX_ID_LENGTH and _SUSPECT.search(record_id) is None:
        return record_id  # every add checks its id: one regex search instead of the steps below
    if not isinstance(record_id, str):
        raise InvalidNameError(f"Record ids are strings; got {type(record_id).__name__} {describe(record_id)}.")
    problem = None
    if not record_id:
        problem = "it is empty"
    elif len(record_id) > MAX_ID_LENGTH:
        problem = f"it is longer than {MAX_ID_LENGTH} characters"
    elif "/" in record_id or "\\" in record_id:
        problem = "it contains a path separator"
    elif ".." in record_id:
        problem = "it contains '..'"
    elif "=" in record_id:
        problem = "it contains '=' (reserved for partition segments)"
    elif any(ord(c) < 32 or 127 <= ord(c) < 160 for c in record_id):
        problem = "it contains a control character"
    elif any(0xD800 <= ord(c) < 0xE000 for c in record_id):
        problem = "it contains a lone surrogate, which is not valid Unicode text"
    if problem:
        raise InvalidNameError(f"Invalid id {describe(record_id)}: {problem}. Use a plain string such as 'wallet-1'.")
    return record_id


def id_problems(column: pl.Expr) -> pl.Expr:
    """The vectorized twin of :func:`validate_record_id`: per row, what is wrong with the id in
    ``column`` (a String expression), or null when it is fine."""
    return (
        pl.when(column.is_null() | (column.str.len_chars() == 0)).then(pl.lit("it is empty"))
        .when(column.str.len_chars() > MAX_ID_LENGTH).then(pl.lit(f"it is longer than {MAX_ID_LENGTH} characters"))
        .when(column.str.contains(r"[/\\]")).then(pl.lit("it contains a path separator"))
        .when(column.str.contains("..", literal=True)).then(pl.lit("it contains '..'"))
        .when(column.str.contains("=", literal=True)).then(pl.lit("it contains '=' (reserved for partition segments)"))
        .when(column.str.contains(r"[\x00-\x1f\x7f-\x9f]")).then(pl.lit("it contains a control character"))
        .otherwise(pl.lit(None, pl.String))
    )


def any_id_problem(column: pl.Expr) -> pl.Expr:
    """True where :func:`id_problems` finds something: the same rules in one regex pass."""
    length = column.str.len_bytes()
    return (column.is_null() | (length == 0) | (column.str.len_chars() > MAX_ID_LENGTH)
            | column.str.contains(r"[/\\=\x00-\x1f\x7f-\x9f]|\.\.")).fill_null(True)


def transactions_dataset(resource: str, field: str) -> str:
    """Name of the transaction dataset of a managed field, e.g. ``wallets_transactions_balance``."""
    return f"{resource}{TX_INFIX}{field}"


def new_file_id() -> str:
    """A unique, time-sortable object name: nanoseconds since the epoch, then a random UUID."""
    return _runtime.sortable_id()


def file_id_time_ns(file_id: str) -> int:
    """When the writer created ``file_id`` (its own clock)."""
    return int(file_id.split("-", 1)[0])


def catalog_dir() -> str:
    return "_catalog"


def catalog_entry(resource: str) -> str:
    """The first version of ``resource``'s catalog entry (see :func:`catalog_version`)."""
    return catalog_version(resource, 0)


def catalog_version(resource: str, version: int) -> str:
    """Version ``version`` of ``resource``'s catalog entry: each change creates the next one."""
    return f"_catalog/{resource}.json" if version == 0 else f"_catalog/{resource}.v{version:09d}.json"


def log_dir(resource: str) -> str:
    return f"{resource}/_log"


def log_entry(resource: str, version: int) -> str:
    return f"{resource}/_log/{version:020d}.json"


def last_checkpoint(resource: str) -> str:
    return f"{resource}/_log/_last_checkpoint.json"


def checkpoint_hint(resource: str, version: int) -> str:
    """The checkpoint of ``version``: which objects hold each bucket (what time travel starts from)."""
    return f"{resource}/_log/{version:020d}.checkpoint.json"


def checkpoint_hint_version(name: str) -> int | None:
    """The version of a checkpoint hint's file name, or None for any other name."""
    stem = name.removesuffix(".checkpoint.json")
    return int(stem) if stem != name and len(stem) == 20 and stem.isdigit() else None


def data_dir(resource: str) -> str:
    return f"{resource}/_data"


def data_file(resource: str, version: int, token: str, kind: str) -> str:
    return f"{resource}/_data/{version:020d}-{token}.{kind}.parquet"


def data_file_version(rel: str) -> int | None:
    """The version a ``_data`` object was written for, or None for any other name."""
    stem = rel.rsplit("/", 1)[-1][:20]
    return int(stem) if len(stem) == 20 and stem.isdigit() else None


def is_commit_part(rel: str) -> bool:
    """Whether a ``_data`` object was written by a commit being built (a delta, marks, ids, held
    rows, a retention base), which its log entry names, rather than by a checkpoint."""
    name = rel.rsplit("/", 1)[-1]
    kind = name.split(".", 1)[1] if "." in name else ""
    return data_file_version(rel) is not None and not kind.startswith("checkpoint-")


def work_dir(resource: str) -> str:
    """Where cluster runs before 2026-12-06 put their intermediate per-bucket runs (rows now move
    through Dask); what is left there is swept."""
    return f"{resource}/_work"


def work_run_version(rel: str) -> int | None:
    """The version the cluster run holding ``rel`` (a path under :func:`work_dir`, in a run named
    ``v{version:020d}-{tag}``) built."""
    parts = rel.split("/_work/", 1)
    run = parts[1].split("/", 1)[0] if len(parts) == 2 else ""
    return int(run[1:21]) if len(run) > 21 and run[0] == "v" and run[1:21].isdigit() else None


def _check_date(cohort_date: str) -> str:
    if not _DATE.match(cohort_date):
        raise InvalidNameError(f"Invalid cohort date {cohort_date!r}; expected YYYY-MM-DD.")
    return cohort_date


def partition_dir(dataset: str, cohort_date: str) -> str:
    d = _check_date(cohort_date)
    return f"{dataset}/cohortMonth={d[:7]}/cohortDate={d}"


def month_dir(dataset: str, cohort_month: str) -> str:
    if not re.match(r"^[0-9]{4}-[0-9]{2}\Z", cohort_month):
        raise InvalidNameError(f"Invalid cohort month {cohort_month!r}; expected YYYY-MM.")
    return f"{dataset}/cohortMonth={cohort_month}"


def tx_object(dataset: str, cohort_date: str, file_id: str) -> str:
    return f"{partition_dir(dataset, cohort_date)}/{file_id}.parquet"


def compacted_object(partition: str, token: str, n: int) -> str:
    """The ``n``-th object a compaction run (``token``) merges into ``partition``."""
    return f"{partition}/c-{token}-{n:06d}.parquet"


ARCHIVE_PREFIX = "_archive/"


def archive_key(key: str) -> str:
    """Where retention archives a transaction object: ``_archive/`` + its own path (Hive layout kept)."""
    return f"_archive/{key}"


def export_object(resource: str) -> str:
    """The snapshot of a resource's consolidated records that ``ecanalytics ddl --export`` writes
    for engines that cannot replay the commit log (Athena, Spark, Trino)."""
    return f"_export/{resource}/records.parquet"


def inbox_dir(dataset: str) -> str:
    return f"{dataset}/_inbox"


AUTO_MARKER = ".a"  # the marker's object holds generated ids only: no row of it can repeat another


def inbox_marker(dataset: str, cohort_date: str, file_id: str, *, auto: bool = False) -> str:
    """The inbox marker of a transaction object; ``auto`` says that every id in it is generated
    (so readers need not deduplicate its rows). A marker without the suffix may hold any id."""
    return f"{inbox_dir(dataset)}/{_check_date(cohort_date)}.{file_id}{AUTO_MARKER if auto else ''}"


def marker_to_object(dataset: str, marker_name: str) -> tuple[str, str] | None:
    """The transaction object a marker points to, and its file id; None for a foreign file."""
    cohort_date, _, file_id = marker_name.removesuffix(AUTO_MARKER).partition(".")
    if not _DATE.match(cohort_date) or not _FILE_ID.match(file_id):
        return None
    return tx_object(dataset, cohort_date, file_id), file_id


def marker_is_auto(marker_name: str) -> bool:
    """Whether a marker says its object holds generated ids only (see :func:`inbox_marker`)."""
    return marker_name.endswith(AUTO_MARKER)


def is_encodable(text: str) -> bool:
    """Whether ``text`` can be stored (UTF-8): False for lone surrogates such as ``'\\ud800'``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
