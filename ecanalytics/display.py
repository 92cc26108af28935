"""Short reprs and Jupyter HTML for the user-facing objects.

Looking changes nothing, and costs nothing (like Polars' and DuckDB's reprs): a repr or an HTML
view shows only what the object already holds in memory (its configuration, the state this
process last loaded, the result of the last ``inspect()``) and never lists, reads, writes or
deletes. What is not in memory says so: "not loaded", or "unknown — call inspect()" for the
pending backlog, which only a LIST can tell.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

NOT_LOADED = "not loaded"
UNKNOWN = "unknown — call inspect()"


@dataclass(frozen=True)
class FieldView:
    """What a managed field's row shows, as plain values its plugin gathers from memory."""

    resource: str
    field: str
    reducer: str
    timezone: str
    mode: str
    attached: bool  # False while the plugin waits for its resource
    pending: Any = UNKNOWN  # the last inspect()'s backlog, else UNKNOWN
    oldest: Any = None
    held: Any = NOT_LOADED  # rows held back, in the state this process holds
    conflicts: Any = NOT_LOADED
    inspected_at: datetime | None = None  # when that inspect() ran


def table(title: str, header: Sequence[str], rows: Iterable[Sequence[Any]], note: str = "") -> str:
    """A small HTML table in the spirit of Polars' and DuckDB's notebook views."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>" for row in rows)
    foot = f"<p><small>{html.escape(note)}</small></p>" if note else ""
    return (f"<div><p><b>{html.escape(title)}</b></p><table><thead><tr>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{foot}</div>")


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def plugin_repr(v: FieldView) -> str:
    return (f"EventualConsistencyPlugin({v.resource}.{v.field}, mode={v.mode!r}, reducer={v.reducer!r}, "
            f"timezone={v.timezone!r})")


def _field_rows(fields: Iterable[FieldView]) -> tuple[list[tuple[Any, ...]], str]:
    """One row per field, and a note saying how old the backlog shown is."""
    fields = list(fields)
    rows = [(v.field, v.reducer, v.timezone, v.mode, v.pending, v.oldest, v.held, v.conflicts) for v in fields]
    seen = [v.inspected_at for v in fields if v.inspected_at is not None]
    note = (f"pending as of the last inspect() ({min(seen):%Y-%m-%d %H:%M:%S} UTC); call inspect() to refresh"
            if seen else "")
    return rows, note


FIELD_HEADER = ("field", "reducer", "timezone", "mode", "pending", "oldest pending (written)", "held", "key conflicts")


def _join(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def plugin_html(v: FieldView) -> str:
    rows, note = _field_rows([v]) if v.attached else ([], "waiting for its resource")
    return table(f"Plugin {v.resource}.{v.field}", FIELD_HEADER, rows, note)


def _count(records: int | None) -> str:
    return f"{records:,}" if records is not None else NOT_LOADED


def resource_repr(name: str, fields: list[str], version: int | None, records: int | None) -> str:
    """``version`` None: no state loaded; ``records`` None: the records are not loaded."""
    if version is None:
        return f"Resource({name!r}, fields={fields}, state {NOT_LOADED})"
    return (f"Resource({name!r}, records={records if records is not None else NOT_LOADED}, fields={fields}, "
            f"version={version})")


def resource_html(name: str, fields: Iterable[FieldView], attributes: list[str], version: int | None,
                  records: int | None) -> str:
    rows, note = _field_rows(fields)
    about = (f"state {NOT_LOADED} (the first read loads it)" if version is None else
             f"{records:,} record{'' if records == 1 else 's'} · version {version}" if records is not None else
             f"records {NOT_LOADED} · version {version}")
    return table(f"Resource {name}", FIELD_HEADER, rows, _join(about, f"attributes: {', '.join(attributes)}", note))


def dataset_repr(name: str, field: str, timezone: str) -> str:
    return f"TransactionDataset({name!r}, field={field!r}, timezone={timezone!r})"


def dataset_html(name: str, field: FieldView, applied: tuple[int, int] | None) -> str:
    """``applied``: (objects, bytes) of the manifest in memory, or None when none is loaded."""
    rows, note = _field_rows([field])
    about = (f"applied objects {NOT_LOADED}" if applied is None
             else f"{applied[0]:,} applied objects · {applied[1]:,} bytes")
    return table(f"Transactions {name}", FIELD_HEADER, rows,
                 _join(about, "partitions cohortMonth=YYYY-MM/cohortDate=YYYY-MM-DD", note))


def database_repr(uri: str, resources: list[str]) -> str:
    return f"Database({uri!r}, resources={resources})"


def database_html(uri: str, resources: Iterable[tuple[str, int | None, int | None, str]],
                  broken: dict[str, Exception]) -> str:
    """``resources``: (name, records or None, version or None, managed fields)."""
    rows: list[tuple[Any, ...]] = [(name, _count(records), version if version is not None else NOT_LOADED, fields)
                                   for name, records, version, fields in resources]
    rows += [(name, "unreadable", None, str(err)) for name, err in sorted(broken.items())]
    return table(f"ecanalytics at {uri}", ("resource", "records", "version", "managed fields"), rows)
