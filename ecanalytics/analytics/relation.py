"""A DuckDB relation that says "re-run the query" when maintenance replaced its files.

``db.sql`` returns a lazy relation: its file list is fixed when it is built, and the rows are read
when it is fetched (``.pl()``, ``.fetchall()``, its repr in a notebook...). Compaction and
retention delete the objects they replaced right after their commit, so a relation kept across
one of them (or a query running across it) finds a file gone. :class:`Relation` turns that into
:class:`~ecanalytics.errors.SnapshotGoneError`, whose message says to re-run the query; it never
returns a wrong number (a file that is gone is an error, not "no rows"). Everything else is the
relation's own API: methods that return relations return wrapped ones, and ``.relation`` is the
plain DuckDB object.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

from ecanalytics.errors import CorruptObjectError, SnapshotGoneError

_GONE = ("No files found that match the pattern", "No such file or directory", "does not exist", "Not Found",
         "NoSuchKey", "FileNotFoundError", "HTTP 404",
         "The specified key does not exist")


# Errors about the query itself (a misspelled table or column, bad SQL), whatever their wording
# ("Table with name x does not exist"): never a vanished file.
_QUERY_ERRORS = (duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException)


def _vanished(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError) or (
        isinstance(exc, duckdb.Error) and not isinstance(exc, _QUERY_ERRORS)
        and any(marker in str(exc) for marker in _GONE))


# DuckDB's words for a file that is not Parquet (or is cut short), and the file it names.
_CORRUPT = re.compile(r"No magic bytes found at end of file '([^']+)'|File '([^']+)' too small to be a Parquet file"
                      r"|Invalid Parquet file[^']*'([^']+)'")


# Through a registered fsspec filesystem (memory://, S3 without httpfs) DuckDB reads the sizes
# the store listed; an object rewritten shorter since then fails like this, without its name.
_SHORT = re.compile(r"Failed to read \d+ bytes from Python file at offset \d+: only \d+ bytes returned")


def _corrupt(exc: BaseException) -> str | None:
    """The file a DuckDB error says is not readable Parquet (``""`` when it does not name it),
    or None when the error says something else."""
    if not isinstance(exc, duckdb.Error):
        return None
    found = _CORRUPT.search(str(exc))
    return next(g for g in found.groups() if g) if found else "" if _SHORT.search(str(exc)) else None


@contextmanager
def snapshot_guard() -> Iterator[None]:
    """Raise :class:`SnapshotGoneError` where DuckDB (or the fsspec filesystem under it) finds
    one of the query's objects gone, and :class:`CorruptObjectError` naming the object where
    one is not readable Parquet."""
    try:
        yield
    except (SnapshotGoneError, CorruptObjectError):
        raise
    except Exception as exc:
        if (bad := _corrupt(exc)) is not None:
            what = (f"{bad} is not a readable Parquet file, and this query reads it" if bad else
                    f"An object this query reads is shorter than when it was written: it was changed since ({exc})")
            raise CorruptObjectError(f"{what}. Inspect it, then move it out of the dataset or restore it from a "
                                     "backup.") from exc
        if not _vanished(exc):
            raise
        raise SnapshotGoneError(
            "An object this query reads was replaced by maintenance (compaction or retention) after the query "
            f"was planned: re-run the query (db.sql(...) again), which reads the current objects. ({exc})"
        ) from exc


def _wrap(value: Any) -> Any:
    return Relation(value) if isinstance(value, duckdb.DuckDBPyRelation) else value


class Relation:
    """A :class:`duckdb.DuckDBPyRelation` whose reads raise :class:`SnapshotGoneError` for
    vanished files (see the module docstring); every relation method works as usual."""

    __slots__ = ("relation",)

    def __init__(self, relation: duckdb.DuckDBPyRelation) -> None:
        self.relation = relation

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.relation, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with snapshot_guard():
                return _wrap(attr(*args, **kwargs))

        return call

    def __getitem__(self, key: Any) -> Any:
        return _wrap(self.relation[key])

    def __len__(self) -> int:
        with snapshot_guard():
            return len(self.relation)

    def __iter__(self) -> Iterator[Any]:
        with snapshot_guard():
            return iter(self.relation.fetchall())

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        with snapshot_guard():
            return self.relation.__arrow_c_stream__(requested_schema)  # type: ignore[attr-defined]

    def _guarded(self, show: Callable[[], str]) -> str:
        with snapshot_guard():
            return show()

    def __repr__(self) -> str:
        return self._guarded(lambda: repr(self.relation))

    def __str__(self) -> str:
        return self._guarded(lambda: str(self.relation))
