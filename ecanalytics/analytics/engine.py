"""DuckDB over the store, with views named after every dataset. Nothing is copied first.

How DuckDB reaches the objects:

* local roots: DuckDB reads the files directly;
* ``memory://`` roots: the store's fsspec filesystem is registered with DuckDB;
* S3 roots: if DuckDB's ``httpfs`` extension is *already installed* on the machine (in DuckDB's
  extension folder, or from the PyPI ``duckdb-ext-httpfs`` package), it is loaded (never
  downloaded) and an S3 secret is created from the same credentials; otherwise the s3fs
  filesystem is registered with DuckDB (``register_filesystem``), which is what happens wherever
  extensions cannot be fetched. Force a path with ``ECANALYTICS_DUCKDB_S3=httpfs|fsspec``.

Views (re-pointed at the latest state by :meth:`SqlEngine.refresh`):

* ``{resource}``: current consolidated records;
* ``{resource}_transactions_{field}``: the transaction history with ``cohortDate`` (DATE),
  ``cohortMonth`` and a derived ``applied`` column, read with Hive partition pruning; it includes
  the days retention archived under ``_archive/`` (see :class:`SqlEngine`);
* ``ec_transactions``: every transaction dataset, with a ``resource`` column;
* ``ec_values``: ``resource, field, id, value`` for every managed field;
* ``ec_fields``: ``resource, field, dataset, reducer, timezone, default``;
* ``ec_pending_objects``: ``dataset, name`` of objects not yet applied;
* ``ec_hidden_objects`` / ``ec_compaction_tokens``: for readers of the raw prefixes, the objects
  compaction replaced or retention removed (the views themselves read the manifest);
* ``ec_bases``: ``resource, field, id, value`` where a rebuild of each record starts (the value it
  was inserted with; after a ``delete``-mode retention, the retention base); built when a query
  names it;
* ``ec_pending``: the transactions in those objects only (``resource`` plus the transaction
  columns, and ``writtenAt``: when the writer created the object), read without touching the
  rest of the history, under the key rule the next consolidation applies: the pending rows of
  the dataset views, held rows aside.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import polars as pl

from ecanalytics.analytics.relation import Relation, snapshot_guard
from ecanalytics.errors import ConfigurationError, SnapshotGoneError
from ecanalytics.ledger.keys import AUTO_ID_PREFIX
from ecanalytics.ledger.scan import ScanPlan
from ecanalytics.storage import StorageConfig

if TYPE_CHECKING:
    import fsspec

    from ecanalytics.consolidation import Field
    from ecanalytics.ledger import Ledger
    from ecanalytics.storage import Store

log = logging.getLogger(__name__)
S3Path = Literal["local", "fsspec", "httpfs"]
TX_COLUMNS = "id, originalId, field, value, operation, timestamp, cohortDate, cohortMonth, source"
EMPTY_TX = (
    "SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS originalId, NULL::VARCHAR AS field, NULL::DOUBLE AS value, "
    "NULL::VARCHAR AS operation, NULL::TIMESTAMPTZ AS timestamp, NULL::DATE AS cohortDate, "
    "NULL::VARCHAR AS cohortMonth, NULL::VARCHAR AS source, NULL::BOOLEAN AS applied WHERE false"
)
# When the writer named a transaction object: its file id starts with the writer's nanoseconds.
WRITTEN_AT = "make_timestamp(CAST(split_part(parse_filename(filename), '-', 1) AS BIGINT) // 1000)::TIMESTAMPTZ"


_EPOCH = datetime.fromtimestamp(0, UTC)  # objects are immutable: their listing's time does not matter


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def _files(lists: dict[str, list[str]], view: str, part: str, urls: list[str]) -> str:
    """Record a view part's object list in ``lists`` under a DuckDB variable's name and return the
    SQL that reads it, so a view's SQL stays the same size however long the history (the list is
    bound at query time, like the view itself)."""
    variable = f"ec_files:{view}:{part}"
    lists[variable] = urls
    return f"getvariable({_quote(variable)})"


def _pending_rule(plan: ScanPlan) -> tuple[str, str]:
    """The key rule on pending rows, as the next consolidation applies it: (a ``WHERE`` clause
    dropping retries of keys already applied, or ``""``; a ``QUALIFY`` clause keeping the first
    occurrence of a key by timestamp, record, operation and amount). Generated ids pass both."""
    auto = f"starts_with(id, {_quote(AUTO_ID_PREFIX)})"
    where = (f" WHERE {auto} OR id NOT IN (SELECT id FROM ec_applied_keys WHERE dataset = {_quote(plan.dataset)})"
             if plan.applied_keys.height else "")
    return where, f" QUALIFY {auto} OR row_number() OVER (PARTITION BY id ORDER BY timestamp, originalId, operation, value) = 1"


def _pending_reads(resource: str, plan: ScanPlan, urls: list[str], auto: list[bool],
                   lists: dict[str, list[str]]) -> list[str]:
    """``ec_pending``'s parts for one dataset: its pending objects (``urls``; ``auto``: the
    marker says generated ids only) under the same key rule as the dataset's view, with
    ``writtenAt``, the writer's clock when it named the object (file ids start with it)."""
    columns = (f"SELECT {_quote(resource)} AS resource, id, originalId, field, value, operation, timestamp, source, "
               f"{WRITTEN_AT} AS writtenAt FROM read_parquet(")
    parts = []
    plain = [u for u, a in zip(urls, auto, strict=True) if a]
    if plain:  # nothing to deduplicate
        parts.append(f"{columns}{_files(lists, 'ec_pending', plan.dataset + ':auto', plain)}, filename = true)")
    keyed = [u for u, a in zip(urls, auto, strict=True) if not a]
    if keyed:
        where, qualify = _pending_rule(plan)
        parts.append(f"{columns}{_files(lists, 'ec_pending', plan.dataset + ':keyed', keyed)}, filename = true){where}{qualify}")
    return parts


def httpfs_secret_sql(config: StorageConfig) -> str:
    """The ``CREATE SECRET`` statement that points httpfs at ``config``'s S3 endpoint."""
    parts = ["TYPE s3", f"REGION {_quote(config.region or 'us-east-1')}"]
    key, secret, token = config.credentials() or ("", "", None)  # the chain's current ones: they may rotate
    if key:
        parts.append(f"KEY_ID {_quote(key)}")
    if secret:
        parts.append(f"SECRET {_quote(secret)}")
    if token:
        parts.append(f"SESSION_TOKEN {_quote(token)}")
    if config.endpoint_url:
        scheme, _, host = config.endpoint_url.partition("://")
        parts += [f"ENDPOINT {_quote(host.rstrip('/'))}", "URL_STYLE 'path'", f"USE_SSL {str(scheme == 'https').lower()}"]
    return f"CREATE OR REPLACE SECRET ecanalytics ({', '.join(parts)})"


def _packaged_extension_dir() -> str | None:
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), "extensions")
    return folder if os.path.isdir(folder) else None


def choose_s3_path(con: duckdb.DuckDBPyConnection, config: StorageConfig, preference: str | None) -> S3Path:
    """Pick how DuckDB reads this root (see the module docstring); never downloads anything."""
    if config.protocol == "file":
        return "local"
    if config.protocol != "s3":
        return "fsspec"
    preference = (preference or "auto").lower()
    if preference not in ("auto", "httpfs", "fsspec"):
        raise ConfigurationError(f"ECANALYTICS_DUCKDB_S3 must be auto, httpfs or fsspec; got {preference!r}.")
    if preference == "fsspec":
        return "fsspec"
    packaged = _packaged_extension_dir()
    if packaged is not None:  # the PyPI duckdb-ext-* wheels ship extensions in a package folder
        con.execute(f"SET extension_directory = {_quote(packaged)}")
    try:
        con.execute("LOAD httpfs")  # LOAD only: INSTALL would download
    except duckdb.Error as exc:
        if preference == "httpfs":
            raise ConfigurationError(
                "ECANALYTICS_DUCKDB_S3=httpfs, but DuckDB's httpfs extension is not installed here "
                f"({exc}). Install it at deploy time (INSTALL httpfs) or use fsspec."
            ) from exc
        return "fsspec"
    return "httpfs"


@dataclass(frozen=True)
class Table:
    """What the engine needs of one resource: its ledger, and per managed field the field's core
    and the reducer's name as the catalog stores it."""

    name: str
    ledger: Ledger
    fields: dict[str, tuple[Field, str]]


DAYS_SUFFIX = "__days"


def day_view(dataset: str) -> str:
    """The view of ``dataset`` that :meth:`SqlEngine.sql` plans for ``days`` only (cohort stats
    and rollups query it); the dataset's own view always names every object."""
    return dataset + DAYS_SUFFIX


class SqlEngine:
    """A DuckDB connection whose views follow the tables that ``tables()`` returns (a database's
    resources, given by the database; the engine never reaches into the API objects).

    The dataset views (and so ``ec_transactions``, the plugin's cohort stats and rollups, and the
    SQL reports) read exactly the objects the committed manifest names plus the pending ones, never
    a LIST of the history: the manifest is the one visibility rule, for Python and SQL readers
    alike (a compaction's sources leave it and its output joins it in one commit; an ``archive``-
    mode retention swaps the live copies for the archived ones, which are read with the same
    partition pruning). After ``gc(..., archive=False)`` the days before the cut are gone: cohort
    stats and rollups of those days are zero, and ``ec_bases`` holds the retention base that
    stands for them.
    """

    def __init__(self, config: StorageConfig, store: Store, tables: Callable[[], list[Table]]) -> None:
        self.store = store
        self.tables = tables
        self.con = duckdb.connect()
        self.con.execute("SET TimeZone = 'UTC'")  # independent of the host's TZ
        self.path = choose_s3_path(self.con, config, os.environ.get("ECANALYTICS_DUCKDB_S3"))
        self._secret = ""
        if self.path == "httpfs":
            self._renew_secret()
        self._fs: fsspec.AbstractFileSystem | None = None
        if self.path == "fsspec":
            # A separate instance whose listings are cached, so DuckDB's size/mtime look-ups after
            # a glob cost no HEAD; refresh() clears the cache so every query lists afresh.
            self._fs = config.filesystem(cached_listings=True) if config.protocol == "s3" else store.fs
            self.con.register_filesystem(self._fs)
        self._shape: tuple[Any, ...] = ()
        self._views: dict[str, str] = {}  # view name -> the SQL it was last created with
        self._values_shape: tuple[Any, ...] = ()

    def _renew_secret(self) -> None:
        """(Re)create httpfs' S3 secret when the provider chain's credentials changed (the fsspec
        path needs nothing: s3fs asks the chain itself)."""
        secret = httpfs_secret_sql(self.store.config)
        if secret != self._secret:
            self.con.execute(secret)
            self._secret = secret

    @property
    def filesystem(self) -> fsspec.AbstractFileSystem | None:
        """The fsspec filesystem registered with DuckDB (None when DuckDB reads natively)."""
        return self._fs

    def glob(self, dataset: str) -> str:
        """The recursive glob of a dataset's Parquet objects, for plain readers (the views read
        the manifest instead)."""
        return f"{self.store.url(dataset)}/**/*.parquet"

    def _prime(self, sizes: dict[str, int | None]) -> None:
        """Tell the S3 filesystem DuckDB reads through what each folder of the views holds (the
        manifest knows every object's size): DuckDB then asks nothing before it reads, where it
        would send a HEAD per listed object, pruned or not. A folder with an object of unknown
        size is left alone (DuckDB asks the store for it)."""
        if self._fs is None or self.store.config.protocol != "s3":
            return
        folders: dict[str, list[dict[str, Any]]] = {}
        unknown: set[str] = set()
        for path, size in sizes.items():
            folder = path.rsplit("/", 1)[0].lstrip("/")
            if size is None:
                unknown.add(folder)
            folders.setdefault(folder, []).append({
                "Key": path.lstrip("/"), "name": path.lstrip("/"), "Size": size, "size": size, "type": "file",
                "StorageClass": "STANDARD", "LastModified": _EPOCH})
        self._fs.dircache.update({f: entries for f, entries in folders.items() if f not in unknown})

    def _dataset_view(self, plan: ScanPlan, existing: list[str], name: str) -> None:
        """(Re)create a dataset's view from its scan plan (:mod:`ecanalytics.ledger.scan`, the
        rule every reader follows): the applied objects the manifest names (live and archived)
        without the rows their commits hid (occurrences of keys that did not count), ``applied``
        false for held rows; then the ``existing`` pending objects, resolved as the next
        consolidation will (applied keys dropped, the first occurrence of a key by timestamp,
        record, operation and amount; only objects whose marker does not say "generated ids only"
        pay for that). No window over the applied history, so filters on the partitions
        (parameterised ones too) reach the files first; no LIST of the history. ``existing``
        are the pending keys whose object exists (a writer may be between marker and object)."""
        ds, store = _quote(plan.dataset), self.store
        hive = "hive_partitioning = true, hive_types = {'cohortDate': DATE, 'cohortMonth': VARCHAR}"
        parts = []
        lists: dict[str, list[str]] = {}  # variable -> object list
        applied = (f"id NOT IN (SELECT id FROM ec_held_ids WHERE dataset = {ds})" if plan.held_ids.len() else "true")
        with_hidden = set(plan.hidden["key"].to_list()) if plan.hidden.height else set()
        plain = [store.url(k) for k, _ in plan.applied if k not in with_hidden]
        if plain:  # most objects: every row counts
            parts.append(f"SELECT {TX_COLUMNS}, {applied} AS applied FROM read_parquet({_files(lists, name, 'applied', plain)}, {hive})")
        hidden_in = [store.url(k) for k, _ in plan.applied if k in with_hidden]  # never an empty read_parquet
        if hidden_in:  # the few objects holding occurrences that did not count: leave those rows out
            files = _files(lists, name, "hidden", hidden_in)
            parts.append(
                f"SELECT {TX_COLUMNS}, {applied} AS applied FROM read_parquet({files}, {hive}, filename = true, file_row_number = true) t "
                f"WHERE NOT EXISTS (SELECT 1 FROM ec_hidden_rows h WHERE h.dataset = {ds} AND h.url = t.filename "
                "AND h.row = t.file_row_number)")
        auto_files = [store.url(k) for k in existing if k in plan.auto]
        if auto_files:  # generated ids only (the marker says so): nothing to deduplicate, filters reach the files
            parts.append(f"SELECT {TX_COLUMNS}, false AS applied FROM read_parquet({_files(lists, name, 'auto', auto_files)}, {hive})")
        keyed_files = [store.url(k) for k in existing if k not in plan.auto]
        if keyed_files:
            where, qualify = _pending_rule(plan)
            parts.append(f"SELECT {TX_COLUMNS}, false AS applied FROM read_parquet({_files(lists, name, 'keyed', keyed_files)}, "
                         f"{hive}){where}{qualify}")
        self._view(name, " UNION ALL ".join(parts) or EMPTY_TX, lists)

    def _set_lists(self, lists: dict[str, list[str]], size: int | None = None) -> None:
        for variable, urls in lists.items():
            self.con.execute(f"SET VARIABLE {_identifier(variable)} = ?", [urls[:size]])

    def _view(self, name: str, sql: str, lists: dict[str, list[str]]) -> None:
        """(Re)create view ``name`` as ``sql`` unless it already is, and set the object ``lists``
        it reads (:func:`_files`). The lists live in variables, so most refreshes change no view
        and bind nothing; a view that must be created is bound over the first object of each list
        (DuckDB binds a view when it is created, and the types come from the first object anyway),
        so creating it does not cost a pass over the whole history."""
        if self._views.get(name) != sql:
            self._set_lists(lists, 1)
            self.con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
            self._views[name] = sql
        self._set_lists(lists)

    def refresh(self, query: str | None = None, *, days: Collection[str] | None = None) -> duckdb.DuckDBPyConnection:
        """Point every view at the latest committed state and pending set; returns the connection.

        Only what ``query`` names is planned: the records of a resource it names, the view of a
        dataset it names (a query naming an ``ec_*`` view, or none, plans everything), so a
        query of one resource reads no state of another, and a resource's records (every bucket)
        are registered only for a query that names it or ``ec_values``. Registered tables (records,
        ``ec_fields``, ``ec_pending_objects``) are replaced on every call and resolved by name at
        query time. Views that bind datasets are created only when
        the set of resources and fields changes, since binding lists every dataset. ``ec_pending``
        costs one existence check per pending object, so it is rebuilt only when ``query``
        mentions it (or when no query is given).
        """
        with_pending = query is None or "ec_pending" in query
        with_bases = query is None or "ec_bases" in query
        with_values = query is None or "ec_values" in query
        # Plan only what the query names: a resource's records, a dataset's view. The ec_* views
        # span every resource, so naming one (or giving no query) plans everything.
        names = None if query is None else {w.lower().removesuffix(DAYS_SUFFIX)
                                            for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query)}
        everything = names is None or any(n.startswith("ec_") for n in names)
        if self._fs is not None:
            self._fs.invalidate_cache()
        if self.path == "httpfs":
            self._renew_secret()
        fields, pending, values, pending_reads, bases, hidden, tokens = [], [], [], [], [], [], []
        held_ids: list[tuple[str, str]] = []
        pending_lists: dict[str, list[str]] = {}  # ec_pending's object lists, by variable
        plans: dict[str, tuple[ScanPlan, list[str]]] = {}
        hidden_rows: list[pl.DataFrame] = []
        applied_keys: list[pl.DataFrame] = []
        sizes: dict[str, int | None] = {}  # store path -> size of every object a view reads
        datasets: list[str] = []
        for table in sorted(self.tables(), key=lambda t: t.name):
            name = table.name
            wanted = {f for f, (core, _r) in table.fields.items() if everything or core.dataset.lower() in (names or ())}
            if not (everything or wanted or name.lower() in (names or ())):
                continue  # not named: its state is not even read
            state = table.ledger.state()
            if with_values or name.lower() in (names or ()):  # records load every bucket: only when read
                self.con.register(name, state.records.sort("id"))
            for field, (core, reducer) in sorted(table.fields.items()):
                if field not in wanted:
                    continue
                datasets.append(core.dataset)
                store = table.ledger.store
                compaction = state.compaction.get(field)
                retention = state.retention.get(field)
                # For plain readers of the prefixes: what the manifest no longer names.
                gone = [*(compaction.replaced if compaction else ()), *(retention.archived if retention else ())]
                hidden += [(core.dataset, k.rsplit("/", 1)[-1]) for k in gone]
                tokens += [(core.dataset, t) for t in (compaction.tokens if compaction else ())]
                plan = core.scan(state, days=days)
                held_ids += [(core.dataset, i) for i in plan.held_ids.to_list()]
                keys = list(plan.pending)
                pending += [(core.dataset, key.rsplit("/", 1)[-1]) for key in keys]
                # Objects whose writer is still between marker and object do not exist yet: one
                # LIST per pending day tells which exist, and their sizes (no HEAD per object).
                found: dict[str, int | None] = {}
                for folder in sorted({k.rsplit("/", 1)[0] for k in keys}):
                    listed = store.listdir_sizes(folder)
                    found.update({f"{folder}/{name}": size for name, size in listed.items()})
                existing = [k for k in keys if k in found]
                sizes.update({store.abs(k): n for k, n in plan.applied})
                sizes.update({store.abs(k): found[k] for k in existing})
                plans[core.dataset] = (plan, existing)
                if plan.hidden.height:
                    hidden_rows.append(plan.hidden.select(pl.lit(core.dataset).alias("dataset"),
                                                          pl.col("key").map_elements(store.url, return_dtype=pl.String)
                                                          .alias("url"), pl.col("row").cast(pl.Int64)))
                if plan.applied_keys.height:
                    applied_keys.append(plan.applied_keys.select(pl.lit(core.dataset).alias("dataset"), "id"))
                if existing and with_pending:
                    pending_reads += _pending_reads(name, plan, [store.url(k) for k in existing],
                                                    [k in plan.auto for k in existing], pending_lists)
                if with_bases:
                    bases.append(core.base(state).select(
                        pl.lit(name).alias("resource"), pl.lit(field).alias("field"),
                        pl.col("originalId").alias("id"), pl.col("current").cast(pl.Float64).alias("value")))
                default = core.default
                fields.append((name, field, core.dataset, reducer, core.tz, float(default), core.deleted_before(state)))
                values.append(f"SELECT {_quote(name)} AS resource, {_quote(field)} AS field, id, "
                              f'coalesce("{field}", {default}) AS value FROM "{name}"')
        if with_bases:
            no_bases = pl.DataFrame(schema={"resource": pl.String, "field": pl.String, "id": pl.String, "value": pl.Float64})
            self.con.register("ec_bases", pl.concat([no_bases, *bases]))
        pair = {"dataset": pl.String, "name": pl.String}
        self.con.register("ec_hidden_objects", pl.DataFrame(hidden, schema=pair, orient="row"))
        self.con.register("ec_compaction_tokens", pl.DataFrame(tokens, schema={"dataset": pl.String, "token": pl.String}, orient="row"))
        self.con.register("ec_pending_objects", pl.DataFrame(pending, schema={"dataset": pl.String, "name": pl.String}, orient="row"))
        # Rows held back (records that cannot be folded yet) sit in consumed objects but are not applied.
        self.con.register("ec_held_ids", pl.DataFrame(held_ids, schema={"dataset": pl.String, "id": pl.String}, orient="row"))
        # Occurrences of keys in applied objects that did not count (their commit recorded them).
        self.con.register("ec_hidden_rows", pl.concat(hidden_rows) if hidden_rows else pl.DataFrame(
            schema={"dataset": pl.String, "url": pl.String, "row": pl.Int64}))
        self.con.register("ec_applied_keys", pl.concat(applied_keys) if applied_keys else pl.DataFrame(
            schema={"dataset": pl.String, "id": pl.String}))
        self.con.register("ec_fields", pl.DataFrame(fields, orient="row", schema={
            "resource": pl.String, "field": pl.String, "dataset": pl.String, "reducer": pl.String,
            "timezone": pl.String, "default": pl.Float64, "deletedBefore": pl.Datetime("us", "UTC")}))
        self._prime(sizes)
        for dataset in datasets:
            # A plan of some days only gets a view of its own: the dataset's view must stay whole,
            # since a relation built on it earlier binds it again when it runs.
            self._dataset_view(*plans[dataset], name=dataset if days is None else day_view(dataset))
        shape = tuple(f[:3] for f in fields)
        if everything and shape != self._shape:
            self._shape = shape
            union = " UNION ALL ".join(f'SELECT {_quote(r)} AS resource, * FROM "{d}"' for r, _f, d, *_ in fields)
            self.con.execute("CREATE OR REPLACE VIEW ec_transactions AS "
                             + (union or f"SELECT NULL::VARCHAR AS resource, * FROM ({EMPTY_TX})"))
        if with_values and everything and shape != self._values_shape:  # it binds every resource's records
            self._values_shape = shape
            self.con.execute("CREATE OR REPLACE VIEW ec_values AS " + (" UNION ALL ".join(values) or
                             "SELECT NULL::VARCHAR AS resource, NULL::VARCHAR AS field, NULL::VARCHAR AS id, "
                             "NULL::DOUBLE AS value WHERE false"))
        if with_pending:
            empty = (f"SELECT NULL::VARCHAR AS resource, * EXCLUDE (cohortDate, cohortMonth, applied), "
                     f"NULL::TIMESTAMPTZ AS writtenAt FROM ({EMPTY_TX})")
            self._view("ec_pending", " UNION ALL ".join(pending_reads) or empty, pending_lists)
        return self.con

    def connection(self) -> duckdb.DuckDBPyConnection:
        """:meth:`refresh` of every view, for free-form use; creating a view reads its first
        object, so a corrupt or vanished one is a typed error here too (see :meth:`sql`)."""
        with snapshot_guard():
            return self.refresh()

    def sql(self, query: str, params: dict[str, Any] | None = None, *, days: Collection[str] | None = None) -> Relation:
        """Run ``query`` against fresh views; ``.pl()`` on the result gives Polars. A file that
        vanishes later (maintenance replaced it) raises :class:`SnapshotGoneError` on fetch.
        ``days`` (cohort days, ISO): the query reads only those days through :func:`day_view`
        views, which name only their objects (their SQL does not grow with the history); fetch
        such a result at once (a later ``days`` query replaces those views)."""
        for attempt in range(3):
            try:
                with snapshot_guard():  # creating a view reads its first object too
                    con = self.refresh(query, days=days)
                    return Relation(con.sql(query, params=params) if params else con.sql(query))
            except SnapshotGoneError:
                # An object the manifest named was removed since (a maintenance job committed
                # after this refresh read the state): read the new state and ask again.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def frame(self, query: str, params: dict[str, Any] | None = None, *, days: Collection[str] | None = None,
              attempts: int = 3) -> pl.DataFrame:
        """Run ``query`` and fetch it as Polars at once; a file replaced by maintenance between the
        two (:class:`SnapshotGoneError`) makes it plan again on the new state."""
        for attempt in range(attempts):
            try:
                result: pl.DataFrame = self.sql(query, params, days=days).pl()
                return result
            except SnapshotGoneError:
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")
