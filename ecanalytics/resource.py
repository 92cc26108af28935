"""Resources (records keyed by ``id``) and transaction datasets, as users see them."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TYPE_CHECKING, Any, overload

import polars as pl

from ecanalytics import display
from ecanalytics.errors import (
    ArgumentError,
    ConfigurationError,
    ConsolidationError,
    FieldRequiredError,
    InvalidValueError,
    RecordExistsError,
    RecordNotFoundError,
    SchemaError,
    UnknownFieldError,
)
from ecanalytics.ledger import Commit, Ledger, Schema, State
from ecanalytics.storage import paths as P
from ecanalytics.types import Operation, is_positive_int

if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa

    from ecanalytics.maintenance import CompactionResult, Problem, RecalculationResult, RetentionResult
    from ecanalytics.plugin import EventualConsistencyPlugin

Filter = Mapping[str, Any]


_COMPARE = {"==": "eq", "!=": "ne", ">": "gt", ">=": "ge", "<": "lt", "<=": "le"}


def _literals(column: str, dtype: pl.DataType, values: list[Any]) -> pl.Series:
    if dtype == pl.Date:
        try:
            values = [dt.date.fromisoformat(v) if isinstance(v, str) else v for v in values]
        except ValueError as exc:
            raise InvalidValueError(f"Invalid date in the filter on {column!r}: {exc}; use YYYY-MM-DD.") from exc
    try:
        return pl.Series(values, dtype=dtype)
    except (TypeError, ValueError, pl.exceptions.PolarsError) as exc:
        raise InvalidValueError(f"The filter on {column!r} needs values of type {dtype}; got {values!r}.") from exc


def check_filter(where: object) -> Filter | None:
    """``where`` as a filter (None or an empty one: no filter), or :class:`ArgumentError`."""
    if where is None:
        return None
    if not isinstance(where, Mapping):
        raise ArgumentError(
            f"A filter is a dict of column -> value, e.g. {{'currency': 'USD'}} or {{'cohortDate': ['2026-11-27']}}; "
            f"got {P.describe(where)}. For anything richer use scan() with Polars expressions.")
    return where or None


def _apply_filter(df: pl.DataFrame, where: Filter | None) -> pl.DataFrame:
    """Filters: a value means equality, a list, tuple or set means "any of", and a dict of
    comparisons such as ``{"value": {">": 100, "<=": 500}}`` (``==, !=, >, >=, <, <=``) ANDs
    them. For anything richer, use ``scan()`` with Polars expressions."""
    where = check_filter(where)
    if where is None:
        return df
    exprs = []
    for column, value in where.items():
        if column not in df.columns:
            raise SchemaError(f"Cannot filter on unknown column {column!r}; columns are {df.columns}.")
        dtype = df.schema[column]
        if isinstance(value, Mapping):
            unknown = sorted(map(str, set(value) - set(_COMPARE)))
            if unknown or not value:
                raise InvalidValueError(
                    f"Unknown comparison(s) {unknown} in the filter on {column!r}; use {list(_COMPARE)}, "
                    "or scan().filter(...) with Polars expressions for anything else."
                )
            for op, operand in value.items():
                literal = _literals(column, dtype, [operand])[0]
                exprs.append(getattr(pl.col(column), _COMPARE[op])(pl.lit(literal, dtype)))
            continue
        values = list(value) if isinstance(value, (list, tuple, set, frozenset)) else [value]
        exprs.append(pl.col(column).is_in(_literals(column, dtype, values).implode()))
    return df.filter(exprs)


def _pandas(df: pl.DataFrame) -> pd.DataFrame:
    try:
        return df.to_pandas()
    except ModuleNotFoundError as exc:
        raise ConfigurationError('to_pandas() needs pandas: pip install "ecanalytics[pandas]".') from exc


def _number(value: Any) -> float | Decimal:
    """Managed values come back as float, or as an exact Decimal for decimal(p,s) fields."""
    return value if isinstance(value, Decimal) else float(value)


MAX_RETAIN_DAYS = 36_500
_RETAIN = re.compile(r"^([0-9]+)([dwh])\Z")  # ASCII digits only: '٣٠d' is not 30 days


def parse_days(value: int | str, *, bare_days: bool = False) -> int:
    """``30``, ``"30d"``, ``"4w"`` or ``"12h"`` -> whole cohort days (30, 28, 1).

    Retention works on whole cohort days, so hours round *up* to whole days (``"12h"`` and
    ``"24h"`` keep 1 day, ``"25h"`` keeps 2): it never removes more than asked. ``bare_days``
    reads a string of digits alone as days (the CLI's ``--retain 30``). Days run from 1 to
    :data:`MAX_RETAIN_DAYS` (100 years), so the cut stays a real date (``10**30`` used to
    overflow); to keep everything, do not run retention. Error messages quote ``value`` as given.
    """
    days: int | None = None
    if isinstance(value, str):
        text = f"{value}d" if bare_days and value.isascii() and value.isdigit() else value
        match = _RETAIN.match(text) if text.isascii() else None
        if match and len(match.group(1)) > 4000:  # int() refuses more than 4300 digits
            days = MAX_RETAIN_DAYS + 1
        elif match:
            number, unit = int(match.group(1)), match.group(2)
            days = number if unit == "d" else number * 7 if unit == "w" else -(-number // 24)
    elif isinstance(value, int) and not isinstance(value, bool):
        days = value
    if days is None or not 1 <= days <= MAX_RETAIN_DAYS:
        raise InvalidValueError(
            f"retain must be from 1 day to {MAX_RETAIN_DAYS} days, such as 30, '30d', '4w' or '12h' (hours round up "
            f"to whole cohort days); got {P.describe(value)}. To keep every transaction, do not run retention."
        )
    return days


class Resource:
    """A table of records keyed by ``id``. Managed fields change through ``add``/``sub``/``set``.

    Reads (``get``, ``query``, ``to_polars``, ``scan``) return the consolidated state; ``value``
    can also fold in pending transactions on the fly.
    """

    def __init__(self, name: str, schema: Schema, ledger: Ledger) -> None:
        self.name = name
        self.schema = schema
        self.ledger = ledger
        self.plugins: dict[str, EventualConsistencyPlugin] = {}

    def __repr__(self) -> str:
        """``Resource('wallets', records=4, fields=['balance'], version=1)`` from the state this
        process already holds, without a request ("not loaded" where it holds nothing yet)."""
        st = self.ledger.in_memory()
        return display.resource_repr(self.name, list(self.plugins), st.version if st else None,
                                     st.loaded_record_count() if st else None)

    def _repr_html_(self) -> str:
        """The Jupyter view: one row per managed field, from memory only (no request; the pending
        backlog is the last ``inspect()``'s, else "unknown — call inspect()")."""
        st = self.ledger.in_memory()
        return display.resource_html(self.name, [p.field_view() for p in self.plugins.values()],
                                     list(self.schema.to_spec()), st.version if st else None,
                                     st.loaded_record_count() if st else None)

    def to_arrow(self) -> pa.Table:
        """The consolidated records as a pyarrow Table (zero copy from Polars)."""
        return self.to_polars().to_arrow()

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        """The Arrow PyCapsule stream of the records: ``pa.table(wallets)``, ``pl.DataFrame(wallets)``
        and ``duckdb.sql("from wallets")`` read it without copies."""
        return self.to_polars().__arrow_c_stream__(requested_schema)

    def to_pandas(self) -> pd.DataFrame:
        """The records as a pandas DataFrame (``pip install "ecanalytics[pandas]"``)."""
        return _pandas(self.to_polars())

    @property
    def fields(self) -> tuple[str, ...]:
        """The managed fields."""
        return tuple(self.plugins)

    # -- schema evolution ------------------------------------------------------------------
    def add_attribute(self, name: str, spec: str) -> Resource:
        """Add an attribute to an existing resource; existing records read its default.

        The attribute must be optional or have a default (``"string|optional"``,
        ``"number|default:0"``). Adding one that exists with the same spec does nothing; any other
        change to an existing attribute raises :class:`SchemaEvolutionError`, as do changes stored
        data could not follow (see :meth:`Database.create_resource`). A new ``number`` attribute
        can then be managed by a plugin.

        Example:
            ``wallets.add_attribute("tier", "string|default:basic")``
        """
        self._evolve(lambda stored: Schema.parse({**stored.to_spec(), name: spec}))
        return self

    def _evolve(self, change: Callable[[Schema], Schema]) -> None:
        """Commit ``change`` (stored schema -> new schema) to the catalog and use the result from now
        on. The change is checked and applied on the latest catalog version, and again on a
        concurrent writer's version if one wins the race, so no concurrent change is lost.
        Processes that connected before keep the old schema and raise :class:`StaleSchemaError`
        once they read a record with the new attributes, so they never write one back without them."""
        from ecanalytics.ledger import catalog as cat

        def apply(entry: dict[str, Any]) -> dict[str, Any]:
            stored = Schema.parse(entry["attributes"])
            new = change(stored)
            stored.check_evolution(new, self.name)
            entry["attributes"] = new.to_spec()
            return entry

        entry = cat.update(self.ledger.store, self.name, apply)
        new = Schema.parse(entry["attributes"]) if entry is not None else change(self.schema)
        self.schema = new
        self.ledger.set_schema(new)

    # -- records ---------------------------------------------------------------------------
    def _check_unmanaged(self, values: Mapping[str, Any], verb: str) -> None:
        managed = sorted(set(values) & set(self.plugins))
        if managed:
            raise SchemaError(f"{managed} are managed fields; change them with set/add/sub, not {verb}().")

    def insert(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """Insert a new record; managed fields may be given their starting value here."""
        row = self.schema.new_record(dict(record))

        def build(st: State) -> Commit:
            if st.records_of([row["id"]]).height:
                raise RecordExistsError(f"{self.name} already has a record {row['id']!r}; use update() instead.")
            return Commit("insert", upserts=self.schema.frame([row]))

        self.ledger.commit(build)
        return row

    def insert_many(self, records: Any) -> int:
        """Insert many new records in **one commit**; returns how many.

        ``records`` is a Polars DataFrame or LazyFrame, a pyarrow Table or RecordBatchReader,
        anything with ``__arrow_c_stream__`` (pandas), or a list of dicts, with an ``id`` column
        and any attributes of the schema (defaults fill the rest). The frame is validated as a
        whole and rejected whole (first bad row and count in the error): invalid or repeated ids,
        unknown attributes, missing required ones, values of the wrong type. An id that exists
        already raises :class:`RecordExistsError`.

        Example:
            >>> wallets.insert_many(pl.DataFrame({"id": ["w1", "w2"], "userId": ["u1", "u2"]}))  # doctest: +SKIP
            2
        """
        from ecanalytics.ledger import ingest

        frame = ingest.records(records, self.schema)

        def build(st: State) -> Commit:
            clash = st.records_of(frame["id"]).select("id")
            if clash.height:
                raise RecordExistsError(
                    f"{clash.height} of the records exist already in {self.name} (first: {clash['id'][0]!r}); "
                    "nothing was inserted. Drop them, or change them with update()."
                )
            return Commit("insert", upserts=frame, stats={"records": frame.height})

        self.ledger.commit(build)
        return frame.height

    def write_transactions(self, transactions: Any, field: str | None = None, *, batch_size: int = 1_000_000,
                           progress: Any = None, idempotent: bool | str = False) -> int:
        """Write many transactions of one managed field at once; returns how many.

        Columns: ``originalId``, ``value``; optional ``operation`` (``"add"`` by default, ``"sub"``,
        ``"set"``), ``timestamp`` (timezone-aware, or ISO 8601 strings with an offset; default
        now), ``id`` (idempotency key; default generated) and ``source``. Accepts the same inputs
        as :meth:`insert_many`. Validation is vectorized with the rules of a single write, and a
        bad frame is rejected whole with nothing written. Rows become one object per cohort day
        per at most ``batch_size`` rows, with the usual inbox markers, so consolidation sees them
        exactly once; in ``sync`` mode this returns after the commit.

        **Retries.** Rows with an ``id`` count once however often they are written. Rows without
        one get generated ids, so writing the same frame again (a retry after a crash or a
        timeout) counts its rows twice, unless ``idempotent``: ``True`` derives each missing id
        from a digest of the frame's content and the row's position (the same frame retried gives
        the same ids: it counts once; a frame built differently is new data), and a string (a
        batch name such as ``"import-2026-12-05"``) derives them from that name and the row's
        position instead. ``ecanalytics ingest`` does the same with each file's content digest.
        """
        from ecanalytics.ledger import ingest

        plugin = self.plugin(field)
        if not isinstance(idempotent, (bool, str)):
            raise ArgumentError(f"idempotent must be True, False or a batch name; got {P.describe(idempotent)}.")
        seed = "" if idempotent is True else (idempotent or None)
        rows = ingest.transactions(transactions, plugin.field, plugin.consolidator.dtype, id_seed=seed)
        plugin.write_frame(rows, batch_size=batch_size, progress=progress)
        return rows.height

    def get(self, record_id: str, *, as_of: dt.datetime | None = None,
            events_until: dt.datetime | None = None) -> dict[str, Any]:
        """The consolidated record; :class:`RecordNotFoundError` (a ``KeyError``) if absent.

        Time travel asks one of two questions (see :meth:`to_polars`): ``as_of`` is what had
        been *committed* by then; ``events_until`` is what the transactions *dated* up to then add
        up to.
        """
        P.validate_record_id(record_id)
        source = self.ledger.state().records_of([record_id]) if as_of is None and events_until is None else (
            self.to_polars(as_of=as_of, events_until=events_until))
        rows = source.filter(pl.col("id") == record_id)
        if rows.height == 0:
            raise RecordNotFoundError(f"{self.name} has no record {record_id!r}.")
        return rows.row(0, named=True)

    def update(self, record_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Change unmanaged attributes of an existing record."""
        P.validate_record_id(record_id)
        self._check_unmanaged(changes, "update")
        if "id" in changes and changes["id"] != record_id:
            raise SchemaError("The id of a record cannot change.")
        result: dict[str, Any] = {}

        def build(st: State) -> Commit:
            rows = st.records_of([record_id])
            if rows.height == 0:
                raise RecordNotFoundError(f"{self.name} has no record {record_id!r}.")
            result.clear()
            result.update(self.schema.new_record({**rows.row(0, named=True), **changes}))
            return Commit("update", upserts=self.schema.frame([result]))

        self.ledger.commit(build)
        return result

    def delete(self, record_id: str) -> None:
        """Delete a record. Transactions that arrive for it later re-create it with defaults."""
        P.validate_record_id(record_id)

        def build(st: State) -> Commit:
            if st.records_of([record_id]).height == 0:
                raise RecordNotFoundError(f"{self.name} has no record {record_id!r}.")
            return Commit("delete", deletes=(record_id,))

        self.ledger.commit(build)

    def to_polars(self, *, as_of: dt.datetime | None = None, events_until: dt.datetime | None = None) -> pl.DataFrame:
        """All records with their consolidated values, sorted by id.

        Time travel:

        * ``as_of=T`` (commit time): the state as it was committed at ``T``, exactly what
          ``to_polars()`` returned then. Reads the nearest checkpoint and replays the log.
        * ``events_until=T`` (event time): each managed field recomputed from every transaction
          whose ``timestamp`` is at or before ``T``, applied or still pending, in event order,
          from the value the record was inserted with (or the default). A backfill dated
          before ``T`` counts even if it was written later.
        """
        if as_of is not None and events_until is not None:
            raise ArgumentError("Pass as_of (commit time) or events_until (event time), not both.")
        if as_of is not None:
            if not isinstance(as_of, dt.datetime) or as_of.tzinfo is None:
                raise InvalidValueError("as_of must be a timezone-aware datetime.")
            return self.ledger.state_at(self.ledger.version_at(as_of)).records.sort("id")
        if events_until is not None:
            if not isinstance(events_until, dt.datetime) or events_until.tzinfo is None:
                raise InvalidValueError("events_until must be a timezone-aware datetime.")
            from ecanalytics.maintenance import records_at_events

            return records_at_events(self.ledger, {f: p.consolidator for f, p in self.plugins.items()}, events_until)
        return self.ledger.state().records.sort("id")

    def recalculate(self, id: str | None = None, field: str | None = None, *, client: Any = None) -> RecalculationResult:
        """Rebuild ``field`` (of one record, or all) from its applied history, committing only the
        records whose value differs. ``client`` (a ``distributed.Client``) rebuilds bucket by
        bucket on its Dask workers. See :mod:`ecanalytics.maintenance`."""
        from ecanalytics.maintenance import recalculate

        if id is not None:
            P.validate_record_id(id)
        return recalculate(self.plugin(field).consolidator, id, client=client)

    def gc(self, retain: int | str, *, field: str | None = None, archive: bool = True) -> RetentionResult:
        """Retention: archive (``archive=True``, under ``_archive/``) or delete the applied
        transaction objects of cohort days older than ``retain`` (``30``, ``"30d"``, ``"4w"``, or
        ``"12h"``, which rounds up to whole days: see :func:`parse_days`).
        Values never change; later recalculations start from the base the commit records."""
        from ecanalytics.maintenance import retain as run

        return run(self.plugin(field).consolidator, parse_days(retain), archive=archive)

    def compact(self, field: str | None = None, *, target_rows: int = 1_000_000,
                target_bytes: int = 64 * 1024 * 1024, client: Any = None) -> CompactionResult:
        """Merge each partition's small applied objects into objects of up to ``target_rows`` rows
        (or about ``target_bytes``) through the commit log. Readers through ecanalytics never count
        a transaction twice or miss one, during the run or after a crash in it. Both targets are
        positive integers (at most 2**63 - 1); anything else is rejected before any work.
        ``client`` (a ``distributed.Client``) merges the partitions on its Dask workers."""
        from ecanalytics.maintenance import compact

        for name, target in (("target_rows", target_rows), ("target_bytes", target_bytes)):
            if not is_positive_int(target):
                raise InvalidValueError(f"{name} must be a positive integer such as 1_000_000; got {P.describe(target)}.")
        return compact(self.plugin(field).consolidator, target_rows=target_rows, target_bytes=target_bytes, client=client)

    def verify(self) -> list[Problem]:
        """Check that every object the committed state names exists (applied transaction objects,
        live and archived, bucket objects, retention bases): one LIST per prefix, no GET, no
        change. Returns the missing ones (empty when the resource is whole); a reader that meets
        one raises :class:`~ecanalytics.errors.MissingObjectError`. ``ecanalytics inspect --verify``
        runs it for every resource."""
        from ecanalytics.maintenance import verify

        return verify(self.ledger, self.plugins)

    def rebucket(self, buckets: int) -> State:
        """Split the records into ``buckets`` buckets (by a stable hash of the id), in one commit
        that rewrites every bucket; the new count holds from that version on. Loads the whole
        state once. Returns the new state (``state.n_buckets``)."""
        from ecanalytics.ledger.buckets import check_buckets

        return self.ledger.rebucket(check_buckets(buckets))

    def scan(self) -> pl.LazyFrame:
        """A LazyFrame over the consolidated records."""
        return self.to_polars().lazy()

    def query(self, where: Filter | None = None) -> pl.DataFrame:
        """Records matching equality filters, e.g. ``query({"currency": "USD"})``."""
        return _apply_filter(self.to_polars(), where)

    # -- managed fields --------------------------------------------------------------------
    def plugin(self, field: str | None = None) -> EventualConsistencyPlugin:
        """The plugin managing ``field`` (which may be omitted when exactly one field is managed)."""
        if field is None:
            if len(self.plugins) == 1:
                return next(iter(self.plugins.values()))
            if not self.plugins:
                raise UnknownFieldError(
                    f"{self.name} has no managed field; db.use_plugin(ec.EventualConsistencyPlugin("
                    f"resource={self.name!r}, field=...)) first."
                )
            raise FieldRequiredError(
                "Multiple fields have eventual consistency. Please specify the field: "
                f"one of {sorted(self.plugins)} (e.g. {self.name}.add(id, {sorted(self.plugins)[0]!r}, amount))."
            )
        if field not in self.plugins:
            raise UnknownFieldError(
                f"{field!r} is not a managed field of {self.name}; managed fields: {sorted(self.plugins) or 'none'}."
            )
        return self.plugins[field]

    def _route(self, args: tuple[Any, ...]) -> tuple[EventualConsistencyPlugin, Any]:
        if len(args) == 1:
            return self.plugin(None), args[0]
        if len(args) == 2:
            if not isinstance(args[0], str):
                raise UnknownFieldError(f"Expected (id, field, amount); the field {args[0]!r} is not a name.")
            return self.plugin(args[0]), args[1]
        raise ArgumentError(
            f"Expected op(id, amount) or op(id, field, amount); got {len(args)} argument(s) after the id."
        )

    def _op(self, operation: Operation, record_id: str, args: tuple[Any, ...],
            tx_id: str | None, timestamp: dt.datetime | None, source: str | None) -> float | Decimal | None:
        plugin, amount = self._route(args)
        row = plugin.transaction(record_id, operation, amount, tx_id=tx_id, timestamp=timestamp, source=source)
        return plugin.write(row)

    @overload
    def add(self, record_id: str, amount: float, /, *, id: str | None = ..., timestamp: dt.datetime | None = ..., source: str | None = ...) -> float | Decimal | None: ...
    @overload
    def add(self, record_id: str, field: str, amount: float, /, *, id: str | None = ..., timestamp: dt.datetime | None = ..., source: str | None = ...) -> float | Decimal | None: ...
    def add(self, record_id: str, *args: Any, id: str | None = None, timestamp: dt.datetime | None = None, source: str | None = None) -> float | Decimal | None:
        """Add ``amount`` (``add(id, amount)`` or ``add(id, field, amount)``).

        ``id=`` is an idempotency key, ``timestamp=`` the event time (a backfill's cohort follows
        it). Returns the committed value in sync mode, None in async mode.
        """
        return self._op("add", record_id, args, id, timestamp, source)

    @overload
    def sub(self, record_id: str, amount: float, /, *, id: str | None = ..., timestamp: dt.datetime | None = ..., source: str | None = ...) -> float | Decimal | None: ...
    @overload
    def sub(self, record_id: str, field: str, amount: float, /, *, id: str | None = ..., timestamp: dt.datetime | None = ..., source: str | None = ...) -> float | Decimal | None: ...
    def sub(self, record_id: str, *args: Any, id: str | None = None, timestamp: dt.datetime | None = None, source: str | None = None) -> float | Decimal | None:
        """Subtract ``amount``; same call shapes and options as :meth:`add`."""
        return self._op("sub", record_id, args, id, timestamp, source)

    @overload
    def set(self, record_id: str, value: float, /, *, id: str | None = ..., timestamp: dt.datetime | None = ..., source: str | None = ...) -> float | Decimal | None: ...
    @overload
    def set(self, record_id: str, field: str, value: float, /, *, id: str | None = ..., timestamp: dt.datetime | None = ..., source: str | None = ...) -> float | Decimal | None: ...
    def set(self, record_id: str, *args: Any, id: str | None = None, timestamp: dt.datetime | None = None, source: str | None = None) -> float | Decimal | None:
        """Set the absolute value; same call shapes and options as :meth:`add`."""
        return self._op("set", record_id, args, id, timestamp, source)

    def consolidate(self, record_id: str, field: str | None = None) -> float | Decimal:
        """Consolidate the field (all its pending transactions) and return this record's value
        (the field's default for a record that does not exist, as in the original plugin)."""
        P.validate_record_id(record_id)
        self.plugin(field).consolidate()
        return self.value(record_id, field, consistent=False)

    def value(self, record_id: str, field: str | None = None, *, consistent: bool = True) -> float | Decimal:
        """The field's value. With ``consistent=True`` pending transactions are folded in on the fly,
        in event order (read-your-writes, nothing is committed); otherwise the last consolidated
        value. A record that does not exist counts as the field's default (``get`` still raises);
        rows held back (see ``inspect``) are not in the value until they can be folded."""
        P.validate_record_id(record_id)
        plugin = self.plugin(field)
        consolidator = plugin.consolidator
        st = self.ledger.state()
        if consistent:
            plugin.flush()
            pending = consolidator.pending(st, cleanup=False)
            rows = pending.rows.filter(pl.col("originalId") == record_id)
            if rows.height:
                folded = consolidator.fold(st, rows, pending.unapplied, preview=True)
                if folded.values.height:
                    return _number(folded.values["value"][0])
                if folded.held.height:
                    reasons = sorted(set(folded.held["_reason"].to_list()))
                    raise ConsolidationError(
                        f"{self.name}.{plugin.field} of {record_id!r} cannot be folded ({', '.join(reasons)}); its "
                        "transactions are held, pending, until it can (see plugin.inspect()). A later set fixes an overflow.",
                        record_id=record_id)
        found = st.records_of([record_id])
        if found.height == 0:
            return _number(consolidator.default)
        current = found[plugin.field][0]
        return _number(current) if current is not None else consolidator.default


class TransactionDataset:
    """The transaction history of one managed field, queryable by ``cohortDate`` / ``cohortMonth``.

    Filters on ``cohortDate`` or ``cohortMonth`` list only the matching partitions. ``applied`` is
    derived: a transaction is applied unless its object is still pending in the inbox.
    """

    def __init__(self, plugin: EventualConsistencyPlugin) -> None:
        self.plugin = plugin
        self.name = plugin.dataset

    def __repr__(self) -> str:
        """The dataset's name, field and zone: no request."""
        return display.dataset_repr(self.name, self.plugin.field, self.plugin.timezone)

    def _repr_html_(self) -> str:
        """The Jupyter view from memory only: the applied objects of the manifest this process
        holds, and the backlog of the plugin's last ``inspect()``. No request."""
        view = self.plugin.field_view()
        st = self.plugin.consolidator.ledger.in_memory() if view.attached else None
        manifest = st.manifest_of(self.plugin.field) if st is not None else None
        applied = None if manifest is None else (manifest.height, int((manifest["size"].sum() if manifest.height else 0) or 0))
        return display.dataset_html(self.name, view, applied)

    def to_arrow(self, where: Filter | None = None) -> pa.Table:
        """The transactions (see :meth:`query`) as a pyarrow Table."""
        return self.query(where).to_arrow()

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        """The Arrow PyCapsule stream of every transaction, with ``applied``."""
        return self.query().__arrow_c_stream__(requested_schema)

    def to_pandas(self, where: Filter | None = None) -> pd.DataFrame:
        """The transactions as a pandas DataFrame (``pip install "ecanalytics[pandas]"``)."""
        return _pandas(self.query(where))

    def query(self, where: Filter | None = None, *, include_archived: bool = True) -> pl.DataFrame:
        """Transactions matching equality filters, with the partition columns and ``applied``:
        the rows every reader sees (the one scan planner, :mod:`ecanalytics.ledger.scan`: one row
        per id, ``applied`` false for pending and held rows), as the SQL view of the dataset
        shows them. The objects come from the committed manifest plus the pending ones, pruned by
        ``cohortDate``/``cohortMonth`` equality filters: no LIST of the history. Days that
        retention archived are part of the history; ``include_archived=False`` leaves them out."""
        where = check_filter(where)
        consolidator = self.plugin.consolidator
        state = consolidator.ledger.state()
        plan = consolidator.scan(state, days=self._wanted(where, "cohortDate"), months=self._wanted(where, "cohortMonth"),
                                 archived=include_archived)
        df = plan.read(consolidator.store, consolidator.dtype)
        return _apply_filter(df, where).sort("timestamp", "id")

    @staticmethod
    def _wanted(where: Filter | None, column: str) -> set[str] | None:
        """The partition values an equality filter on ``column`` names (None: no such filter);
        ``_apply_filter`` checks every column afterwards, this only prunes objects."""
        if not where or column not in where or isinstance(where[column], Mapping):
            return None
        value = where[column]
        return {str(v) for v in (value if isinstance(value, (list, tuple, set, frozenset)) else [value])}

    def to_polars(self) -> pl.DataFrame:
        """Every transaction of the field."""
        return self.query()

    def scan(self, where: Filter | None = None) -> pl.LazyFrame:
        """A LazyFrame over :meth:`query`."""
        return self.query(where).lazy()

    def pending(self) -> pl.DataFrame:
        """Transactions not yet applied (deduplicated)."""
        return self.plugin.pending()


