"""``EventualConsistencyPlugin``: one managed numeric field of one resource."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import polars as pl

from ecanalytics import _runtime, display
from ecanalytics.consolidation import BUILTIN_REDUCERS, ConsolidationResult, Consolidator, Reducer, inspection
from ecanalytics.consolidation.consolidator import FoldEngine
from ecanalytics.errors import (
    ConfigurationError,
    InvalidValueError,
    KeyConflictError,
    ReducerRequiredError,
    TransactionHeldError,
)
from ecanalytics.events import Callback, Events
from ecanalytics.groupcommit import Batch, GroupCommit
from ecanalytics.ledger import Attribute, new_tx_id
from ecanalytics.ledger.keys import AUTO_ID_PREFIX
from ecanalytics.ledger.transactions import (
    PlannedObject,
    check_amount,
    check_timestamp,
    check_timezone,
    plan_objects,
    tx_frame,
    write_transactions,
)
from ecanalytics.storage import paths as P
from ecanalytics.types import BuiltinReducer, Mode, Operation, PythonReducer, is_positive_int

if TYPE_CHECKING:
    from ecanalytics.analytics import SqlEngine
    from ecanalytics.analytics.cohorts import Cohorts
    from ecanalytics.ledger import Ledger, Schema

log = logging.getLogger(__name__)
LATEST_CONFLICTS = 5  # key conflicts inspect() lists (it counts them all)


class EventualConsistencyPlugin:
    """Keep ``resource.field`` eventually consistent through add/sub/set transactions.

    Args:
        resource: the resource name (it may be created later: setup is deferred until then).
        field: the numeric attribute to manage.
        mode: ``"async"`` (writes return once durable, or buffered when batching) or ``"sync"``
            (writes return the committed new value; concurrent sync writers in a process share
            one consolidation).
        auto_consolidate: consolidate every ``consolidation_interval`` seconds on a background
            thread, stopped by ``db.close()``.
        consolidation_interval: seconds between background consolidations.
        cohort: ``{"timezone": "America/Sao_Paulo"}``; an IANA zone, default UTC.
        batch_transactions: buffer up to ``batch_size`` transactions per Parquet object.
        batch_size: buffered transactions that trigger a flush.
        flush_interval: seconds after which a non-empty buffer is flushed anyway.
        reducer: None (last ``set`` then adds/subs), a built-in name (``"sum"``, ``"max"``,
            ``"min"``, ``"last"``) or a Python callable ``reducer(transactions) -> number``.

    Example:
        >>> plugin = EventualConsistencyPlugin(resource="wallets", field="balance", mode="sync")
        >>> plugin.dataset
        'wallets_transactions_balance'
    """

    def __init__(
        self,
        resource: str,
        field: str,
        *,
        mode: Mode = "async",
        auto_consolidate: bool = True,
        consolidation_interval: float = 3600.0,
        cohort: dict[str, str] | None = None,
        batch_transactions: bool = False,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        reducer: BuiltinReducer | PythonReducer | None = None,
    ) -> None:
        self.resource_name = P.validate_resource_name(resource)
        self.field = P.validate_name("field", field)
        if mode not in ("sync", "async"):
            raise ConfigurationError(f"mode must be 'sync' or 'async'; got {mode!r}.")
        for name, value in (("consolidation_interval", consolidation_interval), ("flush_interval", flush_interval)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ConfigurationError(f"{name} must be a positive number of seconds; got {value!r}.")
        if not is_positive_int(batch_size):
            raise ConfigurationError(f"batch_size must be a positive integer; got {batch_size!r}.")
        cohort = dict(cohort or {})
        unknown = set(cohort) - {"timezone"}
        if unknown:
            raise ConfigurationError(f"Unknown cohort option(s) {sorted(unknown)}; only 'timezone' is supported.")
        self.timezone = check_timezone(cohort.get("timezone", "UTC"))
        self.mode: Mode = mode
        self.auto_consolidate = bool(auto_consolidate)
        self.consolidation_interval = float(consolidation_interval)
        self.batch_transactions = bool(batch_transactions)
        self.batch_size = batch_size
        self.flush_interval = float(flush_interval)
        self._reducer: Reducer | None = Reducer(reducer)
        self._missing_reducer: str | None = None
        self._events = Events()
        self._attr: Attribute | None = None
        self._sql: Callable[[], SqlEngine] | None = None  # given by the database this plugin is attached to
        self._consolidator: Consolidator | None = None
        self._buffer: list[dict[str, Any]] = []
        self._unsure: list[PlannedObject] = []  # objects of a failed flush, retried under the same names
        self._maybe_written: str | None = None  # key of the object whose write failed: it may exist
        self._buffer_since = 0.0
        self._buffer_lock = threading.Lock()  # the buffer and the failed flush's objects
        self._flush_lock = threading.Lock()  # one flush at a time; writers keep adding meanwhile
        self._group_commit = GroupCommit(self._run_batch)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # What reprs may show without a request: the last inspect() (when, what) and probe result.
        self._last_inspect: tuple[datetime, dict[str, Any]] | None = None
        self._delete_probe: bool | None = None

    def __repr__(self) -> str:
        """One line from the configuration alone: no request."""
        return display.plugin_repr(self.field_view(configuration_only=True))

    def _repr_html_(self) -> str:
        """The field's row from what this process holds (no request; the backlog as of the last
        :meth:`inspect`, if any)."""
        return display.plugin_html(self.field_view())

    def field_view(self, *, configuration_only: bool = False) -> display.FieldView:
        """What this field's row in a notebook view shows, from what this process already holds
        (no request): the configuration; the backlog of the last :meth:`inspect`, if any; the held
        rows and key conflicts of the state in memory, if loaded."""
        c = self._consolidator
        view = display.FieldView(self.resource_name, self.field, self.reducer_name, self.timezone, self.mode,
                                 attached=c is not None)
        if configuration_only:
            return view
        if self._last_inspect is not None:
            at, health = self._last_inspect
            view = dataclasses.replace(view, pending=health["pending"], oldest=health["oldestWrittenAt"],
                                       inspected_at=at)
        st = c.ledger.in_memory() if c is not None else None
        if c is not None and st is not None:
            view = dataclasses.replace(view, held=c.held_frame(st).height, conflicts=c.conflicts_frame(st).height)
        return view

    # -- identity and persistence ----------------------------------------------------------
    @property
    def dataset(self) -> str:
        """Name of this field's transaction dataset."""
        return P.transactions_dataset(self.resource_name, self.field)

    @property
    def reducer_name(self) -> str:
        return self._reducer.name if self._reducer else str(self._missing_reducer)

    def config(self) -> dict[str, Any]:
        """The options as stored in the catalog."""
        return {
            "mode": self.mode, "auto_consolidate": self.auto_consolidate,
            "consolidation_interval": self.consolidation_interval, "cohort": {"timezone": self.timezone},
            "batch_transactions": self.batch_transactions, "batch_size": self.batch_size,
            "flush_interval": self.flush_interval, "reducer": self.reducer_name,
        }

    @classmethod
    def from_config(cls, resource: str, field: str, config: dict[str, Any]) -> EventualConsistencyPlugin:
        """Rebuild a plugin from the catalog. A custom Python reducer cannot be stored: it must be
        passed again before consolidating (writes keep working meanwhile)."""
        options = dict(config)
        reducer = options.pop("reducer", "default")
        custom = isinstance(reducer, str) and reducer.startswith("python:")
        try:
            plugin = cls(resource, field, reducer=None if custom else reducer, **options)
        except ConfigurationError:
            if not isinstance(reducer, str) or reducer in BUILTIN_REDUCERS:
                raise
            custom = True  # a named reducer whose package is not installed here
            plugin = cls(resource, field, reducer=None, **options)
        if custom:
            plugin._reducer, plugin._missing_reducer = None, reducer
        return plugin

    # -- events ----------------------------------------------------------------------------
    def on(self, event: str, callback: Callback) -> Callback:
        """Call ``callback(payload)`` on ``event`` (see :data:`ecanalytics.events.EVENTS`);
        returns the callback. A listener that raises is logged and skipped."""
        return self._events.on(event, callback)

    def off(self, event: str, callback: Callback) -> None:
        """Stop calling ``callback`` on ``event``."""
        self._events.off(event, callback)

    def _error(self, stage: str, exc: BaseException, **extra: Any) -> None:
        self._events.emit("eventual-consistency.transaction-error", {
            "resource": self.resource_name, "field": self.field, "stage": stage,
            "error": exc, "message": str(exc), **extra,
        })

    # -- lifecycle -------------------------------------------------------------------------
    def _attach(self, ledger: Ledger, schema: Schema, sql: Callable[[], SqlEngine]) -> None:
        """Wire this plugin to its resource's ``ledger`` and ``schema`` and to its database's SQL
        engine (the database calls this when it opens or creates the resource; users call
        ``db.use_plugin``)."""
        self._sql = sql
        attr = schema.attributes.get(self.field)
        if attr is None or not attr.numeric:
            raise ConfigurationError(
                f"Field {self.field!r} of {self.resource_name!r} must be a 'number' or 'decimal(p,s)' attribute to be managed; "
                f"the schema has {attr.spec if attr else 'no such attribute'}."
            )
        # A permanent object keeps the inbox prefix non-empty: listing it is then always one LIST.
        ledger.store.create(f"{P.inbox_dir(self.dataset)}/.keep", b"")
        self._consolidator = Consolidator(
            ledger, self.field, self._require_reducer,
            attr.default if attr.default is not None else (Decimal(0) if attr.kind == "decimal" else 0.0), attr.dtype,
            self.timezone,
        )
        self._attr = attr
        if self.auto_consolidate or self.batch_transactions:
            self._thread = threading.Thread(target=self._background, name=f"ec-{self.dataset}", daemon=True)
            self._thread.start()

    def supply_reducer(self, func: PythonReducer) -> None:
        """Give a field configured with a custom Python reducer its function in this process
        (functions are not stored in the catalog). Nothing is persisted, and a field whose stored
        reducer is a built-in one refuses: use ``db.use_plugin`` to change a reducer on purpose."""
        if self._reducer is not None and self._reducer.is_builtin:
            raise ConfigurationError(
                f"{self.resource_name}.{self.field} uses the built-in reducer {self._reducer.name!r}; a reducer is "
                "supplied only to a field configured with a custom one. To change it, use db.use_plugin(...)."
            )
        self._reducer, self._missing_reducer = Reducer(func), None

    def _require_reducer(self) -> Reducer:
        if self._reducer is None:
            raise ReducerRequiredError(
                f"{self.resource_name}.{self.field} was configured with the custom reducer {self._missing_reducer}, "
                "and Python functions are not stored in the catalog. Pass it again: db.use_plugin("
                f"ec.EventualConsistencyPlugin(resource={self.resource_name!r}, field={self.field!r}, reducer=<function>))."
            )
        return self._reducer

    @property
    def consolidator(self) -> Consolidator:
        if self._consolidator is None:
            raise ConfigurationError(
                f"Plugin for {self.resource_name}.{self.field} is waiting for its resource: "
                f"db.create_resource({self.resource_name!r}, ...) first."
            )
        return self._consolidator

    def _background(self) -> None:
        tick = min(self.flush_interval, self.consolidation_interval) if self.batch_transactions else self.consolidation_interval
        last = time.monotonic()
        while not self._stop.wait(tick):
            try:
                if self.batch_transactions:
                    with self._buffer_lock:
                        due = bool(self._unsure) or (
                            bool(self._buffer) and time.monotonic() - self._buffer_since >= self.flush_interval)
                    if due:
                        self.flush()
                if self.auto_consolidate and time.monotonic() - last >= self.consolidation_interval:
                    last = time.monotonic()
                    self.consolidate()
            except Exception as exc:  # reported through events; the thread keeps running
                log.warning("Background work on %s failed: %s", self.dataset, exc)

    def close(self) -> None:
        """Flush the buffer and stop the background thread."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        self.flush()

    # -- writes ----------------------------------------------------------------------------
    def transaction(
        self, record_id: str, operation: Operation, amount: object, *,
        tx_id: str | None = None, timestamp: datetime | None = None, source: str | None = None,
    ) -> dict[str, Any]:
        """Validate and build one transaction row (nothing is written)."""
        P.validate_record_id(record_id)
        value = check_amount(amount, self._attr)
        if tx_id is not None:
            P.validate_record_id(tx_id)
            if tx_id.startswith(AUTO_ID_PREFIX):
                raise InvalidValueError(f"Transaction ids starting with {AUTO_ID_PREFIX!r} are reserved; choose another key.")
        if source is not None and (not isinstance(source, str) or not P.is_encodable(source)):
            raise InvalidValueError(f"source must be a UTF-8 string; got {type(source).__name__} {P.describe(source)}.")
        ts = check_timestamp(timestamp) if timestamp is not None else _runtime.now()
        return {"id": tx_id or new_tx_id(), "originalId": record_id, "field": self.field, "value": value,
                "operation": operation, "timestamp": ts, "source": source or "api"}

    def write(self, row: dict[str, Any]) -> float | Decimal | None:
        """Persist (or buffer) one validated transaction; in sync mode, return the committed value."""
        consolidator = self.consolidator
        if self.batch_transactions and self.mode == "async":
            with self._buffer_lock:
                if not self._buffer:
                    self._buffer_since = time.monotonic()
                self._buffer.append(row)
                # Rows of a failed flush count too: the next flush retries them with the buffer.
                full = len(self._buffer) + sum(o.rows.height for o in self._unsure) >= self.batch_size
            if full:
                self.flush()
            return None
        if self.mode == "async":
            try:
                write_transactions(consolidator.store, self.dataset, self.timezone, tx_frame([row], consolidator.dtype))
            except Exception as exc:
                self._error("write", exc, recordId=row["originalId"])
                raise
            return None
        self._group_commit.join(row=row, seen=consolidator.ledger.cached().version)  # the version seen before the write
        # This transaction held (this occurrence, or an earlier one it retries: the same record,
        # operation and amount, whatever its timestamp), not another that reuses its key.
        held = consolidator.held_frame(consolidator.ledger.cached()).filter(
            (pl.col("id") == row["id"]) & (pl.col("originalId") == row["originalId"])
            & (pl.col("operation") == row["operation"]) & (pl.col("value") == row["value"]))
        if held.height:  # durable and pending, but not committed: sync mode must not pretend it is
            raise TransactionHeldError(
                f"The transaction {row['id']!r} on {self.resource_name}.{self.field} of {row['originalId']!r} is "
                f"stored but held ({held['_reason'][0]}): "
                + ("the record does not exist and has required attributes without defaults; insert it and "
                   "the transaction is applied at the next consolidation." if held["_reason"][0] == "awaiting-record"
                   else "the record's value cannot be folded; see plugin.inspect()."),
                record_id=row["originalId"])
        if not row["id"].startswith(AUTO_ID_PREFIX):
            self._raise_if_conflict(row)
        return self._committed_value(row["originalId"])

    def _raise_if_conflict(self, row: dict[str, Any]) -> None:
        """:class:`KeyConflictError` if the commit that took ``row`` (a sync write with a
        caller-supplied id) dropped it as a conflict: its key counts for another transaction."""
        conflicts = self.consolidator.ledger.cached().conflicts.get(self.field)
        if conflicts is None or not conflicts.height:
            return
        value = pl.Series([row["value"]], dtype=self.consolidator.dtype).cast(pl.String)[0]  # as conflicts keep it
        mine = conflicts.filter((pl.col("id") == row["id"]) & (pl.col("originalId") == row["originalId"])
                                & (pl.col("operation") == row["operation"]) & (pl.col("value") == value)
                                & (pl.col("timestamp") == row["timestamp"]))
        if mine.height:
            reason = mine["reason"][-1]
            raise KeyConflictError(
                f"The id {row['id']!r} was already used on {self.resource_name}.{self.field} for another transaction "
                f"({reason.replace('_', ' ')}): this {row['operation']} of {row['originalId']!r} is stored but never "
                "applied, since a key means one transaction. Send a new id for a new transaction.",
                record_id=row["originalId"], reason=reason)

    def _committed_value(self, record_id: str) -> float | Decimal:
        """The record's value in the state this process committed or saw last (no request)."""
        found = self.consolidator.ledger.cached().records_of([record_id])
        value = found[self.field][0] if found.height else None
        default = self.consolidator.default
        return (value if isinstance(value, Decimal) else float(value)) if value is not None else default

    def write_frame(self, txs: pl.DataFrame, *, batch_size: int = 1_000_000,
                    progress: Callable[[int], None] | None = None) -> float | Decimal | None:
        """Write validated transaction rows (see :func:`ecanalytics.ledger.ingest.transactions`) as
        one object per cohort day per at most ``batch_size`` rows, marker first, through the same
        exactly-once path as single writes. In ``sync`` mode, return after the commit. ``progress``
        is called with the number of rows written so far."""
        if not is_positive_int(batch_size):
            raise ConfigurationError(f"batch_size must be a positive integer; got {batch_size!r}.")
        store = self.consolidator.store
        seen = self.consolidator.ledger.cached().version if self.mode == "sync" else 0  # before the writes
        planned = plan_objects(self.dataset, self.timezone, txs, batch_size)
        done = 0
        try:
            # A few objects in flight at once: on S3 each PUT is a round trip.
            with _runtime.executor(min(8, max(1, len(planned)))) as pool:
                for rows in pool.map(lambda obj: (obj.write(store), obj.rows.height)[1], planned):
                    done += rows
                    if progress is not None:
                        progress(done)
        except Exception as exc:
            self._error("write", exc, count=txs.height - done)
            raise
        if self.mode == "sync":
            self._group_commit.join(objects=[(obj, seen) for obj in planned], seen=seen)
        return None

    def flush(self) -> int:
        """Write buffered transactions now (one object per cohort day); returns how many were written.

        A flush that fails part-way knows exactly which objects are durable: those written before
        the failure are done and leave the buffer. The object whose write failed may or may not
        exist (a lost answer), so it is retried under the *same* name, and skipped if it exists by
        then, live or archived; the objects after it were never tried.
        """
        store = self.consolidator.store
        # The buffer is only held to take its rows: the writes run under the flush lock, so adds
        # from other threads go on while objects are encoded and written (on S3, a round trip
        # each). A flush waits for the one before it, so when it returns every row added before
        # it was called is durable, or it raised.
        with self._flush_lock:
            with self._buffer_lock:
                rows, self._buffer = self._buffer, []
                planned, self._unsure = list(self._unsure), []
            if rows:
                try:
                    planned += plan_objects(self.dataset, self.timezone, tx_frame(rows, self.consolidator.dtype))
                except BaseException:  # nothing was written: the rows go back, ahead of newer ones
                    with self._buffer_lock:
                        self._buffer[:0] = rows
                        self._unsure = planned
                    raise
            if not planned:
                return 0
            written = 0
            for index, obj in enumerate(planned):
                try:
                    if obj.key == self._maybe_written and (
                            store.exists(obj.key) or store.exists(P.archive_key(obj.key))):
                        continue  # the failed write had landed after all
                    obj.write(store)
                    written += obj.rows.height
                except Exception as exc:
                    with self._buffer_lock:
                        self._unsure = planned[index:]
                    self._maybe_written = obj.key
                    self._error("flush", exc, count=sum(o.rows.height for o in planned[index:]))
                    raise
            self._maybe_written = None
        return written

    def _run_batch(self, batch: Batch) -> None:
        """Run one group-commit batch: write its single writes as one object per cohort day, then
        commit them with the objects writers of frames already wrote."""
        objects = list(batch.objects)
        if batch.rows:
            c = self.consolidator
            try:
                written = write_transactions(c.store, self.dataset, self.timezone, tx_frame(batch.rows, c.dtype))
            except Exception as exc:
                self._error("write", exc, count=len(batch.rows))
                raise
            objects += [(obj, batch.seen) for obj in written]
        self.flush()
        self._commit_written(objects)

    def _commit_written(self, batch: list[tuple[PlannedObject, int]]) -> None:
        """Commit what sync writers wrote: the lean path when it can decide, else a full run."""
        result = None
        if batch and not self._buffer and not self._unsure:
            try:
                result = self.consolidator.run_known([o for o, _ in batch], min(v for _, v in batch))
            except Exception as exc:
                self._error("consolidate", exc)
                raise
        if result is None:
            self.consolidate()
        elif result.version is not None:
            self._emit_consolidated(result)

    def _emit_consolidated(self, result: ConsolidationResult) -> None:
        """The ``consolidated`` event: :meth:`ConsolidationResult.as_dict` (its ``conflicts`` are the
        reused keys this run did not apply) plus ``recordCount``, ``transactionCount`` and
        ``conflictCount``."""
        self._events.emit("eventual-consistency.consolidated", {
            **result.as_dict(), "recordCount": result.records, "transactionCount": result.transactions,
            "conflictCount": result.conflicts.height,
        })

    # -- consolidation ---------------------------------------------------------------------
    def consolidate(self, engine: FoldEngine | None = None) -> ConsolidationResult:
        """Consolidate every pending transaction of this field and commit the new values
        (``engine``: fold elsewhere, e.g. on a Dask cluster; see :meth:`Database.consolidate`)."""
        self.flush()
        try:
            result = self.consolidator.run(engine)
        except Exception as exc:
            self._error("consolidate", exc)
            raise
        if result.version is not None:
            self._emit_consolidated(result)
        return result

    # -- analytics (DuckDB) ----------------------------------------------------------------
    def _cohorts(self) -> Cohorts:
        if self._sql is None:
            raise ConfigurationError(f"Plugin for {self.dataset} is not attached: db.use_plugin(plugin) first.")
        from ecanalytics.analytics.cohorts import Cohorts

        self.consolidator  # noqa: B018 - raises a clear error while setup is deferred
        return Cohorts(self._sql(), self.dataset, self.timezone)

    def get_cohort_stats(self, date: str | dt.date) -> dict[str, Any]:
        """``{date, transactionCount, byOperation: {set, add, sub}, totalValue}`` of one cohort day
        in the plugin's zone. ``totalValue`` is the signed sum (a ``sub`` counts negative)."""
        return self._cohorts().stats(date)

    def get_analytics(
        self, period: str = "day", start: Any = None, end: Any = None, record_id: str | None = None,
        fill_gaps: bool = False,
    ) -> pl.DataFrame:
        """One row per cohort of ``period`` (hour, day, week, month) from ``start`` to ``end``
        inclusive: ``cohort, transactionCount, totalValue, avgValue, minValue, maxValue, recordCount`` plus
        ``{set,add,sub}Count`` and ``{set,add,sub}Sum`` (the names of the SQL reports). Signed values. ``fill_gaps`` adds zero rows for empty cohorts.
        ``start``/``end`` default to the last 30 days."""
        today = _runtime.now()
        start = start if start is not None else today - dt.timedelta(days=29)
        end = end if end is not None else today
        return self._cohorts().analytics(period, start, end, record_id, fill_gaps)

    def get_top_records(self, period: str, date: Any, metric: str = "transactionCount", limit: int = 10) -> pl.DataFrame:
        """The records with the most transactions (or the largest signed total) in one cohort:
        ``originalId, transactionCount, totalValue``, as in the ``top_records`` report."""
        return self._cohorts().top_records(period, date, metric, limit)

    def get_last_n(self, period: str, n: int, fill_gaps: bool = True) -> pl.DataFrame:
        """Rollups of the last ``n`` cohorts of ``period``, ending with the current one."""
        return self._cohorts().last_n(period, n, fill_gaps)

    def inspect(self, *, latest_conflicts: int = LATEST_CONFLICTS) -> dict[str, Any]:
        """Health of this field. **Only reads**: the state, one LIST of the inbox and the pending
        objects; it never writes or deletes, so it is safe with read-only credentials (deletes are
        probed by :meth:`probe_permissions`, on request). Keys:

        * ``pending``: pending rows (``late``: how many of them sort before what their record
          already applied);
        * the backlog's age by *write* time (``oldestWrittenAt``, ``ageSeconds``: when the oldest
          pending object was written, by its writer's clock, which is what an alert on a stuck
          consolidator needs) and by event time (``oldestEventAt``, ``eventAgeSeconds``: a
          backfill may be old yet just written);
        * ``held`` rows, ``heldRecords`` and ``heldReasons`` (``overflow``, ``reducer-error``,
          ``awaiting-record``: transactions of a record that does not exist yet and has required
          attributes without defaults);
        * ``staleMarkers``: inbox markers of applied objects that deletes have not removed;
          ``deleteDenied``: True when this process saw the store refuse a delete or the last
          :meth:`probe_permissions` found deletes denied, False when that probe found them
          allowed, None when unknown;
        * ``conflicts``: how many key conflicts the state keeps (caller-supplied ids reused for
          another record, operation or amount, which were not applied; the newest 1,000 are
          kept), and ``latestConflicts``: the newest ``latest_conflicts`` of them (default 5), oldest
          first, each ``id, originalId, operation, value, timestamp, reason``.

        Example:
            >>> health = wallets.plugin().inspect()  # doctest: +SKIP
            >>> health["pending"], health["conflicts"]  # doctest: +SKIP
            (0, 0)
        """
        health = inspection.health(self.consolidator, latest_conflicts=latest_conflicts, delete_probe=self._delete_probe)
        self._last_inspect = (_runtime.now(), health)
        return health

    def probe_permissions(self) -> dict[str, Any]:
        """**Deletes one object.** Learn whether the store allows deletes under this field's inbox
        by deleting one stale consumed marker (an inbox marker whose object is already applied):
        always safe, since that key stays consumed until a later LIST shows the marker gone, and
        the next consolidation would delete it anyway. Returns ``staleMarkers`` (before the
        probe), ``deleteDenied`` (True when the delete was refused or silently did nothing, False
        when it worked, None when there was no stale marker, and then nothing is deleted) and
        ``probed`` (the marker's URL, or None). :meth:`inspect` reports the answer from then on.
        ``ecanalytics inspect --probe-permissions`` runs it for every field.

        Stale markers pile up only where deletes fail: append-only credentials (PUT, GET and LIST
        but no DELETE) keep exactly once, at the cost of listing and carrying every consumed
        marker; grant ``s3:DeleteObject`` on ``*/_inbox/*`` to stay cheap.
        """
        found = inspection.probe_deletes(self.consolidator)
        if found["deleteDenied"] is not None:
            self._delete_probe = found["deleteDenied"]
        return found

    def pending(self) -> pl.DataFrame:
        """The pending (not yet applied) transactions, one per id as the next consolidation will
        count them, in event order (``timestamp``, ``id``), without committing anything."""
        consolidator = self.consolidator
        rows = consolidator.pending(consolidator.ledger.state(), cleanup=False).rows
        return rows.sort("timestamp", "id").drop("_object", "_row")

