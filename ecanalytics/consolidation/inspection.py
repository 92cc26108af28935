"""A field's health, read only: the backlog and its age, held rows, stale markers, key conflicts.

:func:`health` never writes or deletes (safe with read-only credentials); :func:`probe_deletes`
is the one call that deletes, on request, to learn whether deletes are allowed.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import polars as pl

from ecanalytics import _runtime
from ecanalytics.consolidation.eventorder import late_rows
from ecanalytics.consolidation.field import Field
from ecanalytics.storage import paths as P


def health(c: Field, *, latest_conflicts: int, delete_probe: bool | None) -> dict[str, Any]:
    """The keys of :meth:`ecanalytics.EventualConsistencyPlugin.inspect`, from the latest state and
    one LIST of the inbox; ``delete_probe`` is the last :func:`probe_deletes` answer, if any."""
    st = c.ledger.state()
    pending = c.pending(st, cleanup=False)
    held = c.held_frame(st)
    fresh = pending.rows.join(held.select("id"), on="id", how="anti")
    kept = c.conflicts_frame(st)
    reasons = held.group_by("_reason").len().sort("_reason") if held.height else None
    return {
        "pending": fresh.height,
        "late": int(late_rows(fresh, st.field_marks(c.field)).sum()) if fresh.height else 0,
        **backlog_age(fresh, sorted(pending.objects)),
        "held": held.height,
        "heldRecords": sorted(held["originalId"].unique().to_list()),
        "heldReasons": dict(zip(reasons["_reason"].to_list(), reasons["len"].to_list(), strict=True))
        if reasons is not None else {},
        "staleMarkers": len(pending.stale_markers),
        "deleteDenied": True if c.store.delete_denied else delete_probe,
        "conflicts": kept.height,
        "latestConflicts": kept.tail(latest_conflicts).to_dicts() if latest_conflicts > 0 else [],
    }


def probe_deletes(c: Field) -> dict[str, Any]:
    """**Deletes one object**: one stale consumed marker of ``c``'s inbox, if there is one (always
    safe: see :meth:`ecanalytics.EventualConsistencyPlugin.probe_permissions`)."""
    stale = c.stale_markers(c.ledger.state())
    if not stale:
        return {"staleMarkers": 0, "deleteDenied": None, "probed": None}
    seen, c.store.delete_denied = c.store.delete_denied, False  # the flag is shared by every field
    c.store.delete([stale[0]])
    refused = c.store.delete_denied
    c.store.delete_denied = seen or refused
    denied = refused or c.store.exists(stale[0])  # a silent no-op counts too
    return {"staleMarkers": len(stale), "deleteDenied": denied, "probed": c.store.url(stale[0])}


def backlog_age(rows: pl.DataFrame, objects: list[str]) -> dict[str, Any]:
    """The backlog's age by write time (the file id of each row's object starts with its writer's
    nanoseconds) and by event time; the names of the ``pending_backlog`` report."""
    indexes = rows["_object"].drop_nulls().unique().to_list() if rows.height else []
    written_ns = min((P.file_id_time_ns(objects[i].rsplit("/", 1)[-1]) for i in indexes), default=None)
    oldest_event: datetime | None = rows["timestamp"].min() if rows.height else None  # type: ignore[assignment]
    now = _runtime.now()
    written = None if written_ns is None else datetime.fromtimestamp(written_ns / 1e9, timezone.utc)
    return {
        "oldestWrittenAt": written,
        "ageSeconds": round(max(0.0, _runtime.time_ns() - written_ns) / 1e9, 3) if written_ns is not None else 0.0,
        "oldestEventAt": oldest_event,
        "eventAgeSeconds": round((now - oldest_event).total_seconds(), 3) if oldest_event is not None else 0.0,
    }
