"""DDL for engines that read a root without ecanalytics: Athena, Spark, Trino and DuckDB.

:func:`generate` returns one ``CREATE`` statement per transaction dataset (Hive-partitioned by
``cohortMonth``/``cohortDate``, Parquet), one per dataset's retention archive when it has one, and
one per resource over its consolidated records. Athena gets partition projection (no crawler, no
``MSCK REPAIR``); Spark and Trino get the statement that discovers the partitions; DuckDB, which
has no external tables, gets views over ``read_parquet``.

Consolidated records live in the commit log (checkpoints plus deltas), which only ecanalytics
replays. :func:`export_records` writes them as one Parquet object per resource,
``_export/{resource}/records.parquet``, which the records tables read; rerun it
(``ecanalytics ddl --export``) to refresh the snapshot.

What such readers see: every transaction object, pending ones included (there is no ``applied``
column), and during a compaction window both merged objects and their sources, so keep one row
per transaction ``id``, the earliest by ``(timestamp, originalId, operation, value)`` (the key rule
of ``ecanalytics.ledger.keys``; conflicting reuses that ecanalytics hid are visible to such readers).
See ``docs/operations.md``, Compaction.

Example:
    >>> import ecanalytics as ec
    >>> from ecanalytics.ddl import generate
    >>> import tempfile
    >>> with ec.connect(tempfile.mkdtemp()) as db:
    ...     _ = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    ...     "CREATE OR REPLACE VIEW" in generate(db, "duckdb")
    True
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Literal, get_args

from ecanalytics.errors import ConfigurationError
from ecanalytics.storage import paths as P

if TYPE_CHECKING:
    from ecanalytics.database import Database
    from ecanalytics.ledger.schema import Attribute

Engine = Literal["athena", "spark", "trino", "duckdb"]
# Transaction columns in file order; the partition columns live in the path only.
TX_COLUMNS = ("id", "originalId", "field", "value", "operation", "timestamp", "source")
_TYPES: dict[str, dict[str, str]] = {
    "athena": {"string": "string", "number": "double", "integer": "bigint", "boolean": "boolean",
               "timestamp": "timestamp", "decimal": "decimal({p},{s})"},
    "spark": {"string": "STRING", "number": "DOUBLE", "integer": "BIGINT", "boolean": "BOOLEAN",
              "timestamp": "TIMESTAMP", "decimal": "DECIMAL({p},{s})"},
    "trino": {"string": "varchar", "number": "double", "integer": "bigint", "boolean": "boolean",
              "timestamp": "timestamp(6)", "decimal": "decimal({p},{s})"},
}


def _check_engine(engine: str) -> Engine:
    if engine not in get_args(Engine):
        raise ConfigurationError(f"engine must be one of {list(get_args(Engine))}; got {engine!r}.")
    return engine  # type: ignore[return-value]


def _type(engine: str, attr: Attribute | None, kind: str = "string") -> str:
    kind = attr.kind if attr is not None else kind
    return _TYPES[engine][kind].format(p=attr.precision if attr else 0, s=attr.scale if attr else 0)


def _quote(engine: str, name: str) -> str:
    # Athena and Spark quote with backticks; Trino and DuckDB with double quotes. Athena and Trino
    # store names in lower case (they match Parquet columns case-insensitively).
    if engine in ("athena", "spark"):
        return f"`{name.lower() if engine == 'athena' else name}`"
    return f'"{name.lower() if engine == "trino" else name}"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _location(db: Database, engine: Engine, rel: str) -> str:
    """Where ``engine`` finds ``rel``: s3:// (s3a:// for Spark's Hadoop S3A), or a local path."""
    config = db.config
    path = db.store.abs(rel)
    if config.protocol == "s3":
        return f"{'s3a' if engine == 'spark' else 's3'}://{path.lstrip('/')}"
    if config.protocol == "memory":
        raise ConfigurationError(
            f"{db.uri} lives in this process's memory, which no other engine can read; use a folder or s3:// root.")
    if engine == "athena":
        raise ConfigurationError(
            f"Athena reads S3 only, and {db.uri} is a local folder; use --engine duckdb or spark, or an s3:// root.")
    return path if engine == "duckdb" else f"file://{path}"


def _duckdb_type(column: str, value: Attribute) -> str:
    if column == "value":
        return "DOUBLE" if value.kind == "number" else f"DECIMAL({value.precision},{value.scale})"
    return "TIMESTAMPTZ" if column == "timestamp" else "VARCHAR"


def _first_month(db: Database, dataset: str) -> str:
    """The earliest cohort month stored (the start of Athena's projected range), else this month."""
    months = [d.split("=", 1)[1] for d in db.store.listdirs(dataset) if d.startswith("cohortMonth=")]
    return min(months, default=dt.datetime.now(dt.UTC).strftime("%Y-%m"))


def _tx_table(db: Database, engine: Engine, table: str, rel: str, value: Attribute, schema: str | None) -> str:
    name = f"{_quote(engine, schema)}.{_quote(engine, table)}" if schema else _quote(engine, table)
    location = _location(db, engine, rel)
    if engine == "duckdb":
        if not db.store.find(rel, ".parquet"):
            cols = ", ".join(f"NULL::{_duckdb_type(c, value)} AS {_quote(engine, c)}" for c in TX_COLUMNS)
            return (f"-- {table}: no objects yet; rerun ddl after the first write.\n"
                    f"CREATE OR REPLACE VIEW {name} AS SELECT {cols}, NULL::VARCHAR AS \"cohortMonth\", "
                    f"NULL::DATE AS \"cohortDate\" WHERE false;")
        glob = _literal(f"{location}/*/*/*.parquet")
        return (f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({glob}, hive_partitioning = true, "
                "hive_types = {'cohortMonth': VARCHAR, 'cohortDate': DATE});")
    columns = [(c, _type(engine, value) if c == "value" else _type(engine, None, "timestamp" if c == "timestamp" else "string"))
               for c in TX_COLUMNS]
    body = ",\n".join(f"  {_quote(engine, c)} {t}" for c, t in columns)
    month, day = _quote(engine, "cohortMonth"), _quote(engine, "cohortDate")
    if engine == "athena":
        start = _first_month(db, rel.removeprefix("_archive/"))
        template = f"{location}/cohortMonth=${{cohortmonth}}/cohortDate=${{cohortdate}}"
        props = {
            "projection.enabled": "true",
            "projection.cohortmonth.type": "date", "projection.cohortmonth.format": "yyyy-MM",
            "projection.cohortmonth.range": f"{start},NOW", "projection.cohortmonth.interval": "1",
            "projection.cohortmonth.interval.unit": "MONTHS",
            "projection.cohortdate.type": "date", "projection.cohortdate.format": "yyyy-MM-dd",
            "projection.cohortdate.range": f"{start}-01,NOW", "projection.cohortdate.interval": "1",
            "projection.cohortdate.interval.unit": "DAYS",
            "storage.location.template": template,
        }
        properties = ",\n".join(f"  {_literal(k)} = {_literal(v)}" for k, v in props.items())
        return (f"CREATE EXTERNAL TABLE IF NOT EXISTS {name} (\n{body}\n)\n"
                f"PARTITIONED BY ({month} string, {day} string)\nSTORED AS PARQUET\n"
                f"LOCATION {_literal(location + '/')}\nTBLPROPERTIES (\n{properties}\n);")
    if engine == "spark":
        return (f"CREATE TABLE IF NOT EXISTS {name} (\n{body},\n  {month} STRING,\n  {day} STRING\n)\n"
                f"USING PARQUET\nPARTITIONED BY ({month}, {day})\nLOCATION {_literal(location)};\n"
                f"MSCK REPAIR TABLE {name};")
    schema_name = schema or "default"
    return (f"CREATE TABLE IF NOT EXISTS {name} (\n{body},\n  {month} varchar,\n  {day} varchar\n)\n"
            f"WITH (\n  format = 'PARQUET',\n  external_location = {_literal(location)},\n"
            f"  partitioned_by = ARRAY['cohortmonth', 'cohortdate']\n);\n"
            f"CALL system.sync_partition_metadata(schema_name => {_literal(schema_name)}, "
            f"table_name => {_literal(table.lower())}, mode => 'ADD', case_sensitive => false);")


def _records_table(db: Database, engine: Engine, resource: str, schema: str | None) -> str:
    name = f"{_quote(engine, schema)}.{_quote(engine, resource)}" if schema else _quote(engine, resource)
    rel = P.export_object(resource)
    if engine == "duckdb":
        statement = f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM read_parquet({_literal(_location(db, engine, rel))});"
        if not db.store.exists(rel):
            return f"-- {resource}: no snapshot yet; run `ecanalytics ddl --export` first.\n-- {statement}"
        return statement
    folder = _location(db, engine, rel.rsplit("/", 1)[0])
    attrs = db.resource(resource).schema.attributes.values()
    body = ",\n".join(f"  {_quote(engine, a.name)} {_type(engine, a)}" for a in attrs)
    if engine == "athena":
        return (f"CREATE EXTERNAL TABLE IF NOT EXISTS {name} (\n{body}\n)\nSTORED AS PARQUET\n"
                f"LOCATION {_literal(folder + '/')};")
    if engine == "spark":
        return f"CREATE TABLE IF NOT EXISTS {name} (\n{body}\n)\nUSING PARQUET\nLOCATION {_literal(folder)};"
    return (f"CREATE TABLE IF NOT EXISTS {name} (\n{body}\n)\n"
            f"WITH (\n  format = 'PARQUET',\n  external_location = {_literal(folder)}\n);")


def generate(db: Database, engine: str, *, schema: str | None = None) -> str:
    """The DDL script for ``engine`` (``athena``, ``spark``, ``trino`` or ``duckdb``): a table (DuckDB:
    a view) per transaction dataset, per retention archive that holds objects, and per resource.
    ``schema`` qualifies every table name. Locations never hold credentials."""
    eng = _check_engine(engine)
    if schema is not None:
        P.validate_name("schema", schema)
    header = [
        f"-- ecanalytics {eng} DDL for {db.uri}",
        "-- Transaction tables hold every object: pending transactions too (no `applied` column), and during a",
        "-- compaction window both merged objects and their sources; deduplicate on `id` where that matters.",
        "-- Records tables read the snapshot `ecanalytics ddl --export` writes; rerun it to refresh.",
    ]
    if eng == "duckdb" and db.config.protocol == "s3":
        header.append("-- S3: LOAD httpfs; CREATE SECRET (TYPE s3, PROVIDER credential_chain) first (credentials are never printed).")
    statements = ["\n".join(header)]
    for plugin in db.plugins():
        value = db.resource(plugin.resource_name).schema.attributes[plugin.field]
        statements.append(_tx_table(db, eng, plugin.dataset, plugin.dataset, value, schema))
        archive = P.archive_key(plugin.dataset)
        if db.store.listdirs(archive):
            statements.append(_tx_table(db, eng, f"{plugin.dataset}_archive", archive, value, schema))
    for resource in db.resource_names():
        statements.append(_records_table(db, eng, resource, schema))
    return "\n\n".join(statements) + "\n"


def export_records(db: Database) -> list[str]:
    """Write each resource's consolidated records to ``_export/{resource}/records.parquet`` (one
    overwrite: readers see the old or the new snapshot); returns the keys written."""
    keys = []
    for name in db.resource_names():
        key = P.export_object(name)
        db.store.write_parquet(key, db.resource(name).to_polars())
        keys.append(key)
    return keys
