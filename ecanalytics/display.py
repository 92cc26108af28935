"""Short reprs and Jupyter HTML for the user-facing objects.

``__repr__`` stays one line and cheap (the cached state: at most one small read); the HTML view
may LIST each field's inbox to show the pending backlog, which is what a notebook user looks for.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ecanalytics.consolidation import ConsolidationResult
    from ecanalytics.database import Database
    from ecanalytics.plugin import EventualConsistencyPlugin
    from ecanalytics.resource import Resource, TransactionDataset


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


def _field_rows(fields: Iterable[EventualConsistencyPlugin]) -> list[tuple[Any, ...]]:
    rows = []
    for p in fields:
        try:
            health = p.inspect()
            pending, held, oldest = health["pending"], health["held"], health.get("oldestWrittenAt")
        except Exception:  # a display must not raise (e.g. a missing custom reducer)
            pending = held = oldest = None
        rows.append((p.field, p.reducer_name, p.timezone, p.mode, pending, oldest, held))
    return rows


FIELD_HEADER = ("field", "reducer", "timezone", "mode", "pending", "oldest pending (written)", "held")


def resource_repr(r: Resource) -> str:
    st = r.ledger.state()
    return f"Resource({r.name!r}, records={st.records.height}, fields={list(r.plugins)}, version={st.version})"


def resource_html(r: Resource) -> str:
    st = r.ledger.state()
    note = f"{st.records.height:,} records · version {st.version} · attributes: {', '.join(r.schema.to_spec())}"
    return table(f"Resource {r.name}", FIELD_HEADER, _field_rows(r.plugins.values()), note)


def dataset_repr(d: TransactionDataset) -> str:
    return f"TransactionDataset({d.name!r}, field={d.plugin.field!r}, timezone={d.plugin.timezone!r})"


def dataset_html(d: TransactionDataset) -> str:
    objects, size = d.plugin.consolidator.store.du(d.name, ".parquet")
    return table(f"Transactions {d.name}", FIELD_HEADER, _field_rows([d.plugin]),
                 f"{objects:,} objects · {size:,} bytes · partitions cohortMonth=YYYY-MM/cohortDate=YYYY-MM-DD")


def database_repr(db: Database) -> str:
    return f"Database({db.uri!r}, resources={sorted(db._resources)})"


def database_html(db: Database) -> str:
    rows: list[tuple[Any, ...]] = []
    for name, res in sorted(db._resources.items()):
        st = res.ledger.state()
        rows.append((name, st.records.height, st.version, ", ".join(f"{f} ({p.reducer_name})" for f, p in res.plugins.items())))
    rows += [(name, "unreadable", None, str(err)) for name, err in sorted(db._broken.items())]
    return table(f"ecanalytics at {db.uri}", ("resource", "records", "version", "managed fields"), rows)


def result_repr(r: ConsolidationResult) -> str:
    extra = "".join(f", {k}={v}" for k, v in (("late", r.late), ("held", r.held)) if v)
    return (f"ConsolidationResult({r.resource}.{r.field}, version={r.version}, transactions={r.transactions}, "
            f"records={r.records}, objects={r.objects}{extra}, {r.duration_s * 1000:.1f} ms)")


def result_html(r: ConsolidationResult) -> str:
    rows = [(k, v) for k, v in r.as_dict().items() if k not in ("resource", "field")]
    preview = r.values.head(5)
    values = "".join(f"{rid}={v}, " for rid, v in preview.iter_rows())
    more = f" … and {r.values.height - preview.height:,} more" if r.values.height > preview.height else ""
    return table(f"Consolidation of {r.resource}.{r.field}", ("", "value"), rows,
                 f"values: {values.rstrip(', ')}{more}" if r.values.height else "")
