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
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecanalytics.consolidation import ConsolidationResult
    from ecanalytics.database import Database
    from ecanalytics.ledger import State
    from ecanalytics.plugin import EventualConsistencyPlugin
    from ecanalytics.resource import Resource, TransactionDataset

NOT_LOADED = "not loaded"
UNKNOWN = "unknown — call inspect()"


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


def plugin_repr(p: EventualConsistencyPlugin) -> str:
    return (f"EventualConsistencyPlugin({p.resource_name}.{p.field}, mode={p.mode!r}, reducer={p.reducer_name!r}, "
            f"timezone={p.timezone!r})")


def _in_memory(p: EventualConsistencyPlugin) -> State | None:
    """The state the plugin's resource holds, or None (not attached, or not loaded yet)."""
    return p._consolidator.ledger.in_memory() if p._consolidator is not None else None


def _field_rows(fields: Iterable[EventualConsistencyPlugin]) -> tuple[list[tuple[Any, ...]], str]:
    """One row per field from what is in memory, and a note saying how old the backlog shown is."""
    rows, seen = [], []
    for p in fields:
        st, last = _in_memory(p), p._last_inspect
        pending: Any = UNKNOWN
        oldest: Any = None
        if last is not None:
            seen.append(last[0])
            pending, oldest = last[1]["pending"], last[1]["oldestWrittenAt"]
        if st is not None and p._consolidator is not None:
            held: Any = p._consolidator.held_frame(st).height
            conflicts: Any = p._consolidator.conflicts_frame(st).height
        else:
            held = conflicts = NOT_LOADED
        rows.append((p.field, p.reducer_name, p.timezone, p.mode, pending, oldest, held, conflicts))
    note = (f"pending as of the last inspect() ({min(seen):%Y-%m-%d %H:%M:%S} UTC); call inspect() to refresh"
            if seen else "")
    return rows, note


FIELD_HEADER = ("field", "reducer", "timezone", "mode", "pending", "oldest pending (written)", "held", "key conflicts")


def _join(*parts: str) -> str:
    return " · ".join(p for p in parts if p)


def plugin_html(p: EventualConsistencyPlugin) -> str:
    rows, note = _field_rows([p]) if p._consolidator is not None else ([], "waiting for its resource")
    return table(f"Plugin {p.resource_name}.{p.field}", FIELD_HEADER, rows, note)


def _records(st: State | None) -> str:
    count = st.loaded_record_count() if st is not None else None
    return f"{count:,}" if count is not None else NOT_LOADED


def resource_repr(r: Resource) -> str:
    st = r.ledger.in_memory()
    if st is None:
        return f"Resource({r.name!r}, fields={list(r.plugins)}, state {NOT_LOADED})"
    count = st.loaded_record_count()
    return (f"Resource({r.name!r}, records={count if count is not None else NOT_LOADED}, fields={list(r.plugins)}, "
            f"version={st.version})")


def resource_html(r: Resource) -> str:
    st = r.ledger.in_memory()
    rows, note = _field_rows(r.plugins.values())
    count = st.loaded_record_count() if st is not None else None
    about = (f"state {NOT_LOADED} (the first read loads it)" if st is None else
             f"{count:,} record{'' if count == 1 else 's'} · version {st.version}" if count is not None else
             f"records {NOT_LOADED} · version {st.version}")
    return table(f"Resource {r.name}", FIELD_HEADER, rows,
                 _join(about, f"attributes: {', '.join(r.schema.to_spec())}", note))


def dataset_repr(d: TransactionDataset) -> str:
    return f"TransactionDataset({d.name!r}, field={d.plugin.field!r}, timezone={d.plugin.timezone!r})"


def dataset_html(d: TransactionDataset) -> str:
    rows, note = _field_rows([d.plugin])
    st = _in_memory(d.plugin)
    if st is None:
        applied = f"applied objects {NOT_LOADED}"
    else:
        manifest = st.manifest_of(d.plugin.field)
        size = manifest["size"].sum() if manifest.height else 0
        applied = f"{manifest.height:,} applied objects · {int(size or 0):,} bytes"
    return table(f"Transactions {d.name}", FIELD_HEADER, rows,
                 _join(applied, "partitions cohortMonth=YYYY-MM/cohortDate=YYYY-MM-DD", note))


def database_repr(db: Database) -> str:
    return f"Database({db.uri!r}, resources={sorted(db._resources)})"


def database_html(db: Database) -> str:
    rows: list[tuple[Any, ...]] = []
    for name, res in sorted(db._resources.items()):
        st = res.ledger.in_memory()
        rows.append((name, _records(st), st.version if st is not None else NOT_LOADED,
                     ", ".join(f"{f} ({p.reducer_name})" for f, p in res.plugins.items())))
    rows += [(name, "unreadable", None, str(err)) for name, err in sorted(db._broken.items())]
    return table(f"ecanalytics at {db.uri}", ("resource", "records", "version", "managed fields"), rows)


def result_repr(r: ConsolidationResult) -> str:
    conflicts = r.conflicts.height
    extra = "".join(f", {k}={v}" for k, v in (("late", r.late), ("held", r.held), ("conflicts", conflicts)) if v)
    return (f"ConsolidationResult({r.resource}.{r.field}, version={r.version}, transactions={r.transactions}, "
            f"records={r.records}, objects={r.objects}{extra}, {r.duration_s * 1000:.1f} ms)")


def result_html(r: ConsolidationResult) -> str:
    rows = [(k, len(v) if k == "conflicts" and isinstance(v, list) else v)
            for k, v in r.as_dict().items() if k not in ("resource", "field")]
    preview = r.values.head(5)
    values = "".join(f"{rid}={v}, " for rid, v in preview.iter_rows())
    more = f" … and {r.values.height - preview.height:,} more" if r.values.height > preview.height else ""
    return table(f"Consolidation of {r.resource}.{r.field}", ("", "value"), rows,
                 f"values: {values.rstrip(', ')}{more}" if r.values.height else "")
