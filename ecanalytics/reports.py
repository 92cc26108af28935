"""SQL reports: ``.sql`` files shipped in the package (``ecanalytics/sql/``, linked as ``sql/``).

Each report declares its named parameters in its header, one per line::

    -- param start DATE
    -- param limit INTEGER = 10

A parameter without ``= default`` is required. Values are converted to the declared type before
DuckDB binds them to ``$name``. Reports run over the views of :meth:`Database.sql`
(``ec_transactions``, ``ec_values``, ``ec_fields``, ``ec_pending`` and the per-dataset views).

Example:
    >>> import ecanalytics as ec
    >>> "daily_totals" in ec.reports.names()
    True
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import polars as pl

from ecanalytics.errors import ValidationError

if TYPE_CHECKING:
    from ecanalytics.database import Database

_PARAM = re.compile(r"^--\s*param\s+(\w+)\s+(DATE|VARCHAR|INTEGER|DOUBLE|TIMESTAMP)(?:\s*=\s*(.+))?\s*$", re.I)


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    required: bool
    default: Any

    def convert(self, value: Any) -> Any:
        if value is None:
            return None
        try:
            if self.type == "DATE":
                return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
            if self.type == "TIMESTAMP":
                return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(str(value))
            if self.type == "INTEGER":
                if isinstance(value, bool):
                    raise ValueError("a bool is not an integer")
                return int(value)
            if self.type == "DOUBLE":
                return float(value)
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"Parameter {self.name!r} must be a {self.type}; got {value!r} ({exc}).") from exc
        return str(value)


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


def run(db: Database, name: str, **params: Any) -> pl.DataFrame:
    """Run report ``name`` on ``db`` with named parameters; returns Polars.

    Example: ``ec.reports.run(db, "daily_totals", start="2026-11-01", end="2026-11-30")``
    """
    report = get(name)
    result: pl.DataFrame = db.sql(report.sql, **report.bind(params)).pl()
    return result
