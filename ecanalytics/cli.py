"""The ``ecanalytics`` command: a thin shell over the library for batch jobs and demos.

Exit codes: 0 success, 1 failure, 2 bad usage. Errors print one line; ``--log-level debug``
adds the traceback. Only credential-free URIs are ever printed.

``--output json`` writes JSON Lines: one JSON object per line, never indented, also on failure
(``{"error": ..., "type": ..., "exitCode": 1}`` on stdout), and log records become JSON objects on
stderr, so ``>> ec.log 2>&1`` stays valid JSON Lines.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import click
import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecanalytics import __version__
from ecanalytics.database import DEFAULT_ROOT, Database, connect
from ecanalytics.errors import EcError
from ecanalytics.ledger.buckets import MAX_BUCKETS
from ecanalytics.resource import Resource
from ecanalytics.storage import Store

OutputFormat = Literal["text", "json", "csv"]
log = logging.getLogger("ecanalytics")
# Injectable for tests of --watch: the loop's clock (seconds) and sleep.
_clock: Callable[[], float] = time.monotonic
_sleep: Callable[[float], None] = time.sleep


def _now() -> str:
    """UTC now as ISO 8601 (``2026-11-27T14:03:00Z``): the timestamp of every log line."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _jsonable(value: object) -> object:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    return str(value)  # Decimal stays exact as text


def json_line(payload: Mapping[str, Any]) -> str:
    """One JSON object on one line."""
    return json.dumps(payload, default=_jsonable, ensure_ascii=False)


class Output:
    """Renders results as rich text on a terminal, or as JSON Lines for machines.

    ``stamp`` (``consolidate --watch``) puts a UTC timestamp at the start of every text line.
    """

    def __init__(self, fmt: OutputFormat, *, stamp: bool = False) -> None:
        self.fmt = fmt
        self.stamp = stamp
        # Off a terminal rich would wrap at 80 columns; reports are wider than that.
        self.console = Console() if sys.stdout.isatty() else Console(width=200)

    def frame(self, title: str, df: pl.DataFrame) -> None:
        if self.fmt == "json":
            return
        table = Table(title=title)
        for column in df.columns:
            table.add_column(column, justify="right" if df.schema[column].is_numeric() else "left")
        for row in df.iter_rows():
            table.add_row(*[f"{v:,.2f}" if isinstance(v, float) else str(v) for v in row])
        self.console.print(table)

    def table(self, title: str, df: pl.DataFrame) -> None:
        """A whole result: a rich table, one JSON object per row and line, or CSV."""
        if self.fmt == "json":
            for row in df.iter_rows(named=True):
                click.echo(json_line(row))
        elif self.fmt == "csv":
            click.echo(df.write_csv(), nl=False)
        else:
            self.frame(title, df)

    def summary(self, payload: dict[str, Any], text: str) -> None:
        """One line: a JSON object with ``time`` first, or ``text`` (stamped when watching)."""
        if self.fmt == "json":
            click.echo(json_line({"time": _now(), **payload}))
        else:
            self.console.print(f"{_now()} {text}" if self.stamp else text, highlight=False)

    def warn(self, text: str) -> None:
        """A line for people on stderr; in JSON mode a log record (JSON on stderr too)."""
        log.warning(text) if self.fmt == "json" else click.echo(f"{_now()} {text}" if self.stamp else text, err=True)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the *current* ``sys.stderr`` (click's test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"time": dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            payload["traceback"] = self.formatException(record.exc_info)
        return json_line(payload)


def _configure_logging(level: str | None = None, *, json_lines: bool | None = None) -> None:
    """Set the level and (JSON or text) format of log records on stderr; may be called again."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
        root.addHandler(handler)
    if level is not None:
        root.setLevel(level.upper())
        handler.setLevel(level.upper())  # also for loggers that set their own level (werkzeug)
    if json_lines is not None:
        handler.setFormatter(_JsonLogFormatter() if json_lines else logging.Formatter(
            "%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))


def _restore_logging(level: int) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    root.setLevel(level)


def _progress_console() -> Console:
    """Progress bars draw on stderr, so that stdout stays the command's result."""
    return Console(stderr=True)


def _tty() -> bool:
    return sys.stderr.isatty()


@contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _n: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True, console=_progress_console()) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, completed=n)


def _parquet_rows(blob: bytes) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(pa.BufferReader(blob)).metadata.num_rows)
    except Exception:  # not Parquet, or corrupt: the job itself reports that
        return 0


class ObjectProgress:
    """A progress bar of the transaction objects and rows a job reads, not of its fields.

    It listens to :attr:`Store.on_read`, so consolidation, recalculation, retention and
    compaction need no hooks of their own. Shown on stderr, and only when ``enabled`` (a
    terminal, text output). ``objects``/``rows`` count what was read, bar or not.
    """

    def __init__(self, store: Store, label: str, *, total: int | None = None, enabled: bool = True) -> None:
        self.store, self.label, self.total, self.enabled = store, label, total, enabled
        self.objects = self.rows = 0
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> ObjectProgress:
        if self.enabled:
            self._bar = Progress(
                TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TextColumn("objects"),
                TextColumn("{task.fields[rows]:,} rows"), TimeElapsedColumn(),
                transient=True, console=_progress_console())
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, rows=0)
            self.store.on_read = self._read
        return self

    def _read(self, blobs: Mapping[str, bytes | None]) -> None:
        found = [b for b in blobs.values() if b is not None]
        self.objects += len(found)
        self.rows += sum(_parquet_rows(b) for b in found)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.objects, rows=self.rows)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self.store.on_read = None
            self._bar.stop()


def _open(root: str, endpoint_url: str | None, *, create: bool = False) -> Database:
    """Every command but ``demo`` needs an existing catalog: a typo in --root must fail loudly,
    not report success over nothing. A resource whose catalog entry is unreadable is named on
    stderr (``consolidate`` also fails on it)."""
    db = connect(root, endpoint_url=endpoint_url, create=create)
    for name, error in sorted(db._broken.items()):
        log.error("Resource %s cannot be opened: %s", name, error)
    return db


def _fields(db: Database, resource: str | None, field: str | None) -> list[tuple[Resource, str]]:
    """(resource, field) of every managed field, or of the ones named."""
    return [(db._resources[p.resource_name], p.field) for p in db._plugins(resource, field)]


def _use_reducer(db: Database, spec: str) -> None:
    """``--reducer wallets.balance=pkg.mod:func``: the function of a field configured with a custom
    reducer, for this run only (never stored; a built-in reducer is never replaced)."""
    from ecanalytics.consolidation.reducers import load_reference
    from ecanalytics.errors import ConfigurationError

    target, _, ref = spec.partition("=")
    res_name, _, field = target.partition(".")
    if not ref or not field:
        raise click.BadParameter(f"{spec!r}: expected RESOURCE.FIELD=MODULE:FUNCTION", param_hint="--reducer")
    resource = db.resources[res_name]
    if not isinstance(resource, Resource):
        raise click.BadParameter(f"{res_name} is a transaction dataset, not a resource", param_hint="--reducer")
    try:
        resource.plugin(field).supply_reducer(load_reference(ref))
    except ConfigurationError as exc:
        raise click.BadParameter(str(exc), param_hint="--reducer") from exc


root_option = click.option("--root", default=DEFAULT_ROOT, show_default=True, envvar="EC_ROOT",
                           help="Database root: folder, file://, memory:// or s3://bucket/prefix.")
endpoint_option = click.option("--endpoint-url", default=None, envvar="AWS_ENDPOINT_URL",
                               help="S3-compatible endpoint (default: AWS_ENDPOINT_URL).")
resource_option = click.option("--resource", default=None, help="Only this resource.")
field_option = click.option("--field", default=None, help="Only this managed field.")
target_resource_option = click.option("--resource", required=True, help="The resource.")
target_field_option = click.option("--field", default=None,
                                   help="The managed field (required when several are managed).")
LOG_LEVELS = ["debug", "info", "warning", "error"]


def _output_callback(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    _configure_logging(json_lines=value == "json")
    return value


def _log_level_callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        _configure_logging(value)


output_option = click.option("--output", "output_fmt", type=click.Choice(["text", "json"]), default="text",
                             show_default=True, callback=_output_callback,
                             help="Text for people; JSON Lines (one object per line) for machines.")
# Accepted after the subcommand too (``ecanalytics consolidate --log-level debug``).
log_level_option = click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None, expose_value=False,
                                callback=_log_level_callback, help="Logging verbosity; debug also prints tracebacks.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ecanalytics", message="%(prog)s %(version)s")
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default="warning",
              show_default=True, help="Logging verbosity; debug also prints tracebacks (also after the subcommand).")
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """ecanalytics: eventually consistent counters and balances on object storage."""
    root_logger = logging.getLogger()
    saved = root_logger.level
    _configure_logging(log_level)
    ctx.call_on_close(lambda: _restore_logging(saved))  # in-process callers (tests) get their logging back
    ctx.obj = {"debug": log_level == "debug"}


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
@click.option("--records", default=50, show_default=True, type=click.IntRange(1), help="Wallets to create.")
@click.option("--transactions", default=2000, show_default=True, type=click.IntRange(1), help="Transactions to write.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed of the sample traffic.")
def demo(root: str, endpoint_url: str | None, output_fmt: OutputFormat, records: int, transactions: int, seed: int) -> None:
    """Write sample wallet traffic, consolidate it, print values and a cohort summary."""
    from ecanalytics.demo import run_demo

    out = Output(output_fmt)
    started = time.perf_counter()
    with _open(root, endpoint_url, create=True) as db, _progress(transactions, "writing", out.fmt == "text" and _tty()) as tick:
        report = run_demo(db, records=records, transactions=transactions, seed=seed, progress=tick)
        uri = db.uri
    out.frame("Wallets (top 10 by balance)", report.values.sort("balance", descending=True).head(10))
    out.frame("Cohorts of wallets_transactions_balance (America/Sao_Paulo)", report.cohorts)
    applied = sum(r.transactions for r in report.results)
    out.summary(
        {"root": uri, "written": report.written, "applied": applied,
         "consolidations": [r.as_dict() for r in report.results],
         "values": report.values.to_dicts(), "cohorts": report.cohorts.to_dicts(),
         "seconds": round(time.perf_counter() - started, 3)},
        f"Wrote {report.written} transactions to {uri}; applied {applied} in "
        f"{len(report.results)} consolidations ({time.perf_counter() - started:.2f}s).",
    )


@contextmanager
def _dask_client(address: str | None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``--dask`` (``local:N`` starts a LocalCluster of N worker
    processes, one thread each), or None without the option."""
    if address is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise click.UsageError('--dask needs Dask: pip install "ecanalytics[dask]"') from exc
    if address.startswith("local:"):
        try:
            workers = int(address.split(":", 1)[1])
        except ValueError:
            raise click.BadParameter("use local:N (N worker processes) or a scheduler address", param_hint="--dask") from None
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                          dashboard_address=":0") as cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
            yield client
        return
    with Client(address) as client:  # type: ignore[no-untyped-call]
        yield client


def _bucket_progress(enabled: bool) -> Any:
    """A rich progress bar of buckets done per field, for cluster runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("buckets"),
                    console=_progress_console(), disable=not enabled, transient=True)


def _consolidate_once(db: Database, plugins: list[Any], out: Output,
                      client: Any = None) -> tuple[dict[str, Any], dict[str, Exception]]:
    """One pass over ``plugins``; a field that fails is reported and the others go on."""
    started = time.perf_counter()
    results: list[Any] = []
    failures: dict[str, Exception] = {}
    for broken, error in sorted(db._broken.items()):  # its backlog cannot be applied: fail loudly
        failures[f"{broken}.*"] = error
        if out.fmt == "text":
            out.warn(f"error: {broken}: {error}")
    bar = out.fmt == "text" and _tty()
    # The bar counts the pending objects (one LIST per field, only when it is shown) and their rows.
    total = sum(len(p.consolidator.pending_objects(p.consolidator.ledger.state())) for p in plugins) if (
        bar and client is None) else None
    with ObjectProgress(db.store, "consolidating", total=total, enabled=bar and client is None), \
            _bucket_progress(bar and client is not None) as buckets:
        for plugin in plugins:
            name = f"{plugin.resource_name}.{plugin.field}"
            try:  # one field's failure is that field's only: go on, exit 1 at the end
                engine = None
                if client is not None:
                    from ecanalytics.consolidation.cluster import DaskEngine

                    task = buckets.add_task(name, total=None)

                    def tick(done: int, total: int, task: Any = task) -> None:
                        buckets.update(task, completed=done, total=total)

                    engine = DaskEngine(client, plugin.consolidator, tick)
                results.append(plugin.consolidate(engine))
            except Exception as exc:
                failures[name] = exc
                if out.fmt == "text":
                    kind = "" if isinstance(exc, EcError) else f"{type(exc).__name__}: "
                    out.warn(f"error: {name}: {kind}{exc}")
    payload = {
        "root": db.uri, "results": [r.as_dict() for r in results],
        "failures": [{"resource": k.split(".")[0], "field": k.split(".")[1], "error": type(e).__name__,
                      "message": str(e)} for k, e in failures.items()],
        "transactions": sum(r.transactions for r in results), "records": sum(r.records for r in results),
        "versions": sum(r.version is not None for r in results), "seconds": round(time.perf_counter() - started, 3),
        "exitCode": 1 if failures else 0,
    }
    return payload, failures


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
@resource_option
@field_option
@click.option("--reducer", "reducers", multiple=True, metavar="RESOURCE.FIELD=MODULE:FUNCTION",
              help="A custom Python reducer for a field, e.g. wallets.balance=mypkg.reducers:capped (repeatable).")
@click.option("--watch", is_flag=True, help="Keep consolidating every --interval seconds; every line is timestamped.")
@click.option("--interval", default=60.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between runs with --watch.")
@click.option("--heartbeat", default=10.0, show_default=True, type=click.FloatRange(min=0),
              help="With --watch, idle runs print nothing; one line at most every this many minutes says it is alive.")
@click.option("--max-runs", type=click.IntRange(1), default=None, hidden=True, help="Stop --watch after this many runs (tests).")
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS|local:N",
              help="Fold on a Dask cluster: a scheduler address (tcp://host:8786) or local:N worker processes. "
                   "Workers take S3 credentials from their own environment.")
def consolidate(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str | None,
                field: str | None, reducers: tuple[str, ...], watch: bool, interval: float, heartbeat: float,
                max_runs: int | None, dask_address: str | None) -> None:
    """Consolidate every managed field (or the ones named): the batch job for async mode.

    A field that fails (for example, a custom reducer this process does not have) is reported and
    the others go on; the exit code is 1 if any field failed. With ``--watch``, a run that
    committed nothing and failed nowhere is idle and prints nothing, except a heartbeat line at
    most every ``--heartbeat`` minutes; the first run and every busy or failed run print a line."""
    out = Output(output_fmt, stamp=watch)
    with _open(root, endpoint_url) as db, _dask_client(dask_address) as client:
        for spec in reducers:
            _use_reducer(db, spec)
        plugins = db._plugins(resource, field)
        runs = quiet = 0
        last_line: float | None = None
        while True:
            runs += 1
            payload, failures = _consolidate_once(db, plugins, out, client)
            idle = not failures and payload["versions"] == 0
            now = _clock()
            if not watch or not idle or last_line is None or now - last_line >= heartbeat * 60:
                text = (
                    f"Applied {payload['transactions']} transactions to {payload['records']} records in "
                    f"{payload['versions']} commits over {len(plugins)} fields ({payload['seconds']}s)."
                    + (f" {len(failures)} field(s) FAILED: {', '.join(failures)}." if failures else "")
                )
                if watch:
                    payload.update(run=runs, idle=idle, quietRuns=quiet)
                    if idle and last_line is not None:
                        text = f"Idle: nothing to consolidate over {len(plugins)} fields ({quiet} quiet runs since the last line)."
                out.summary(payload, text)
                last_line, quiet = now, 0
            else:
                quiet += 1
            if not watch or (max_runs is not None and runs >= max_runs):
                if failures:
                    raise SystemExit(1)
                return
            _sleep(interval)


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
def inspect(root: str, endpoint_url: str | None, output_fmt: OutputFormat) -> None:
    """Per resource and field: pending backlog and its age (by write time, then event time),
    version, last checkpoint, objects and sizes."""
    from ecanalytics.storage import paths as P

    out = Output(output_fmt)
    rows = []
    with _open(root, endpoint_url) as db:
        for name in sorted(db._resources):
            resource = db._resources[name]
            state = resource.ledger.state()
            try:
                checkpoint = json.loads(db.store.read(P.last_checkpoint(name)))["version"]
            except (FileNotFoundError, ValueError, KeyError):
                checkpoint = None
            fields: list[str | None] = [*sorted(resource.plugins)] or [None]
            for field in fields:
                row: dict[str, Any] = {"resource": name, "field": field, "records": state.records.height,
                                       "version": state.version, "checkpoint": checkpoint}
                if field is not None:
                    plugin = resource.plugins[field]
                    health = plugin.inspect()
                    objects, size = db.store.du(plugin.dataset, ".parquet")
                    row.update(**health, objects=objects, bytes=size, reducer=plugin.reducer_name,
                               timezone=plugin.timezone)
                    if health["deleteDenied"]:
                        out.warn(f"warning: the store refuses deletes under {plugin.dataset}/_inbox; "
                                 f"{health['staleMarkers']} consumed marker(s) stay and are carried by every "
                                 "consolidation (exactly once still holds). Grant DeleteObject there.")
                rows.append(row)
        uri = db.uri
    if out.fmt == "json":
        out.summary({"root": uri, "fields": rows}, "")
    else:
        out.frame(f"ecanalytics at {uri}", pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame())


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
@target_resource_option
@target_field_option
@click.option("--id", "record_id", default=None, help="Only this record.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(0),
              help="Show at most this many changed records (the summary counts them all).")
def recalculate(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str, field: str | None,
                record_id: str | None, limit: int) -> None:
    """Rebuild values from the full history through the commit log; commit only what differs."""
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        res = db.resources[resource]
        if not isinstance(res, Resource):
            raise click.BadParameter(f"{resource} is a transaction dataset, not a resource", param_hint="--resource")
        with ObjectProgress(db.store, "recalculating", enabled=out.fmt == "text" and _tty()):
            result = res.recalculate(id=record_id, field=field)
    shown, more = result.values.sort("id").head(limit), max(0, result.changed - limit)
    out.summary({**result.as_dict(), "changedRecords": shown.to_dicts(), "more": more},
                f"Checked {result.checked} records against {result.transactions} transactions; "
                f"changed {result.changed} (version {result.version}) in {result.duration_s:.2f}s.")
    if shown.height:
        out.frame(f"changed records of {resource}.{result.field}", shown)
    if more and out.fmt == "text":
        out.console.print(f"… and {more} more (--limit {result.changed} shows them all)", highlight=False)


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
@click.option("--retain", required=True,
              help="Keep this much history: 30d, 4w, 12h (hours round up to whole cohort days) or 30 (days).")
@resource_option
@field_option
@click.option("--delete", "delete_", is_flag=True, help="Delete old objects instead of archiving them under _archive/.")
def gc(root: str, endpoint_url: str | None, output_fmt: OutputFormat, retain: str, resource: str | None,
       field: str | None, delete_: bool) -> None:
    """Retention: archive (or delete) applied transactions older than --retain, values unchanged."""
    from ecanalytics.resource import parse_days

    days = parse_days(retain, bare_days=True)  # errors quote --retain as typed
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        with ObjectProgress(db.store, "archiving" if not delete_ else "deleting", enabled=out.fmt == "text" and _tty()):
            results = [res.gc(days, field=f, archive=not delete_) for res, f in _fields(db, resource, field)]
        uri = db.uri
    payload = {"root": uri, "retain": retain, "results": [r.as_dict() for r in results],
               "objects": sum(r.objects for r in results), "transactions": sum(r.transactions for r in results)}
    verb = "Deleted" if delete_ else "Archived"
    cuts = sorted({r.cut for r in results})
    out.summary(payload, f"{verb} {payload['objects']} objects ({payload['transactions']} transactions) older than "
                         f"{retain} over {len(results)} fields" + (f" (cohort days before {', '.join(cuts)})." if cuts else "."))


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
@resource_option
@field_option
@click.option("--target-rows", default=1_000_000, show_default=True, type=click.IntRange(1), help="Rows per merged object.")
def compact(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str | None, field: str | None,
            target_rows: int) -> None:
    """Merge small applied transaction objects per partition, through the commit log."""
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        with ObjectProgress(db.store, "compacting", enabled=out.fmt == "text" and _tty()):
            results = [res.compact(f, target_rows=target_rows) for res, f in _fields(db, resource, field)]
        uri = db.uri
    payload = {"root": uri, "results": [r.as_dict() for r in results],
               "sources": sum(r.sources for r in results), "merged": sum(r.merged for r in results)}
    out.summary(payload, f"Merged {payload['sources']} objects into {payload['merged']} over {len(results)} fields.")


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
@target_resource_option
@click.option("--buckets", required=True, type=click.IntRange(1, MAX_BUCKETS),
              help="The new bucket count (about one bucket per 10^5-10^6 records).")
def rebucket(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str, buckets: int) -> None:
    """Split a resource's records into a new number of buckets, in one commit."""
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        res = db.resources[resource]
        if not isinstance(res, Resource):
            raise click.BadParameter(f"{resource} is a transaction dataset, not a resource", param_hint="--resource")
        before = res.ledger.state().n_buckets
        state = res.rebucket(buckets)
        uri = db.uri
    payload = {"root": uri, "resource": resource, "before": before, "buckets": state.n_buckets, "version": state.version}
    out.summary(payload, f"{resource}: {before} -> {state.n_buckets} buckets (version {state.version}).")


@cli.command()
@root_option
@endpoint_option
@log_level_option
@click.option("--engine", type=click.Choice(["athena", "spark", "trino", "duckdb"]), required=True,
              help="The engine whose DDL to print.")
@click.option("--schema", "schema_name", default=None, help="Create the tables in this database/schema.")
@click.option("--export", "export_", is_flag=True,
              help="First write the consolidated records to _export/{resource}/records.parquet, which the records tables read.")
def ddl(root: str, endpoint_url: str | None, engine: str, schema_name: str | None, export_: bool) -> None:
    """Print CREATE EXTERNAL TABLE statements (DuckDB: views) for every transaction dataset and the
    consolidated records, so Athena, Spark, Trino or DuckDB can read the root without ecanalytics."""
    from ecanalytics import ddl as ddl_module

    with _open(root, endpoint_url) as db:
        if export_:
            ddl_module.export_records(db)
        click.echo(ddl_module.generate(db, engine, schema=schema_name))  # type: ignore[arg-type]


@cli.group()
@log_level_option
def sql() -> None:
    """SQL reports and an interactive DuckDB prompt over the store's views."""


@sql.command("list")
@output_option
@log_level_option
def sql_list(output_fmt: OutputFormat) -> None:
    """List the shipped reports and their parameters."""
    from ecanalytics import reports

    for name in reports.names():
        report = reports.get(name)
        if output_fmt == "json":
            click.echo(json_line({"name": name, "description": report.description, "params": [
                {"name": p.name, "type": p.type, "required": p.required, "default": p.default} for p in report.params]}))
            continue
        params = ", ".join(f"{p.name}:{p.type}" + ("" if p.required else f"={p.default}") for p in report.params)
        click.echo(f"{name}({params})\n    {report.description}")


def _params(pairs: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"expected name=value, got {pair!r}", param_hint="--param")
        out[name.strip()] = value
    return out


@sql.command("run")
@root_option
@endpoint_option
@log_level_option
@click.argument("name")
@click.option("--param", "-p", "pairs", multiple=True, metavar="NAME=VALUE", help="A report parameter (repeatable).")
@click.option("--output", "output_fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True,
              callback=_output_callback, help="A table, JSON Lines (one object per row), or CSV.")
def sql_run(root: str, endpoint_url: str | None, name: str, pairs: tuple[str, ...], output_fmt: OutputFormat) -> None:
    """Run report NAME, e.g. ``sql run daily_totals -p start=2026-11-01 -p end=2026-11-30``."""
    from ecanalytics import reports

    params = _params(pairs)
    with _open(root, endpoint_url) as db:
        df = reports.run(db, name, **params)
    Output(output_fmt).table(name, df)


# The views ``.tables`` lists are the documented ones; these are bookkeeping behind them.
INTERNAL_VIEWS = frozenset({"ec_hidden_objects", "ec_compaction_tokens", "ec_pending_objects", "ec_held_ids"})
VIEW_DESCRIPTIONS = {
    "ec_transactions": "every transaction dataset, with a resource column",
    "ec_values": "resource, field, id, value of every managed field",
    "ec_fields": "resource, field, dataset, reducer, timezone, default, deletedBefore",
    "ec_pending": "the pending transactions, with writtenAt",
    "ec_bases": "where a rebuild of each record starts",
}


def _tables(db: Database) -> pl.DataFrame:
    con = db.duckdb()  # a refresh without a query builds every view, ec_pending and ec_bases too
    names = [n for (n,) in con.execute("SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()
             if n not in INTERNAL_VIEWS]
    datasets = {p.dataset: f"transactions of {p.resource_name}.{p.field}" for p in db._plugins()}
    about = {**{r: "consolidated records" for r in db._resources}, **datasets, **VIEW_DESCRIPTIONS}
    return pl.DataFrame({"name": names, "contents": [about.get(n, "") for n in names]}, schema={"name": pl.String, "contents": pl.String})


@sql.command("shell")
@root_option
@endpoint_option
@log_level_option
def sql_shell(root: str, endpoint_url: str | None) -> None:
    """An interactive DuckDB prompt with every view defined. End statements with ';'.

    ``.tables`` lists the views, ``.quit`` leaves. When stdin is not a terminal it runs a script:
    a last statement may omit its ';', and the first failing statement stops the script with
    exit code 1.
    """
    interactive = sys.stdin.isatty()
    out = Output("text")
    with _open(root, endpoint_url) as db:
        if interactive:
            click.echo(f"ecanalytics SQL on {db.uri}. End statements with ';'. .tables lists views, .quit leaves.")

        def run(statement: str) -> bool:
            try:
                out.frame("", db.sql(statement.strip().rstrip(";")).pl())
            except Exception as exc:  # report; a prompt stays alive, a script stops
                click.echo(f"error: {exc}", err=True)
                return False
            return True

        buffer: list[str] = []
        while True:
            if interactive:
                click.echo("ec> " if not buffer else "...> ", nl=False)
            line = sys.stdin.readline()
            if not line:
                if "".join(buffer).strip() and not run("".join(buffer)) and not interactive:
                    raise SystemExit(1)
                break
            stripped = line.strip()
            if not buffer and stripped in (".quit", ".exit"):
                break
            if not buffer and stripped == ".tables":
                out.frame("", _tables(db))
                continue
            if not buffer and not stripped:
                continue
            buffer.append(line)
            if not stripped.endswith(";"):
                continue
            statement, buffer = "".join(buffer), []
            if not run(statement) and not interactive:
                raise SystemExit(1)


@cli.command()
@root_option
@endpoint_option
@output_option
@log_level_option
@target_resource_option
@target_field_option
@click.option("--batch-size", default=1_000_000, show_default=True, type=click.IntRange(1),
              help="At most this many rows per transaction object.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(dir_okay=False))
def ingest(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str, field: str | None,
           batch_size: int, paths: tuple[str, ...]) -> None:
    """Write the transactions in Parquet, CSV or NDJSON files (columns originalId, value and
    optionally operation, timestamp, id, source). Each file is validated whole before anything
    of it is written."""
    out = Output(output_fmt)
    started = time.perf_counter()
    total = 0
    with _open(root, endpoint_url) as db:
        res = db.resources[resource]
        if not isinstance(res, Resource):
            raise click.BadParameter(f"{resource} is a transaction dataset, not a resource", param_hint="--resource")
        # CSV is text: read values as the field's type (a decimal field parses its strings exactly).
        exact = isinstance(res.plugin(field).consolidator.dtype, pl.Decimal)
        csv_types = {"value": pl.String if exact else pl.Float64}
        readers: dict[str, Callable[[str], pl.DataFrame]] = {
            ".parquet": pl.read_parquet, ".csv": lambda p: pl.read_csv(p, schema_overrides=csv_types),
            ".ndjson": pl.read_ndjson, ".jsonl": pl.read_ndjson}
        from ecanalytics.ledger import ingest as ingest_rows

        plugin = res.plugin(field)
        frames = []
        for path in paths:  # every file is read and validated before any is written
            suffix = path[path.rfind("."):].lower() if "." in path else ""
            if suffix not in readers:
                raise click.BadParameter(f"{path}: use .parquet, .csv, .ndjson or .jsonl", param_hint="PATHS")
            try:
                frame = readers[suffix](path)
                # Ids of rows without one derive from the file's content: a re-run counts once.
                seed = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32]
                frames.append((path, ingest_rows.transactions(frame, plugin.field, plugin.consolidator.dtype,
                                                              id_seed=seed)))
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise click.BadParameter(f"{path} cannot be read: {exc}", param_hint="PATHS") from exc
            except EcError as exc:
                raise type(exc)(f"{path}: {exc} (No file was written.)") from exc
        for path, rows in frames:
            with _progress(rows.height, f"ingesting {path}", out.fmt == "text" and _tty()) as tick:
                plugin.write_frame(rows, batch_size=batch_size, progress=tick)
                total += rows.height
    seconds = time.perf_counter() - started
    out.summary({"resource": resource, "field": field, "files": len(paths), "rows": total,
                 "seconds": round(seconds, 3)},
                f"Wrote {total} transactions from {len(paths)} file(s) in {seconds:.2f}s.")


def _option_value(args: list[str], name: str) -> str | None:
    """The last value given to ``name`` (``--name v`` or ``--name=v``) anywhere in ``args``."""
    found = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            found = args[i + 1]
        elif arg.startswith(name + "="):
            found = arg.split("=", 1)[1]
    return found


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 usage).

    With ``--output json`` a failure is one JSON object on stdout (``error``, ``type``,
    ``exitCode``) and nothing else is printed, so a JSON Lines log stays valid."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _option_value(args, "--log-level") == "debug"
    as_json = _option_value(args, "--output") == "json"

    def fail(message: str, kind: str, code: int) -> int:
        if as_json:
            click.echo(json_line({"time": _now(), "error": message, "type": kind, "exitCode": code}))
        return code

    try:
        code = cli.main(args=args, prog_name="ecanalytics", standalone_mode=False)
    except SystemExit as exc:  # a command's own exit code (consolidate with a failed field, sql shell)
        return exc.code if isinstance(exc.code, int) else 1
    except click.exceptions.Abort:
        if not as_json:
            click.echo("Aborted.", err=True)
        return fail("Aborted.", "Abort", 1)
    except click.ClickException as exc:
        if not as_json:
            exc.show()
        return fail(exc.format_message(), type(exc).__name__, exc.exit_code)
    except Exception as exc:
        if debug:
            raise
        kind = "" if isinstance(exc, EcError) else f"{type(exc).__name__}: "
        if not as_json:
            click.echo(f"error: {kind}{exc} (run with --log-level debug for details)", err=True)
        return fail(f"{kind}{exc}", type(exc).__name__, 1)
    return code if isinstance(code, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
