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

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import duckdb

from ecanalytics.errors import SnapshotGoneError

_GONE = ("No files found that match the pattern", "No such file or directory", "does not exist", "Not Found",
         "NoSuchKey", "FileNotFoundError", "HTTP 404",
         "The specified key does not exist")


def _vanished(exc: BaseException) -> bool:
    return isinstance(exc, FileNotFoundError) or (
        isinstance(exc, duckdb.Error) and any(marker in str(exc) for marker in _GONE))


@contextmanager
def snapshot_guard() -> Iterator[None]:
    """Raise :class:`SnapshotGoneError` where DuckDB (or the fsspec filesystem under it) finds
    one of the query's objects gone."""
    try:
        yield
    except SnapshotGoneError:
        raise
    except Exception as exc:
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
