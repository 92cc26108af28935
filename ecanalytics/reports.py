"""SQL reports: ``.sql`` files shipped in the package (``ecanalytics/sql/``, linked as ``sql/``).

Each report declares its named parameters in its header, one per line::

    -- param start DATE
    -- param limit INTEGER = 10

A parameter without ``= default`` is required. Values are converted to the declared type before
DuckDB binds them to ``$name``; a value that does not convert raises
:class:`~ecanalytics.errors.InvalidValueError` and the report does not run. ``DATE`` and
``TIMESTAMP`` values must exist (``2026-13-01`` fails), ``INTEGER`` values fit 64 bits, ``DOUBLE``
values are finite, and text is valid Unicode. Two names carry a meaning of their own: a
``VARCHAR`` parameter whose name ends in ``month`` is a cohort month and must be an existing
``YYYY-MM``, and an ``INTEGER`` parameter named ``limit`` may not be negative.

Reports run over the views of :meth:`Database.sql`
(``ec_transactions``, ``ec_values``, ``ec_fields``, ``ec_pending`` and the per-dataset views).

Example:
    >>> import ecanalytics as ec
    >>> "daily_totals" in ec.reports.names()
    True
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from ecanalytics.errors import InvalidValueError, SnapshotGoneError, ValidationError
from ecanalytics.storage.paths import describe

if TYPE_CHECKING:
    from ecanalytics.analytics.relation import Relation


class SqlRunner(Protocol):
    """What a report runs on: :class:`ecanalytics.Database` (its ``sql``)."""

    def sql(self, query: str, **params: Any) -> Relation: ...

_MONTH = re.compile(r"^[0-9]{4}-[0-9]{2}\Z")
_HINTS = {"DATE": "an existing ISO date such as 2026-11-30", "TIMESTAMP": "an ISO timestamp such as 2026-11-30T12:00:00",
          "INTEGER": "a whole number such as 10", "DOUBLE": "a finite number such as 0.5", "VARCHAR": "valid text"}
_PARAM = re.compile(r"^--\s*param\s+(\w+)\s+(DATE|VARCHAR|INTEGER|DOUBLE|TIMESTAMP)(?:\s*=\s*(.+))?\s*$", re.I)


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    required: bool
    default: Any

    def convert(self, value: Any) -> Any:
        """The value as the declared type (see the module docstring); None stays None (SQL NULL)."""
        if value is None:
            return None
        try:
            if self.type == "DATE":
                return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
            if self.type == "TIMESTAMP":
                return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
            if self.type == "INTEGER":
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise ValueError(f"{type(value).__name__} {value!r} is not an integer")
                number = int(value)
                if not -(2**63) <= number <= 2**63 - 1:
                    raise ValueError("out of the 64-bit range")
                if self.name == "limit" and number < 0:
                    raise ValueError("a limit may not be negative")
                return number
            if self.type == "DOUBLE":
                if isinstance(value, bool):
                    raise ValueError("a bool is not a number")
                real = float(value)
                if not math.isfinite(real):
                    raise ValueError("it must be finite")
                return real
            text = str(value)
            text.encode()  # a lone surrogate cannot be bound
            if self.name.endswith("month") and not (_MONTH.match(text) and 1 <= int(text[5:]) <= 12 and text[:4] != "0000"):
                raise ValueError("expected an existing month YYYY-MM")
            return text
        except (TypeError, ValueError, OverflowError) as exc:
            month = self.type == "VARCHAR" and self.name.endswith("month")
            hint = "an existing month such as 2026-11" if month else _HINTS.get(self.type, "text")
            raise InvalidValueError(
                f"Parameter {self.name!r} ({self.type}) cannot take {describe(value)} ({exc}); pass {hint}."
            ) from exc


@dataclass(frozen=True)
class Report:
    """One report: its name, description, parameters and SQL."""

    name: str
    description: str
    params: tuple[Param, ...]
    sql: str

    def bind(self, values: dict[str, Any]) -> dict[str, Any]:
        known = {p.name for p in self.params}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValidationError(f"Report {self.name!r} has no parameter(s) {unknown}; it takes {sorted(known)}.")
        bound = {}
        for p in self.params:
            if p.name not in values and p.required:
                raise ValidationError(f"Report {self.name!r} needs parameter {p.name!r} ({p.type}).")
            bound[p.name] = p.convert(values.get(p.name, p.default))
        return bound


def _parse(name: str, text: str) -> Report:
    params, description = [], []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        match = _PARAM.match(line)
        if match:
            pname, ptype, default = match.groups()
            value = None if default is None or default.strip().upper() == "NULL" else default.strip()
            params.append(Param(pname, ptype.upper(), default is None, value))
        else:
            description.append(line.lstrip("- ").strip())
    return Report(name, " ".join(d for d in description if d), tuple(params), text)


def _files() -> dict[str, str]:
    folder = resources.files("ecanalytics") / "sql"
    return {f.name.removesuffix(".sql"): f.read_text() for f in folder.iterdir() if f.name.endswith(".sql")}


def names() -> list[str]:
    """The names of the shipped reports."""
    return sorted(_files())


def get(name: str) -> Report:
    """The report called ``name``."""
    files = _files()
    if name not in files:
        raise ValidationError(f"No report named {name!r}; available: {sorted(files)}.")
    return _parse(name, files[name])


def run(db: SqlRunner, name: str, **params: Any) -> pl.DataFrame:
    """Run report ``name`` on ``db`` with named parameters; returns Polars.

    Example: ``ec.reports.run(db, "daily_totals", start="2026-11-01", end="2026-11-30")``
    """
    report = get(name)
    bound = report.bind(params)
    for attempt in range(3):
        try:
            result: pl.DataFrame = db.sql(report.sql, **bound).pl()
            return result
        except SnapshotGoneError:  # maintenance replaced a file between planning and reading: plan again
            if attempt == 2:
                raise
    raise AssertionError("unreachable")
