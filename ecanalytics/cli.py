"""The ``ecanalytics`` command: a thin shell over the library for batch jobs and demos.

Exit codes: 0 success, 1 failure, 2 bad usage. Errors print one line; ``--log-level debug``
adds the traceback. Only credential-free URIs are ever printed.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import click
import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecanalytics.database import DEFAULT_ROOT, Database, connect
from ecanalytics.errors import EcError
from ecanalytics.resource import Resource

OutputFormat = Literal["text", "json", "csv"]
log = logging.getLogger("ecanalytics")


class Output:
    """Renders results as rich text on a terminal, or as JSON for machines."""

    def __init__(self, fmt: OutputFormat) -> None:
        self.fmt = fmt
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
        """A whole result: a rich table, JSON rows, or CSV."""
        if self.fmt == "json":
            click.echo(json.dumps(df.to_dicts(), default=str, indent=2))
        elif self.fmt == "csv":
            click.echo(df.write_csv(), nl=False)
        else:
            self.frame(title, df)

    def summary(self, payload: dict[str, Any], text: str) -> None:
        if self.fmt == "json":
            click.echo(json.dumps(payload, default=str, indent=2))
        else:
            self.console.print(text)


@contextmanager
def _progress(total: int, label: str, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not enabled:
        yield lambda _n: None
        return
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.update(task, completed=n)


def _open(root: str, endpoint_url: str | None, *, create: bool = False) -> Database:
    """Every command but ``demo`` needs an existing catalog: a typo in --root must fail loudly,
    not report success over nothing."""
    return connect(root, endpoint_url=endpoint_url, create=create)


def _fields(db: Database, resource: str | None, field: str | None) -> list[tuple[Resource, str]]:
    """(resource, field) of every managed field, or of the ones named."""
    return [(db._resources[p.resource_name], p.field) for p in db._plugins(resource, field)]


def _use_reducer(db: Database, spec: str) -> None:
    """``--reducer wallets.balance=pkg.mod:func``: attach that callable to the field."""
    from ecanalytics.consolidation.reducers import load_reference
    from ecanalytics.plugin import EventualConsistencyPlugin

    target, _, ref = spec.partition("=")
    res_name, _, field = target.partition(".")
    if not ref or not field:
        raise click.BadParameter(f"{spec!r}: expected RESOURCE.FIELD=MODULE:FUNCTION", param_hint="--reducer")
    resource = db.resources[res_name]
    if not isinstance(resource, Resource):
        raise click.BadParameter(f"{res_name} is a transaction dataset, not a resource", param_hint="--reducer")
    plugin = resource.plugin(field)
    config = {**plugin.config(), "reducer": load_reference(ref)}
    db.use_plugin(EventualConsistencyPlugin(res_name, field, **config))


root_option = click.option("--root", default=DEFAULT_ROOT, show_default=True, envvar="EC_ROOT",
                           help="Database root: folder, file://, memory:// or s3://bucket/prefix.")
endpoint_option = click.option("--endpoint-url", default=None, envvar="AWS_ENDPOINT_URL",
                               help="S3-compatible endpoint (default: AWS_ENDPOINT_URL).")
resource_option = click.option("--resource", default=None, help="Only this resource.")
field_option = click.option("--field", default=None, help="Only this managed field.")
output_option = click.option("--output", "output_fmt", type=click.Choice(["text", "json"]), default="text",
                             show_default=True, help="Text for people, JSON for machines.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning",
              show_default=True, help="Logging verbosity; debug also prints tracebacks.")
@click.pass_context
def cli(ctx: click.Context, log_level: str) -> None:
    """ecanalytics: eventually consistent counters and balances on object storage."""
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"debug": log_level == "debug"}


@cli.command()
@root_option
@endpoint_option
@output_option
@click.option("--records", default=50, show_default=True, type=click.IntRange(1), help="Wallets to create.")
@click.option("--transactions", default=2000, show_default=True, type=click.IntRange(1), help="Transactions to write.")
@click.option("--seed", default=7, show_default=True, type=int, help="Random seed of the sample traffic.")
def demo(root: str, endpoint_url: str | None, output_fmt: OutputFormat, records: int, transactions: int, seed: int) -> None:
    """Write sample wallet traffic, consolidate it, print values and a cohort summary."""
    from ecanalytics.demo import run_demo

    out = Output(output_fmt)
    started = time.perf_counter()
    with _open(root, endpoint_url, create=True) as db, _progress(transactions, "writing", out.fmt == "text" and sys.stderr.isatty()) as tick:
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


@cli.command()
@root_option
@endpoint_option
@output_option
@resource_option
@field_option
@click.option("--reducer", "reducers", multiple=True, metavar="RESOURCE.FIELD=MODULE:FUNCTION",
              help="A custom Python reducer for a field, e.g. wallets.balance=mypkg.reducers:capped (repeatable).")
@click.option("--watch", is_flag=True, help="Keep consolidating every --interval seconds.")
@click.option("--interval", default=60.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds between runs with --watch.")
def consolidate(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str | None,
                field: str | None, reducers: tuple[str, ...], watch: bool, interval: float) -> None:
    """Consolidate every managed field (or the ones named): the batch job for async mode.

    A field that fails (for example, a custom reducer this process does not have) is reported and
    the others go on; the exit code is 1 if any field failed."""
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        for spec in reducers:
            _use_reducer(db, spec)
        plugins = db._plugins(resource, field)
        while True:
            started = time.perf_counter()
            results, failures = [], {}
            with _progress(len(plugins), "consolidating", out.fmt == "text" and sys.stderr.isatty()) as tick:
                for n, plugin in enumerate(plugins, 1):
                    try:  # one field's failure is that field's only: go on, exit 1 at the end
                        results.append(plugin.consolidate())
                    except EcError as exc:
                        failures[f"{plugin.resource_name}.{plugin.field}"] = exc
                        click.echo(f"error: {plugin.resource_name}.{plugin.field}: {exc}", err=True)
                    tick(n)
            payload = {
                "root": db.uri, "results": [r.as_dict() for r in results],
                "failures": [{"resource": k.split(".")[0], "field": k.split(".")[1], "error": type(e).__name__,
                              "message": str(e)} for k, e in failures.items()],
                "transactions": sum(r.transactions for r in results), "records": sum(r.records for r in results),
                "versions": sum(r.version is not None for r in results), "seconds": round(time.perf_counter() - started, 3),
            }
            out.summary(payload, (
                f"Applied {payload['transactions']} transactions to {payload['records']} records in "
                f"{payload['versions']} commits over {len(results)} fields ({payload['seconds']}s)."
                + (f" {len(failures)} field(s) FAILED: {', '.join(failures)}." if failures else "")
            ))
            if not watch:
                if failures:
                    raise SystemExit(1)
                return
            time.sleep(interval)


@cli.command()
@root_option
@endpoint_option
@output_option
def inspect(root: str, endpoint_url: str | None, output_fmt: OutputFormat) -> None:
    """Per resource and field: pending backlog, version, last checkpoint, objects and sizes."""
    import json as _json

    from ecanalytics.storage import paths as P

    out = Output(output_fmt)
    rows = []
    with _open(root, endpoint_url) as db:
        for name in sorted(db._resources):
            resource = db._resources[name]
            state = resource.ledger.state()
            try:
                checkpoint = _json.loads(db.store.read(P.last_checkpoint(name)))["version"]
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
                        click.echo(f"warning: the store refuses deletes under {plugin.dataset}/_inbox; "
                                   f"{health['staleMarkers']} consumed marker(s) stay and are carried by every "
                                   "consolidation (exactly once still holds). Grant DeleteObject there.", err=True)
                rows.append(row)
        uri = db.uri
    if out.fmt == "json":
        click.echo(_json.dumps({"root": uri, "fields": rows}, default=str, indent=2))
    else:
        out.frame(f"ecanalytics at {uri}", pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame())


@cli.command()
@root_option
@endpoint_option
@output_option
@click.option("--resource", required=True, help="The resource.")
@click.option("--field", default=None, help="The managed field (required when several are managed).")
@click.option("--id", "record_id", default=None, help="Only this record.")
def recalculate(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str, field: str | None,
                record_id: str | None) -> None:
    """Rebuild values from the full history through the commit log; commit only what differs."""
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        res = db.resources[resource]
        if not hasattr(res, "recalculate"):
            raise click.BadParameter(f"{resource} is a transaction dataset, not a resource", param_hint="--resource")
        result = res.recalculate(id=record_id, field=field)
    out.frame(f"changed records of {resource}.{result.field}", result.values)
    out.summary(result.as_dict(), f"Checked {result.checked} records against {result.transactions} transactions; "
                f"changed {result.changed} (version {result.version}) in {result.duration_s:.2f}s.")


@cli.command()
@root_option
@endpoint_option
@output_option
@click.option("--retain", required=True, help="Keep this many days of history, e.g. 30d.")
@resource_option
@field_option
@click.option("--delete", "delete_", is_flag=True, help="Delete old objects instead of archiving them under _archive/.")
def gc(root: str, endpoint_url: str | None, output_fmt: OutputFormat, retain: str, resource: str | None,
       field: str | None, delete_: bool) -> None:
    """Retention: archive (or delete) applied transactions older than --retain, values unchanged."""
    from ecanalytics.resource import parse_days

    days = parse_days(retain if retain.endswith("d") else f"{retain}d")
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        results = [res.gc(days, field=f, archive=not delete_) for res, f in _fields(db, resource, field)]
        uri = db.uri
    payload = {"root": uri, "results": [r.as_dict() for r in results],
               "objects": sum(r.objects for r in results), "transactions": sum(r.transactions for r in results)}
    verb = "Deleted" if delete_ else "Archived"
    out.summary(payload, f"{verb} {payload['objects']} objects ({payload['transactions']} transactions) "
                         f"older than {days} days over {len(results)} fields.")


@cli.command()
@root_option
@endpoint_option
@output_option
@resource_option
@field_option
@click.option("--target-rows", default=1_000_000, show_default=True, type=click.IntRange(1), help="Rows per merged object.")
def compact(root: str, endpoint_url: str | None, output_fmt: OutputFormat, resource: str | None, field: str | None,
            target_rows: int) -> None:
    """Merge small applied transaction objects per partition, through the commit log."""
    out = Output(output_fmt)
    with _open(root, endpoint_url) as db:
        results = [res.compact(f, target_rows=target_rows) for res, f in _fields(db, resource, field)]
        uri = db.uri
    payload = {"root": uri, "results": [r.as_dict() for r in results],
               "sources": sum(r.sources for r in results), "merged": sum(r.merged for r in results)}
    out.summary(payload, f"Merged {payload['sources']} objects into {payload['merged']} over {len(results)} fields.")


@cli.group()
def sql() -> None:
    """SQL reports and an interactive DuckDB prompt over the store's views."""


@sql.command("list")
def sql_list() -> None:
    """List the shipped reports and their parameters."""
    from ecanalytics import reports

    for name in reports.names():
        report = reports.get(name)
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
@click.argument("name")
@click.option("--param", "-p", "pairs", multiple=True, metavar="NAME=VALUE", help="A report parameter (repeatable).")
@click.option("--output", "output_fmt", type=click.Choice(["text", "json", "csv"]), default="text", show_default=True)
def sql_run(root: str, endpoint_url: str | None, name: str, pairs: tuple[str, ...], output_fmt: OutputFormat) -> None:
    """Run report NAME, e.g. ``sql run daily_totals -p start=2026-11-01 -p end=2026-11-30``."""
    from ecanalytics import reports

    params = _params(pairs)
    with _open(root, endpoint_url) as db:
        df = reports.run(db, name, **params)
    Output(output_fmt).table(name, df)


@sql.command("shell")
@root_option
@endpoint_option
def sql_shell(root: str, endpoint_url: str | None) -> None:
    """An interactive DuckDB prompt with every view defined. End statements with ';'.

    ``.tables`` lists the views, ``.quit`` leaves. Reads a script when stdin is not a terminal.
    """
    interactive = sys.stdin.isatty()
    out = Output("text")
    with _open(root, endpoint_url) as db:
        if interactive:
            click.echo(f"ecanalytics SQL on {db.uri}. End statements with ';'. .tables lists views, .quit leaves.")
        buffer: list[str] = []
        while True:
            if interactive:
                click.echo("ec> " if not buffer else "...> ", nl=False)
            line = sys.stdin.readline()
            if not line:
                break
            stripped = line.strip()
            if not buffer and stripped in (".quit", ".exit"):
                break
            if not buffer and stripped == ".tables":
                statement = "SELECT table_name AS name, table_type AS kind FROM information_schema.tables ORDER BY 1;"
            else:
                buffer.append(line)
                statement = "".join(buffer)
                if not stripped.endswith(";"):
                    continue
            buffer = []
            try:
                out.frame("", db.sql(statement.strip().rstrip(";")).pl())
            except Exception as exc:  # report and keep the prompt alive
                click.echo(f"error: {exc}", err=True)


@cli.command()
@root_option
@endpoint_option
@output_option
@click.option("--resource", required=True, help="The resource.")
@click.option("--field", default=None, help="The managed field (required when several are managed).")
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
        for path in paths:
            suffix = path[path.rfind("."):].lower() if "." in path else ""
            if suffix not in readers:
                raise click.BadParameter(f"{path}: use .parquet, .csv, .ndjson or .jsonl", param_hint="PATHS")
            try:
                frame = readers[suffix](path)
            except (OSError, pl.exceptions.PolarsError) as exc:
                raise click.BadParameter(f"{path} cannot be read: {exc}", param_hint="PATHS") from exc
            with _progress(frame.height, f"ingesting {path}", out.fmt == "text" and sys.stderr.isatty()) as tick:
                total += res.write_transactions(frame, field, batch_size=batch_size, progress=tick)
    seconds = time.perf_counter() - started
    out.summary({"resource": resource, "field": field, "files": len(paths), "rows": total,
                 "seconds": round(seconds, 3)},
                f"Wrote {total} transactions from {len(paths)} file(s) in {seconds:.2f}s.")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 1 failure, 2 usage)."""
    debug = "--log-level" in (argv or sys.argv) and "debug" in (argv or sys.argv)
    try:
        cli.main(args=argv, prog_name="ecanalytics", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except Exception as exc:
        if debug:
            raise
        kind = "" if isinstance(exc, EcError) else f"{type(exc).__name__}: "
        click.echo(f"error: {kind}{exc} (run with --log-level debug for details)", err=True)
        return 1
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
