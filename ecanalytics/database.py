"""``connect()`` and :class:`Database`: the entry point that owns storage, resources and plugins."""

from __future__ import annotations

import atexit
import difflib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ecanalytics import display
from ecanalytics.consolidation import ConsolidationResult
from ecanalytics.errors import (
    ConfigurationError,
    ConsolidationFailedError,
    CorruptObjectError,
    EcError,
    RootNotFoundError,
    UnknownResourceError,
)
from ecanalytics.ledger import Ledger, Schema
from ecanalytics.ledger import catalog as cat
from ecanalytics.ledger.buckets import DEFAULT_BUCKETS, check_buckets
from ecanalytics.ledger.log import CommitProperties
from ecanalytics.plugin import EventualConsistencyPlugin
from ecanalytics.resource import Resource, TransactionDataset
from ecanalytics.storage import StorageConfig, Store
from ecanalytics.storage import paths as P
from ecanalytics.storage.store import probe_endpoint, s3_errors
from ecanalytics.types import is_positive_int

if TYPE_CHECKING:
    import duckdb

    from ecanalytics.analytics import Relation, SqlEngine, Table

log = logging.getLogger(__name__)
DEFAULT_ROOT = "./ec-data"
# The end of RootNotFoundError's message; the CLI says it in flags instead.
CREATE_HINT = " Check the root, or connect with create=True to start a new database there."
MAX_DEDUP_WINDOW_S = 100 * 365 * 86400  # 100 years; more would overflow the cut-off date


def _check_options(checkpoint_interval: object, dedup_window_s: object) -> None:
    """``checkpoint_interval`` is an int >= 1; ``dedup_window_s`` a finite number of seconds from 0
    (ids are forgotten once applied) to 100 years. Strings such as ``"10"`` are not converted."""
    if not is_positive_int(checkpoint_interval):
        raise ConfigurationError(
            f"checkpoint_interval must be a positive integer (commits between checkpoints, e.g. 10); "
            f"got {P.describe(checkpoint_interval)}."
        )
    if (isinstance(dedup_window_s, bool) or not isinstance(dedup_window_s, (int, float))
            or not 0 <= dedup_window_s <= MAX_DEDUP_WINDOW_S):  # NaN fails this comparison too
        raise ConfigurationError(
            f"dedup_window must be a number of seconds from 0 to {MAX_DEDUP_WINDOW_S} (100 years), e.g. 604800 "
            f"for a week; got {P.describe(dedup_window_s)}."
        )


class Resources(Mapping[str, "Resource | TransactionDataset"]):
    """Read-only view of a database's resources and transaction datasets, by name."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _all(self) -> dict[str, Resource | TransactionDataset]:
        out: dict[str, Resource | TransactionDataset] = {}
        for name in self._db.resource_names():
            out[name] = res = self._db.resource(name)
            for plugin in res.plugins.values():
                out[plugin.dataset] = TransactionDataset(plugin)
        return out

    def __getitem__(self, name: str) -> Resource | TransactionDataset:
        if name in self._db.resource_names() or name in self._db.broken:
            return self._db.resource(name)
        found = self._all().get(name)
        if found is None:
            raise UnknownResourceError(
                f"No resource or transaction dataset named {name!r}; known: {sorted(self._all())}."
            )
        return found

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _at_exit(func: Callable[[], None]) -> None:
    # Flush at exit *before* concurrent.futures stops accepting work: aiobotocore needs the
    # default executor (DNS) for S3 requests, so a plain atexit hook would hang in retries.
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(func)
    else:  # pragma: no cover - CPython has had _register_atexit since 3.9
        atexit.register(func)


def _closer(ref: weakref.ref[Database]) -> Callable[[], None]:
    # A weak reference, so that registering at exit does not keep a database alive.
    def close() -> None:
        db = ref()
        if db is not None:
            db.close()

    return close


class Database:
    """All resources under one root URI. Use :func:`connect` to open one.

    The database is a context manager: leaving the ``with`` block calls :meth:`close`, which
    flushes batched transactions and stops background threads. Interpreter exit flushes too.
    """

    def __init__(self, config: StorageConfig, *, checkpoint_interval: int = 10, dedup_window_s: float = 7 * 86400) -> None:
        _check_options(checkpoint_interval, dedup_window_s)
        self.config = config
        self.store = Store(config)
        self.checkpoint_interval = checkpoint_interval
        self.dedup_window_s = dedup_window_s
        self._resources: dict[str, Resource] = {}
        self._deferred: dict[tuple[str, str], EventualConsistencyPlugin] = {}
        self._lock = threading.RLock()
        self._closed = False
        self._sql_engine: SqlEngine | None = None
        self.resources = Resources(self)
        self._atexit = _closer(weakref.ref(self))
        _at_exit(self._atexit)
        self._reopen()

    def __repr__(self) -> str:
        """The root and its resources, as opened: no request."""
        return display.database_repr(self.uri, self.resource_names())

    def _repr_html_(self) -> str:
        """The Jupyter view: records and version of each resource as this process holds them
        ("not loaded" otherwise). No request: looking changes nothing, and costs nothing."""
        rows = []
        for name, res in sorted(self._resources.items()):
            st = res.ledger.in_memory()
            rows.append((name, st.loaded_record_count() if st else None, st.version if st else None,
                         ", ".join(f"{f} ({p.reducer_name})" for f, p in res.plugins.items())))
        return display.database_html(self.uri, rows, dict(self._broken))

    @property
    def uri(self) -> str:
        """The root URI, without credentials."""
        return self.config.uri

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _reopen(self) -> None:
        entries, self._broken = cat.read_all(self.store)
        for name, entry in entries.items():
            try:
                resource = self._make_resource(name, Schema.parse(entry["attributes"]), entry.get("buckets"))
                for field, config in entry.get("plugins", {}).items():
                    self._attach(resource, EventualConsistencyPlugin.from_config(name, field, config), persist=False)
            except EcError as exc:  # an entry that parses as JSON but not as a schema or plugin
                self._resources.pop(name, None)
                self._broken[name] = CorruptObjectError(
                    f"Catalog entry {self.store.url(P.catalog_entry(name))} does not describe a valid resource "
                    f"({exc}); restore it from a backup.")
                self._broken[name].__cause__ = exc

    def has_catalog(self) -> bool:
        """Whether the root holds an ecanalytics catalog (at least one resource, even a broken one)."""
        return bool(self._resources or self._broken)

    def _make_resource(self, name: str, schema: Schema, buckets: object = None) -> Resource:
        ledger = Ledger(self.store, name, schema, properties=CommitProperties(
                            checkpoint_interval=self.checkpoint_interval, dedup_window_s=self.dedup_window_s),
                        buckets=check_buckets(buckets) if buckets is not None else DEFAULT_BUCKETS)
        resource = Resource(name, schema, ledger)
        self._resources[name] = resource
        return resource

    def _attach(self, resource: Resource, plugin: EventualConsistencyPlugin, *, persist: bool) -> None:
        old = resource.plugins.get(plugin.field)
        if old is not None and old is not plugin:
            old.close()
        # The database is where resources and plugins are wired together; not a user call.
        plugin._attach(resource.ledger, resource.schema, self._engine)  # noqa: SLF001
        resource.plugins[plugin.field] = plugin
        if persist:
            cat.save_plugin(self.store, resource.name, plugin.field, plugin.config())

    def create_resource(self, name: str, attributes: dict[str, str], *, buckets: int | None = None) -> Resource:
        """Create a resource, or return the existing one if its attributes are the same.

        ``buckets`` splits the records by a stable hash of their id (default
        :data:`~ecanalytics.ledger.buckets.DEFAULT_BUCKETS`, 16; about one bucket per 10^5-10^6
        records): a commit, a checkpoint and a ``get`` touch only the buckets they need. To change
        the count of an existing resource use :meth:`Resource.rebucket`.

        With a superset of the stored attributes, the new ones are added (schema evolution, see
        :meth:`Resource.add_attribute`): each must be optional or have a default, which existing
        records then read. A change stored data could not follow (removing an attribute, changing
        its type or default, requiring one without a default) raises
        :class:`SchemaEvolutionError` (also a :class:`ResourceExistsError`) and changes nothing.

        Attribute specs: ``'string|required'``, ``'number|default:0'``, ``'integer'``, ``'boolean'``.
        Plugins registered earlier for this resource are attached now (deferred setup).

        Everything is checked before the catalog entry is written: the name, every attribute
        (defaults included), and that each plugin waiting for this resource manages a numeric
        attribute. A rejected call writes nothing, so the name stays free.
        """
        P.validate_resource_name(name)
        schema = Schema.parse(attributes)
        if buckets is not None:
            check_buckets(buckets)
        with self._lock:
            for (res_name, field), _plugin in self._deferred.items():
                attr = schema.attributes.get(field)
                if res_name == name and (attr is None or not attr.numeric):
                    found = f"declare it as {attr.spec!r}" if attr else "do not declare it"
                    raise ConfigurationError(
                        f"A plugin registered for {name}.{field} waits for this resource, but the attributes {found}; "
                        f"declare {field!r} as 'number' or 'decimal(p,s)' (nothing was written)."
                    )
            entry = cat.create(self.store, name, schema.to_spec(), buckets)
            stored = Schema.parse(entry["attributes"])
            resource = self._resources.get(name) or self._make_resource(name, stored, entry.get("buckets"))
            if buckets is not None and resource.ledger.state().n_buckets != buckets:
                raise ConfigurationError(
                    f"{name} exists with {resource.ledger.state().n_buckets} buckets, not {buckets}; change the count "
                    f"with {name}.rebucket({buckets}) or `ecanalytics rebucket --resource {name} --buckets {buckets}`.")
            if stored != schema:  # schema evolution: new optional/defaulted attributes; anything else is refused
                resource._evolve(lambda _stored: schema)  # noqa: SLF001 - the one schema change path, guarded here
            elif resource.schema != stored:  # another process evolved it since this one connected
                resource._evolve(lambda latest: latest)  # noqa: SLF001 - as above
            for (res_name, _field), plugin in list(self._deferred.items()):
                if res_name == name:
                    del self._deferred[(res_name, _field)]
                    self._attach(resource, plugin, persist=True)
            return resource

    def use_plugin(self, plugin: EventualConsistencyPlugin) -> EventualConsistencyPlugin:
        """Register a plugin. If its resource does not exist yet, setup waits until it is created.
        A plugin for an already-managed field replaces the previous one (and its stored config)."""
        with self._lock:
            resource = self._resources.get(plugin.resource_name)
            if resource is None:
                self._deferred[(plugin.resource_name, plugin.field)] = plugin
            else:
                self._attach(resource, plugin, persist=True)
        return plugin

    @property
    def broken(self) -> Mapping[str, CorruptObjectError]:
        """The resources whose catalog entry could not be opened, each with the error that says
        what to do (read-only). The others open and work as usual."""
        return MappingProxyType(self._broken)

    def resource_names(self) -> list[str]:
        """The names of the resources opened (not the transaction datasets, not the broken ones), sorted."""
        return sorted(self._resources)

    def resource(self, name: str) -> Resource:
        """The resource ``name``: :class:`UnknownResourceError` (naming the known ones) if the
        root has none, or the error that kept its catalog entry from opening."""
        if name in self._resources:
            return self._resources[name]
        if name in self._broken:
            raise self._broken[name]
        raise UnknownResourceError(f"No resource named {name!r}; known: {sorted(self._resources)}.")

    def plugins(self, resource: str | None = None, field: str | None = None) -> list[EventualConsistencyPlugin]:
        """The managed fields' plugins, by resource then field; only ``resource``'s (or only its
        ``field``) when given. An unknown resource raises :class:`UnknownResourceError`, an
        unknown field :class:`UnknownFieldError`."""
        if resource is not None and resource not in self._resources:
            raise UnknownResourceError(f"No resource named {resource!r}; known: {sorted(self._resources)}.")
        names = [resource] if resource else sorted(self._resources)
        out = []
        for name in names:
            res = self._resources[name]
            out.extend([res.plugin(field)] if field else [res.plugins[f] for f in sorted(res.plugins)])
        return out

    def consolidate(self, resource: str | None = None, field: str | None = None, *, client: Any = None,
                    progress: Callable[[str, int, int], None] | None = None) -> list[ConsolidationResult]:
        """Consolidate every managed field (or the ones named); one result per field.

        One field's failure is that field's only: the others still consolidate, and afterwards
        :class:`ConsolidationFailedError` is raised with every success (``.results``) and every
        failure (``.failures``, keyed ``"resource.field"``).

        ``client`` (a ``distributed.Client``) runs the reading and folding on its Dask workers,
        bucket by bucket; this process plans and writes the one commit, with the same guarantees
        and bit-identical values (see :mod:`ecanalytics.consolidation.cluster`; the workers take
        credentials from their own environment). ``progress`` is called with
        ``("resource.field", buckets done, buckets in all)``. Needs ``pip install "ecanalytics[dask]"``."""
        results: list[ConsolidationResult] = []
        failures: dict[str, BaseException] = {}
        for plugin in self.plugins(resource, field):
            try:
                engine = None
                if client is not None:
                    from ecanalytics.consolidation.cluster import DaskEngine

                    name = f"{plugin.resource_name}.{plugin.field}"
                    tick = (lambda done, total, name=name: progress(name, done, total)) if progress else None
                    engine = DaskEngine(client, plugin.consolidator, tick)
                results.append(plugin.consolidate(engine))
            except Exception as exc:
                failures[f"{plugin.resource_name}.{plugin.field}"] = exc
        if failures:
            first = next(iter(failures.items()))
            raise ConsolidationFailedError(
                f"{len(failures)} of {len(failures) + len(results)} field(s) failed to consolidate "
                f"(first: {first[0]}: {first[1]}); the others committed.", list(results), failures) from first[1]
        return results

    # -- SQL -------------------------------------------------------------------------------
    def _engine(self) -> SqlEngine:
        if self._sql_engine is None:
            from ecanalytics.analytics import SqlEngine  # DuckDB is imported on first SQL use only

            self._sql_engine = SqlEngine(self.config, self.store, self._tables)
        return self._sql_engine

    def _tables(self) -> list[Table]:
        """What the SQL engine reads: each resource's ledger and its fields' cores."""
        from ecanalytics.analytics import Table

        return [Table(name, res.ledger, {f: (p.consolidator, p.reducer_name) for f, p in res.plugins.items()})
                for name, res in self._resources.items()]

    def sql(self, query: str, **params: Any) -> Relation:
        """Run DuckDB SQL over views named after every resource and transaction dataset.

        Views see the latest committed state. The result is a DuckDB relation (wrapped: see
        :class:`~ecanalytics.analytics.Relation`); ``.pl()`` on it gives a Polars DataFrame;
        ``$name`` placeholders take ``params``. If maintenance replaces an object the query reads
        before it is fetched, fetching raises :class:`SnapshotGoneError`: re-run the query.

        Example:
            ``db.sql("SELECT cohortDate, count(*) FROM wallets_transactions_balance GROUP BY 1").pl()``
        """
        return self._engine().sql(query, params or None)

    def duckdb(self) -> duckdb.DuckDBPyConnection:
        """The configured DuckDB connection (views refreshed now) for free-form use."""
        return self._engine().connection()

    def flush(self) -> int:
        """Write every buffered transaction now; returns how many were written."""
        return sum(p.flush() for res in list(self._resources.values()) for p in list(res.plugins.values()))

    def close(self) -> None:
        """Flush batches and stop background threads. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self._atexit)
        for res in list(self._resources.values()):
            for plugin in list(res.plugins.values()):
                try:
                    plugin.close()
                except Exception:
                    log.exception("Closing %s failed", plugin.dataset)


def connect(
    uri: str | os.PathLike[str] = DEFAULT_ROOT,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    key: str | None = None,
    secret: str | None = None,
    token: str | None = None,
    profile: str | None = None,
    storage_options: Mapping[str, str] | None = None,
    checkpoint_interval: int = 10,
    dedup_window: float = 7 * 86400,
    create: bool = True,
) -> Database:
    """Open (or create) a database at ``uri`` and reopen every resource and plugin in its catalog.

    Args:
        uri: a folder (default ``./ec-data``), ``file:///abs``, ``memory://name`` or
            ``s3://[KEY:SECRET@]bucket/prefix``.
        endpoint_url: S3-compatible endpoint (MinIO, moto, ...); default from ``AWS_ENDPOINT_URL``.
        region: S3 region; default from ``AWS_REGION`` / ``AWS_DEFAULT_REGION``, else us-east-1.
        key, secret: static S3 credentials, used as given (also from the URI). Without them,
            botocore's provider chain supplies credentials (the environment, a profile, SSO,
            web identity, an instance role) and refreshes temporary ones before they expire.
        token: an S3 session token to go with ``key`` and ``secret`` (or with the environment's keys).
        profile: an AWS profile of ``~/.aws/config`` / ``~/.aws/credentials``: the chain starts
            there (its region counts too); nothing of it is frozen at connect.
        storage_options: the same options as one dict with Polars' (and deltalake's) keys:
            ``aws_access_key_id``, ``aws_secret_access_key``, ``aws_session_token``,
            ``aws_region``, ``aws_endpoint_url``, ``aws_profile``.
        checkpoint_interval: write a full checkpoint every this many commits (an int >= 1).
        dedup_window: seconds for which caller-supplied transaction ids are remembered after they
            were applied (retries within it are not counted twice): a finite number from 0 to
            100 years. Bad options raise :class:`ConfigurationError` before the root is touched.

    Missing S3 credentials raise :class:`CredentialsError` (a ``PermissionError``), and an
    endpoint that does not answer :class:`EndpointUnreachableError` (a ``ConnectionError``), both
    saying what to do.

    Example:
        >>> import ecanalytics as ec
        >>> with ec.connect("memory://doc") as db:
        ...     db.uri
        'memory:///doc'
    """
    config = StorageConfig.from_uri(uri, endpoint_url=endpoint_url, region=region, key=key, secret=secret,
                                    token=token, profile=profile, storage_options=storage_options)
    _check_options(checkpoint_interval, dedup_window)
    probe_endpoint(config)
    with s3_errors(config):
        db = Database(config, checkpoint_interval=checkpoint_interval, dedup_window_s=dedup_window)
        try:
            problem = _missing_bucket(db) or (None if create or db.has_catalog() else _no_catalog(db))
        except BaseException:
            db.close()
            raise
    if problem:
        db.close()
        raise RootNotFoundError(problem)
    return db


def _missing_bucket(db: Database) -> str | None:
    if db.config.protocol != "s3":
        return None
    bucket = db.store.root.lstrip("/").split("/", 1)[0]
    try:
        db.store.fs.ls(bucket, refresh=True)
    except FileNotFoundError:
        return f"The bucket {bucket!r} of {db.uri} does not exist (or these credentials cannot see it); create it first."
    return None


def _no_catalog(db: Database) -> str:
    """The message for a root without a catalog, naming a nearby root that has one."""
    message = f"No ecanalytics catalog at {db.uri}."
    parent, _, name = db.store.root.rstrip("/").rpartition("/")
    try:
        siblings = [p.rstrip("/").rsplit("/", 1)[-1] for p in db.store.fs.ls(parent or "/", detail=False)]
    except (OSError, ValueError):
        siblings = []
    close = [s for s in difflib.get_close_matches(name, siblings, n=3, cutoff=0.6)
             if s != name and db.store.fs.exists(f"{parent}/{s}/{P.catalog_dir()}")]
    if close:
        message += f" Did you mean {db.uri.rsplit('/', 1)[0]}/{close[0]}?"
    return message + CREATE_HINT
