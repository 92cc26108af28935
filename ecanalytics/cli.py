"""The ``ecanalytics`` command: a thin shell over the library for batch jobs and demos.

Exit codes: 0 success, 1 failure, 2 bad usage. Errors print one line; ``--log-level debug``
adds the traceback. Only credential-free URIs are ever printed.

``--log-level LEVEL`` sets the level of ecanalytics' own loggers; other libraries' loggers stay
at WARNING unless named (``--log-level botocore=debug``, repeatable). Every record goes through
:class:`ecanalytics.redaction.RedactingFilter`, which masks AWS keys, secrets and session tokens.

``--output json`` writes JSON Lines: one JSON object per line, never indented, also on failure
(``{"error": ..., "type": ..., "exitCode": 1}`` on stdout), and log records become JSON objects on
stderr, so ``>> ec.log 2>&1`` stays valid JSON Lines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from typing import Any, Literal

import click
import polars as pl
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecanalytics import __version__
from ecanalytics.database import CREATE_HINT, DEFAULT_ROOT, Database, connect
from ecanalytics.errors import (
    ConsolidationFailedError,
    CorruptObjectError,
    EcError,
    MalformedFileError,
    RootNotFoundError,
    UnknownFieldError,
    UnknownResourceError,
)
from ecanalytics.ledger.buckets import MAX_BUCKETS
from ecanalytics.plugin import EventualConsistencyPlugin
from ecanalytics.redaction import RedactingFilter, redact
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


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 transaction``, ``2,000 transactions``: a count for people, with its noun."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def cell(value: object) -> str:
    """A value as text, every digit kept: counts get thousands separators, floats their shortest
    exact repr (``81,942.37``), dates and times ISO 8601, a missing value ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,}" if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        return f"{value:,}" if value.is_finite() else str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value) or "-"
    return str(value)


class Output:
    """Renders results as rich text on a terminal, or as JSON Lines for machines.

    ``stamp`` (``consolidate --watch``) puts a UTC timestamp at the start of every text line.
    """

    def __init__(self, fmt: OutputFormat, *, stamp: bool = False) -> None:
        self.fmt = fmt
        self.stamp = stamp
        # Off a terminal rich would wrap at 80 columns; reports are wider than that (COLUMNS wins).
        self.console = Console() if sys.stdout.isatty() or _env_columns() else Console(width=200)

    def frame(self, title: str, df: pl.DataFrame) -> None:
        """A table that fits the terminal, or one block per record when it cannot: never a cell
        cut to an ellipsis, never a digit dropped."""
        if self.fmt == "json":
            return
        rows = [[cell(v) for v in row] for row in df.iter_rows()]
        right = [df.schema[c].is_numeric() for c in df.columns]
        for style in (box.HEAVY_HEAD, box.SIMPLE):
            table = Table(box=style, pad_edge=style is box.HEAVY_HEAD)
            for column, numeric in zip(df.columns, right, strict=True):
                table.add_column(column, justify="right" if numeric else "left", overflow="fold")
            for row in rows:
                table.add_row(*row)
            natural = self.console.measure(table, options=self.console.options.update_width(1 << 16)).maximum
            if natural <= self.console.width:
                if title:  # above the table, not in it: rich would cut a title wider than the table
                    self.console.print(title, style="bold", highlight=False, overflow="fold", markup=False)
                self.console.print(table)
                return
        self.records(title, [dict(zip(df.columns, row, strict=True)) for row in rows])

    def records(self, title: str, rows: list[dict[str, str]], headings: list[str] | None = None) -> None:
        """One block per record, ``key: value`` per line, for what is too wide for a table."""
        # As in line(): piped output is not wrapped (a key or path split across lines cannot be pasted).
        soft = not self.console.is_terminal

        def show(text: str, style: str | None = None) -> None:
            self.console.print(text, style=style, highlight=False, overflow="ignore" if soft else "fold", markup=False,
                               soft_wrap=soft)

        if title:
            show(title, "bold")
        width = max((len(k) for row in rows for k in row), default=0)
        for i, row in enumerate(rows):
            show(f"\n{headings[i] if headings else f'record {i + 1} of {len(rows)}'}", "bold")
            for key, value in row.items():
                show(f"  {key.ljust(width)}  {value}")

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

    def line(self, text: str) -> None:
        """A plain line of text output (nothing in JSON mode)."""
        if self.fmt != "json":
            # Piped output is not wrapped (a path split across lines cannot be pasted); a terminal
            # wraps at words and folds only a word longer than the line.
            # (rich cuts a soft-wrapped line at the width unless overflow is "ignore")
            soft = not self.console.is_terminal
            self.console.print(text, highlight=False, overflow="ignore" if soft else "fold", markup=False, soft_wrap=soft)

    def warn(self, text: str) -> None:
        """A line for people on stderr; in JSON mode a log record (JSON on stderr too)."""
        log.warning(text) if self.fmt == "json" else click.echo(f"{_now()} {text}" if self.stamp else text, err=True)


def _env_columns() -> bool:
    """COLUMNS says how wide the output may be, terminal or not."""
    return (os.environ.get("COLUMNS") or "").isdigit()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the *current* ``sys.stderr`` (click's test runner swaps it per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


class _JsonLogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        payload = {"time": dt.datetime.fromtimestamp(record.created, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                   "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()}
        if record.exc_info or record.exc_text:
            payload["traceback"] = record.exc_text or self.formatException(record.exc_info)  # type: ignore[arg-type]
        return json_line(payload)


LOG_LEVELS = ["debug", "info", "warning", "error"]
OWN_LOGGER = "ecanalytics"
_TEXT_LOG_FORMAT = ("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")


class _LevelFilter(logging.Filter):
    """Per-logger thresholds on the CLI's handler: ecanalytics' level for ours, WARNING for every
    other library unless it was named (``--log-level botocore=debug``). Loggers that set their own
    level (werkzeug's INFO) stay quiet too."""

    def __init__(self) -> None:
        super().__init__()
        self.levels: dict[str, int] = {OWN_LOGGER: logging.WARNING}

    def threshold(self, name: str) -> int:
        best, level = "", logging.WARNING
        for prefix, value in self.levels.items():
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > len(best):
                best, level = prefix, value
        return level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.threshold(record.name)


class LogLevel(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.2 on
    """``LEVEL`` (ecanalytics' loggers) or ``LOGGER=LEVEL`` (any other library's, e.g. botocore)."""

    name = "[LOGGER=]LEVEL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[str, str]:
        if isinstance(value, tuple):
            return value
        name, sep, level = str(value).rpartition("=")
        level = level.strip().lower()
        if level not in LOG_LEVELS or (sep and not name.strip()):
            self.fail(f"{value!r}: use one of {', '.join(LOG_LEVELS)}, or LOGGER=LEVEL such as botocore=debug", param, ctx)
        return name.strip() or OWN_LOGGER, level


# Loggers whose level this process changed, with their level before: restored on close.
_saved_levels: dict[str, int] = {}


def _configure_logging(levels: Iterable[tuple[str, str]] = (), *, json_lines: bool | None = None) -> None:
    """Install the stderr handler (level filter, secret redaction, text or JSON format) and set
    the levels asked for; may be called again (options after the subcommand)."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(*_TEXT_LOG_FORMAT))
        handler.addFilter(_LevelFilter())
        handler.addFilter(RedactingFilter())
        root.addHandler(handler)
        for name in ("", OWN_LOGGER):
            _saved_levels.setdefault(name, logging.getLogger(name).level)
        root.setLevel(logging.WARNING)  # other libraries log nothing below WARNING unless named
        logging.getLogger(OWN_LOGGER).setLevel(logging.WARNING)
    level_filter = next(f for f in handler.filters if isinstance(f, _LevelFilter))
    for name, level in levels:
        logger = logging.getLogger(name)
        _saved_levels.setdefault(name, logger.level)
        logger.setLevel(level.upper())
        level_filter.levels[name] = logging.getLevelName(level.upper())
    if json_lines is not None:
        handler.setFormatter(_JsonLogFormatter() if json_lines else logging.Formatter(*_TEXT_LOG_FORMAT))


def _restore_logging() -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    for name, level in _saved_levels.items():
        logging.getLogger(name).setLevel(level)
    _saved_levels.clear()


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
        self._lock = threading.Lock()  # reads report from the consolidator's read-ahead threads
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
        # Parquet only: a read of the whole log (``Ledger.entries``) reads its JSON entries in batches too.
        found = [b for key, b in blobs.items() if b is not None and key.endswith(".parquet")]
        rows = sum(_parquet_rows(b) for b in found)
        with self._lock:
            self.objects += len(found)
            self.rows += rows
            if self._bar is not None:
                self._bar.update(self._task, completed=self.objects, rows=self.rows)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self.store.on_read = None
            self._bar.stop()


CLI_CREATE_HINT = (" Check --root (or EC_ROOT). The other commands work on an existing database: create one from "
                   "Python (ec.connect), or try `ecanalytics demo --root DIR` on a new folder.")


def _open(root: str, endpoint_url: str | None, *, create: bool = False) -> Database:
    """Every command but ``demo`` needs an existing catalog: a typo in --root must fail loudly,
    not report success over nothing. A resource whose catalog entry is unreadable is named on
    stderr (``consolidate`` also fails on it). A malformed --root raises ``InvalidUriError`` (exit 1,
    one line saying what was probably meant), as every error about the data's location does."""
    try:
        db = connect(root, endpoint_url=endpoint_url, create=create)
    except RootNotFoundError as exc:
        message = str(exc)
        if message.endswith(CREATE_HINT):
            raise RootNotFoundError(message.removesuffix(CREATE_HINT) + CLI_CREATE_HINT) from exc
        raise
    for name, error in sorted(db.broken.items()):
        log.error("Resource %s cannot be opened: %s", name, error)
    return db


def _fields(db: Database, resource: str | None, field: str | None) -> list[tuple[Resource, str]]:
    """(resource, field) of every managed field, or of the ones named."""
    return [(db.resource(p.resource_name), p.field) for p in db.plugins(resource, field)]


def _resource(db: Database, name: str) -> Resource:
    """The resource ``--resource`` names (exit 1 for a name the root does not hold, as for a root
    without catalog: the data decides, not the command line)."""
    if name not in db.resource_names():
        known = ", ".join(db.resource_names()) or "none"
        raise UnknownResourceError(f"--resource {name}: {db.uri} has no such resource (resources: {known}).")
    return db.resource(name)


def _managed(res: Resource, field: str | None) -> EventualConsistencyPlugin:
    """The field ``--field`` names, which may be left out when the resource manages one: said in
    flags, not in Python calls."""
    fields = sorted(res.plugins)
    if not fields:
        raise UnknownFieldError(f"--resource {res.name}: it has no managed field (add one from Python with db.use_plugin).")
    if field is None and len(fields) > 1:
        raise click.UsageError(f"{res.name} manages {len(fields)} fields ({', '.join(fields)}): choose one with "
                               f"--field, e.g. --field {fields[0]}.")
    if field is not None and field not in res.plugins:
        raise UnknownFieldError(f"--field {field}: {res.name} manages no such field (managed: {', '.join(fields)}).")
    return res.plugins[field] if field is not None else res.plugins[fields[0]]


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


def _output_callback(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    _configure_logging(json_lines=value == "json")
    return value


def _log_level_callback(_ctx: click.Context, _param: click.Parameter, value: tuple[tuple[str, str], ...]) -> None:
    _configure_logging(value)


output_option = click.option("--output", "output_fmt", type=click.Choice(["text", "json"]), default="text",
                             show_default=True, callback=_output_callback,
                             help="Text for people; JSON Lines (one object per line) for machines.")
LOG_LEVEL_HELP = ("Verbosity of ecanalytics' logs (debug also prints tracebacks); other libraries stay at warning "
                  "unless named, e.g. --log-level botocore=debug (repeatable). Secrets are masked.")
# Accepted after the subcommand too (``ecanalytics consolidate --log-level debug``).
log_level_option = click.option("--log-level", type=LogLevel(), multiple=True, expose_value=False,
                                callback=_log_level_callback, help=LOG_LEVEL_HELP)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="ecanalytics", message="%(prog)s %(version)s")
@click.option("--log-level", "log_levels", type=LogLevel(), multiple=True, help=LOG_LEVEL_HELP + " Default: warning.")
@click.pass_context
def cli(ctx: click.Context, log_levels: tuple[tuple[str, str], ...]) -> None:
    """ecanalytics: eventually consistent counters and balances on object storage."""
    _configure_logging(log_levels)
    ctx.call_on_close(_restore_logging)  # in-process callers (tests) get their logging back


@cli.command(short_help="Write sample traffic, consolidate it, print a report.")
@root_option
@endpoint_option
@output_option
@log_level_option
@click.option("--records", default=50, show_default=True, type=click.IntRange(1), help="Wallets to create.")
@click.option("--transactions", default=2000, show_default=True, type=click.IntRange(1), help="Transactions to write.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed of the sample traffic.")
def demo(root: str, endpoint_url: str | None, output_fmt: OutputFormat, records: int, transactions: int, seed: int) -> None:
    """Write sample wallet traffic, consolidate it, print values and a cohort summary.

    On a new folder the demo creates a wallets resource; run again on the same folder, it appends
    more traffic to the same wallets (and says so). It refuses a folder that holds anything else."""
    from ecanalytics.demo import check_demo_root, run_demo

    out = Output(output_fmt)
    started = time.perf_counter()
    with _open(root, endpoint_url, create=True) as db:
        if check_demo_root(db):
            out.line(f"{db.uri} holds an earlier demo: appending more traffic to its wallets "
                     "(use a new --root for a fresh demo).")
        with _progress(transactions, "writing", out.fmt == "text" and _tty()) as tick:
            report = run_demo(db, records=records, transactions=transactions, seed=seed, progress=tick)
        uri = db.uri
    out.frame("Wallets (top 10 by balance)", report.values.sort("balance", descending=True).head(10))
    out.frame("Cohorts of wallets_transactions_balance (America/Sao_Paulo)", report.cohorts)
    applied = sum(r.transactions for r in report.results)
    verb = "Appended" if report.appended else "Wrote"
    out.summary(
        {"root": uri, "appended": report.appended, "earlier": report.earlier, "written": report.written,
         "applied": applied, "consolidations": [r.as_dict() for r in report.results],
         "values": report.values.to_dicts(), "cohorts": report.cohorts.to_dicts(),
         "seconds": round(time.perf_counter() - started, 3)},
        f"{verb} {count(report.written, 'transaction')} to {uri}"
        + (f" (after {report.earlier:,} balance transactions of earlier demos)" if report.appended else "")
        + f"; applied {applied:,} in {count(len(report.results), 'consolidation')} "
        f"({time.perf_counter() - started:.2f}s).",
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
        workers = int(address.split(":", 1)[1])  # checked by _dask_callback
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,  # type: ignore[no-untyped-call]
                          dashboard_address=":0") as cluster, Client(cluster) as client:  # type: ignore[no-untyped-call]
            yield client
        return
    with Client(address) as client:  # type: ignore[no-untyped-call]
        yield client


def _dask_callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """``local:N`` needs N >= 1 worker processes: checked before anything is opened (exit 2)."""
    if value is not None and value.startswith("local:"):
        text = value.split(":", 1)[1]
        try:
            workers = int(text)
        except ValueError:
            raise click.BadParameter(f"{value!r}: use local:N (N >= 1 worker processes) or a scheduler address "
                                     "such as tcp://host:8786") from None
        if workers < 1:
            raise click.BadParameter(f"{value!r} starts no worker, so nothing would ever be consolidated; use local:N "
                                     "with N >= 1, e.g. local:2")
    return value


def _bucket_progress(enabled: bool) -> Any:
    """A rich progress bar of buckets done per field, for cluster runs."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("buckets"),
                    console=_progress_console(), disable=not enabled, transient=True)


def _consolidate_once(db: Database, plugins: list[EventualConsistencyPlugin], out: Output, client: Any = None,
                      resource: str | None = None, field: str | None = None) -> tuple[dict[str, Any], dict[str, Exception]]:
    """One :meth:`Database.consolidate` over ``plugins`` (those of ``resource`` and ``field``), with
    progress bars on a terminal; a field that fails is reported and the others go on."""
    started = time.perf_counter()
    failures: dict[str, Exception] = {}
    for broken, error in sorted(db.broken.items()):  # its backlog cannot be applied: fail loudly
        failures[f"{broken}.*"] = error
        if out.fmt == "text":
            out.warn(f"error: {broken}: {error}")
    bar = out.fmt == "text" and _tty()
    # The bar counts the pending objects (one LIST per field, only when it is shown) and their rows.
    total = sum(len(p.consolidator.pending_objects(p.consolidator.ledger.state())) for p in plugins) if (
        bar and client is None) else None
    with ObjectProgress(db.store, "consolidating", total=total, enabled=bar and client is None), \
            _bucket_progress(bar and client is not None) as buckets:
        tasks: dict[str, Any] = {}

        def tick(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = buckets.add_task(name, total=None)
            buckets.update(tasks[name], completed=done, total=total)

        try:
            results = db.consolidate(resource, field, client=client, progress=tick)
        except ConsolidationFailedError as exc:  # one field's failure is that field's only: exit 1 at the end
            results = exc.results  # type: ignore[assignment]
            for name, failure in exc.failures.items():
                failures[name] = failure  # type: ignore[assignment]
                if out.fmt == "text":
                    kind = "" if isinstance(failure, EcError) else f"{type(failure).__name__}: "
                    out.warn(f"error: {name}: {kind}{failure}")
    payload = {
        "root": db.uri, "results": [r.as_dict() for r in results],
        "failures": [{"resource": k.split(".")[0], "field": k.split(".")[1], "error": type(e).__name__,
                      "message": str(e)} for k, e in failures.items()],
        "transactions": sum(r.transactions for r in results), "records": sum(r.records for r in results),
        "versions": sum(r.version is not None for r in results), "seconds": round(time.perf_counter() - started, 3),
        "exitCode": 1 if failures else 0,
    }
    return payload, failures


@cli.command(short_help="Consolidate pending transactions: the batch job.")
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
@click.option("--dask", "dask_address", default=None, metavar="ADDRESS|local:N", callback=_dask_callback,
              help="Fold on a Dask cluster: a scheduler address (tcp://host:8786) or local:N worker processes. "
                   "Workers take S3 credentials from their own environment.")
def consolidate(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str | None,
                field: str | None, reducers: tuple[str, ...], watch: bool, interval: float, heartbeat: float,
                max_runs: int | None, dask_address: str | None) -> None:
    """Consolidate every managed field (or the ones named): the batch job for async mode.

    A field that fails (for example, a custom reducer this process does not have) is reported and
    the others go on; the exit code is 1 if any field failed. With --watch, a run that committed
    nothing and failed nowhere is idle and prints nothing, except a heartbeat line at most every
    --heartbeat minutes; the first run and every busy or failed run print a line."""
    out = Output(output_fmt, stamp=watch)
    with _open(root, endpoint_url) as db, _dask_client(dask_address) as client:
        for spec in reducers:
            _use_reducer(db, spec)
        plugins = db.plugins(resource, field)
        runs = quiet = 0
        last_line: float | None = None
        while True:
            runs += 1
            payload, failures = _consolidate_once(db, plugins, out, client, resource, field)
            idle = not failures and payload["versions"] == 0
            now = _clock()
            if not watch or not idle or last_line is None or now - last_line >= heartbeat * 60:
                text = (
                    f"Applied {count(payload['transactions'], 'transaction')} to {count(payload['records'], 'record')} "
                    f"in {count(payload['versions'], 'commit')} over {count(len(plugins), 'field')} ({payload['seconds']}s)."
                    + (f" {count(len(failures), 'field')} FAILED: {', '.join(failures)}." if failures else "")
                )
                if watch:
                    payload.update(run=runs, idle=idle, quietRuns=quiet)
                    if idle and last_line is not None:
                        text = (f"Idle: nothing to consolidate over {count(len(plugins), 'field')} "
                                f"({count(quiet, 'quiet run')} since the last line).")
                out.summary(payload, text)
                last_line, quiet = now, 0
            else:
                quiet += 1
            if not watch or (max_runs is not None and runs >= max_runs):
                if failures:
                    raise SystemExit(1)
                return
            _sleep(interval)


def _conflict_text(conflicts: list[dict[str, Any]]) -> str:
    """Key conflicts on one line: ``key: record operation value (reason, at time)``, ``; ``-separated."""
    return "; ".join(f"{c['id']}: {c['originalId']} {c['operation']} {c['value']} ({c['reason']}, at "
                     f"{cell(c['timestamp'])})" for c in conflicts) or "-"


def _verify(db: Database) -> tuple[list[str], list[dict[str, str]]]:
    """(the resources checked, every missing object): what the committed state of each resource
    names that the store does not hold, and each catalog entry that cannot be read."""
    from ecanalytics.storage import paths as P

    missing = [{"resource": name, "key": db.store.url(P.catalog_entry(name)), "what": "catalog entry (unreadable)",
                "fix": f"restore it from a backup ({error})"} for name, error in sorted(db.broken.items())]
    for name in db.resource_names():
        missing += [{"resource": name, **problem.as_dict()} for problem in db.resource(name).verify()]
    return db.resource_names(), missing


@cli.command(short_help="Backlog, age, versions, sizes and key conflicts of every managed field; only reads.")
@root_option
@endpoint_option
@output_option
@log_level_option
@click.option("--verify", "verify_", is_flag=True,
              help="Also check that every object the committed state names exists (one LIST per prefix, no GET); "
                   "exit 1 if any is missing.")
@click.option("--probe-permissions", is_flag=True,
              help="WRITES: delete one stale consumed marker per field (its object is applied: always safe) to learn "
                   "whether deletes are allowed. Without it, inspect only reads.")
def inspect(root: str, endpoint_url: str | None, output_fmt: OutputFormat, verify_: bool, probe_permissions: bool) -> None:
    """Per resource and field: pending backlog and its age (by write time, then event time),
    version, last checkpoint, objects and sizes, stale markers, and the key conflicts the state
    keeps (reused idempotency keys that were not applied). Only reads (LISTs and GETs), unless
    --probe-permissions is given.

    --verify also checks that every object the committed state names exists (applied transaction
    objects, live and archived, bucket objects, retention bases), prints each missing one with what
    it is and what to do, and exits 1 when anything is missing (0 when the root is whole)."""
    from ecanalytics.storage import paths as P

    out = Output(output_fmt)
    rows = []
    checked: list[str] = []
    missing: list[dict[str, str]] = []
    with _open(root, endpoint_url) as db:
        for name in db.resource_names():
            resource = db.resource(name)
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
                    probe = plugin.probe_permissions() if probe_permissions else None
                    try:
                        health = plugin.inspect()
                    except CorruptObjectError as exc:  # a pending object that is not Parquet: say so, go on
                        out.warn(f"error: {name}.{field}: {exc}")
                        rows.append({**row, "unreadable": str(exc).split(" ", 1)[0]})
                        continue
                    objects, size = db.store.du(plugin.dataset, ".parquet")
                    row.update(**health, objects=objects, bytes=size, reducer=plugin.reducer_name,
                               timezone=plugin.timezone)
                    if probe is not None:
                        row["probedMarker"] = probe["probed"]
                    if health["deleteDenied"]:
                        out.warn(f"warning: the store refuses deletes under {plugin.dataset}/_inbox; "
                                 f"{health['staleMarkers']} consumed marker(s) stay and are carried by every "
                                 "consolidation (exactly once still holds). Grant DeleteObject there.")
                    elif health["staleMarkers"] and health["deleteDenied"] is None:
                        out.warn(f"note: {health['staleMarkers']} consumed marker(s) remain under {plugin.dataset}/_inbox "
                                 "(the next consolidation deletes them); `ecanalytics inspect --probe-permissions` "
                                 "tells whether deletes are allowed (it deletes one of them).")
                rows.append(row)
        if verify_:
            checked, missing = _verify(db)
        uri = db.uri
    if out.fmt == "json":
        payload: dict[str, Any] = {"root": uri, "fields": rows}
        if verify_:
            payload["verify"] = {"whole": not missing, "resources": checked, "missing": missing}
        out.summary(payload, "")
    elif not rows:
        out.line(f"ecanalytics at {uri}: no resources yet.")
    else:  # one block per field: twenty columns never fit a terminal
        headings = [f"{r['resource']}.{r['field']}" if r["field"] else f"{r['resource']} (no managed field)" for r in rows]
        out.records(f"ecanalytics at {uri}", [
            {k: _conflict_text(v) if k == "latestConflicts" else cell(v) for k, v in r.items()
             if k not in ("resource", "field")} for r in rows], headings)
    if verify_ and out.fmt != "json":
        if missing:
            out.line("")
            out.records(f"verify: {count(len(missing), 'missing object')}",
                        [{"resource": m["resource"], "what": m["what"], "fix": m["fix"]} for m in missing],
                        [m["key"] for m in missing])
        else:
            out.line(f"\nverify: whole; every object the committed state names is present "
                     f"({count(len(checked), 'resource')} checked).")
    if missing:
        if out.fmt != "json":
            out.warn(f"error: {count(len(missing), 'object')} named by the committed state "
                     f"{'is' if len(missing) == 1 else 'are'} missing (listed above).")
        raise SystemExit(1)
    if any("unreadable" in r for r in rows):
        raise SystemExit(1)


@cli.command(short_help="Rebuild values from the history; commit only what differs.")
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
        res = _resource(db, resource)
        plugin = _managed(res, field)
        with ObjectProgress(db.store, "recalculating", enabled=out.fmt == "text" and _tty()):
            result = res.recalculate(id=record_id, field=plugin.field)
    shown, more = result.values.sort("id").head(limit), max(0, result.changed - limit)
    changed = (f"changed {result.changed:,} (version {result.version})" if result.version is not None
               else "changed none, nothing committed")
    out.summary({**result.as_dict(), "changedRecords": shown.to_dicts(), "more": more},
                f"Checked {count(result.checked, 'record')} against {count(result.transactions, 'transaction')}; "
                f"{changed} in {result.duration_s:.2f}s.")
    if shown.height:
        out.frame(f"changed records of {resource}.{result.field}", shown)
    if more:
        out.line(f"and {more:,} more (--limit {result.changed} shows them all)")


@cli.command(short_help="Archive or delete applied transactions older than --retain.")
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
    objects, transactions = sum(r.objects for r in results), sum(r.transactions for r in results)
    payload = {"root": uri, "retain": retain, "results": [r.as_dict() for r in results],
               "objects": objects, "transactions": transactions}
    verb = "Deleted" if delete_ else "Archived"
    cuts = sorted({r.cut for r in results})
    out.summary(payload, f"{verb} {count(objects, 'object')} ({count(transactions, 'transaction')}) "
                         f"older than {retain} over {count(len(results), 'field')}"
                         + (f" (cohort days before {', '.join(cuts)})." if cuts else "."))


@cli.command(short_help="Merge small applied transaction objects per partition.")
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
    sources, merged = sum(r.sources for r in results), sum(r.merged for r in results)
    payload = {"root": uri, "results": [r.as_dict() for r in results], "sources": sources, "merged": merged}
    out.summary(payload, f"Merged {count(sources, 'object')} into {merged:,} over "
                         f"{count(len(results), 'field')}.")


@cli.command(short_help="Split a resource's records into a new number of buckets.")
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
        res = _resource(db, resource)
        before = res.ledger.state().n_buckets
        state = res.rebucket(buckets)
        uri = db.uri
    payload = {"root": uri, "resource": resource, "before": before, "buckets": state.n_buckets, "version": state.version}
    out.summary(payload, f"{resource}: {before} -> {state.n_buckets} buckets (version {state.version}).")


@cli.command(short_help="Print external-table DDL for Athena, Spark, Trino or DuckDB.")
@root_option
@endpoint_option
@log_level_option
@click.option("--engine", type=click.Choice(["athena", "spark", "trino", "duckdb"]), required=True,
              help="The engine whose DDL to print.")
@click.option("--schema", "schema_name", default=None, help="Create the tables in this database/schema.")
@click.option("--export", "export_", is_flag=True,
              help="First write the consolidated records to _export/{resource}/records.parquet, which the records tables read.")
def ddl(root: str, endpoint_url: str | None, engine: str, schema_name: str | None, export_: bool) -> None:
    """Print CREATE EXTERNAL TABLE statements for every dataset and the records.

    Athena, Spark and Trino get external tables (DuckDB: views) over every transaction dataset and
    the consolidated records, so they can read the root without ecanalytics."""
    from ecanalytics import ddl as ddl_module

    with _open(root, endpoint_url) as db:
        if export_:
            ddl_module.export_records(db)
        click.echo(ddl_module.generate(db, engine, schema=schema_name))  # type: ignore[arg-type]


@cli.group(short_help="SQL reports and an interactive DuckDB prompt.")
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


@sql.command("run", short_help="Run a report by name (see sql list).")
@root_option
@endpoint_option
@log_level_option
@click.argument("name")
@click.option("--param", "-p", "pairs", multiple=True, metavar="NAME=VALUE", help="A report parameter (repeatable).")
@click.option("--output", "output_fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True,
              callback=_output_callback, help="A table, JSON Lines (one object per row), or CSV.")
def sql_run(root: str, endpoint_url: str | None, name: str, pairs: tuple[str, ...], output_fmt: OutputFormat) -> None:
    """Run report NAME with its parameters.

    Example: ecanalytics sql run daily_totals -p start=2026-11-01 -p end=2026-11-30
    """
    from ecanalytics import reports

    params = _params(pairs)
    if name not in reports.names():
        raise click.BadParameter(f"no report named {name!r}; `ecanalytics sql list` shows {', '.join(reports.names())}.",
                                 param_hint="NAME")
    report = reports.get(name)
    taken = {p.name for p in report.params}
    unknown = sorted(set(params) - taken)
    missing = [p for p in report.params if p.required and p.name not in params]
    if unknown or missing:
        wanted = " ".join(f"-p {p.name}={p.type}" for p in report.params if p.required) or "no parameter"
        problem = f"{name} has no parameter {', '.join(unknown)}" if unknown else f"{name} needs {wanted}"
        raise click.UsageError(f"{problem} (its parameters: {', '.join(sorted(taken)) or 'none'}; see sql list).")
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
    datasets = {p.dataset: f"transactions of {p.resource_name}.{p.field}" for p in db.plugins()}
    about = {**{r: "consolidated records" for r in db.resource_names()}, **datasets, **VIEW_DESCRIPTIONS}
    return pl.DataFrame({"name": names, "contents": [about.get(n, "") for n in names]}, schema={"name": pl.String, "contents": pl.String})


@sql.command("shell", short_help="An interactive DuckDB prompt with every view.")
@root_option
@endpoint_option
@log_level_option
def sql_shell(root: str, endpoint_url: str | None) -> None:
    """An interactive DuckDB prompt with every view defined. End statements with ';'.

    .tables lists the views, .quit leaves. When stdin is not a terminal it runs a script: a last
    statement may omit its ';', and the first failing statement stops the script with exit code 1.
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


@cli.command(short_help="Write transactions from Parquet, CSV or NDJSON files.")
@root_option
@endpoint_option
@output_option
@log_level_option
@target_resource_option
@target_field_option
@click.option("--batch-size", default=1_000_000, show_default=True, type=click.IntRange(1),
              help="At most this many rows per transaction object.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def ingest(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str, field: str | None,
           batch_size: int, paths: tuple[str, ...]) -> None:
    """Write the transactions in Parquet, CSV or NDJSON files (columns originalId, value and
    optionally operation, timestamp, id, source). Each file is validated whole before anything
    of it is written."""
    from ecanalytics.ledger import files
    from ecanalytics.ledger import ingest as ingest_rows

    out = Output(output_fmt)
    started = time.perf_counter()
    total = 0
    for path in paths:  # before opening the root: a wrong suffix is bad usage
        if not path.lower().endswith(files.SUFFIXES):
            raise click.BadParameter(f"{path}: use .parquet, .csv, .ndjson or .jsonl files", param_hint="PATHS")
    with _open(root, endpoint_url) as db:
        plugin = _managed(_resource(db, resource), field)
        dtype = plugin.consolidator.dtype
        frames = []
        for path in paths:  # every file is read and validated before any is written
            try:
                # Ids of rows without one derive from the file's content: a re-run counts once.
                rows = ingest_rows.transactions(files.read_transactions(path, dtype), plugin.field, dtype,
                                                id_seed=files.digest(path))
            except MalformedFileError:
                raise
            except EcError as exc:  # a validation error names the row; say which file, once
                message = str(exc).replace(" Nothing was written: fix or drop those rows and retry.", "")
                message = message.replace("; nothing was written", "").rstrip(".")
                raise type(exc)(f"{path}: {message}. No file was written: fix or drop those rows and retry.") from exc
            frames.append((path, rows))
        for path, rows in frames:
            with _progress(rows.height, f"ingesting {path}", out.fmt == "text" and _tty()) as tick:
                plugin.write_frame(rows, batch_size=batch_size, progress=tick)
                total += rows.height
    seconds = time.perf_counter() - started
    out.summary({"resource": resource, "field": field, "files": len(paths), "rows": total,
                 "seconds": round(seconds, 3)},
                f"Wrote {count(total, 'transaction')} from {count(len(paths), 'file')} in {seconds:.2f}s.")


def _option_values(args: list[str], name: str) -> list[str]:
    """Every value given to ``name`` (``--name v`` or ``--name=v``) anywhere in ``args``."""
    found = []
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            found.append(args[i + 1])
        elif arg.startswith(name + "="):
            found.append(arg.split("=", 1)[1])
    return found


def _option_value(args: list[str], name: str) -> str | None:
    """The last value given to ``name`` anywhere in ``args``."""
    values = _option_values(args, name)
    return values[-1] if values else None


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 usage).

    With ``--output json`` a failure is one JSON object on stdout (``error``, ``type``,
    ``exitCode``) and nothing else is printed, so a JSON Lines log stays valid."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = any(v.lower() in ("debug", f"{OWN_LOGGER}=debug") for v in _option_values(args, "--log-level"))
    as_json = _option_value(args, "--output") == "json"

    def fail(message: str, kind: str, code: int) -> int:
        message = redact(message)
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
            click.echo(redact(f"error: {kind}{exc} (run with --log-level debug for details)"), err=True)
        return fail(f"{kind}{exc}", type(exc).__name__, 1)
    return code if isinstance(code, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
