"""The one rule for transaction ids: an id is the primary key of its field's transaction dataset.

Generated ids (``auto-…``) are unique by construction. A caller-supplied id (an idempotency key,
or an id that ``ingest`` derived from a file's content) may be written more than once: a retry.
Which occurrence counts is decided by the data alone, so every path (one process or spilled, any
bucket layout, a Dask cluster, a SQL view) and every timing of consolidation gives the same answer:

1. if the key was already applied (within ``dedup_window``), the applied occurrence stands;
2. otherwise the occurrence that sorts first by :data:`KEY_ORDER` (earliest ``timestamp``, then
   ``originalId``, ``operation`` and ``value``) counts.

Every other occurrence is dropped. It is a *retry* when it names the same record, operation and
amount as the one that counts (its timestamp may differ): dropped silently. Otherwise it is a
*conflict* (a key reused for another record, operation or amount, as TigerBeetle's
``exists_with_different_*``): not applied, and reported with the key in
``ConsolidationResult.conflicts``, the ``consolidated`` event and ``inspect``, in event order
(:data:`CONFLICT_ORDER`), whichever engine or path found them.

The one exception to "the data alone": an occurrence that arrives after its key was applied never
replaces the applied one, even if it is dated earlier (an applied transaction is never undone).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

AUTO_ID_PREFIX = "auto-"
KEY_ORDER = ("timestamp", "originalId", "operation", "value")
SIGNATURE = ("originalId", "operation", "value")
APPLIED_KEY_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(), "originalId": pl.String(), "operation": pl.String(), "value": pl.String(),
    "timestamp": pl.Datetime("us", "UTC")}
CONFLICT_SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(), "originalId": pl.String(), "operation": pl.String(), "value": pl.String(),
    "timestamp": pl.Datetime("us", "UTC"), "reason": pl.String()}
# Conflicts are listed by timestamp, then by the other columns: one order for one process, its
# spilling path (one id bucket at a time) and a cluster, and the newest last (what is kept).
CONFLICT_ORDER = ("timestamp", "id", "originalId", "operation", "value", "reason")


def generated() -> pl.Expr:
    """True for generated ids, which need no deduplication."""
    return pl.col("id").str.starts_with(AUTO_ID_PREFIX)


@dataclass(frozen=True)
class Resolved:
    """Rows after the key rule: ``kept`` (one per id), and how many were ``retries``; ``conflicts``
    has one row per dropped occurrence that differs from the one that counts (see
    :data:`CONFLICT_SCHEMA`); ``dropped`` has ``_object, id`` of every occurrence that does not
    count (retries and conflicts), which the commit records so that readers hide them."""

    kept: pl.DataFrame
    retries: int
    conflicts: pl.DataFrame
    dropped: pl.DataFrame


def _text(value: pl.Expr) -> pl.Expr:
    return value.cast(pl.String)


def _reason(a: str, b: str) -> pl.Expr:
    """Why an occurrence (columns ``a``-suffixed) conflicts with the one that counts (``b``)."""
    return (pl.when(pl.col(f"originalId{a}") != pl.col(f"originalId{b}")).then(pl.lit("exists_with_different_record"))
            .when(pl.col(f"operation{a}") != pl.col(f"operation{b}")).then(pl.lit("exists_with_different_operation"))
            .otherwise(pl.lit("exists_with_different_amount")))


def resolve(rows: pl.DataFrame, applied: pl.DataFrame | None = None) -> Resolved:
    """Apply the key rule to ``rows`` (transaction rows, any extra columns kept), given the keys
    already ``applied`` (:data:`APPLIED_KEY_SCHEMA`; a null signature matches anything)."""
    keyed_mask = ~generated()
    no_conflicts = pl.DataFrame(schema=CONFLICT_SCHEMA)
    drop_schema = {"_object": rows.schema.get("_object", pl.UInt32()), "_row": pl.UInt32(), "id": pl.String()}
    if not rows.height or not rows.select(keyed_mask.any()).item():
        return Resolved(rows, 0, no_conflicts, pl.DataFrame(schema=drop_schema))
    keyed = rows.filter(keyed_mask)
    conflicts: list[pl.DataFrame] = []
    gone: list[pl.DataFrame] = []
    dropped = 0
    if applied is not None and applied.height:
        hit = keyed.join(applied, on="id", how="semi")
        if hit.height:
            known = hit.with_row_index("_r").join(applied.rename({c: f"{c}_a" for c in SIGNATURE}), on="id")
            same = ((pl.col("originalId") == pl.col("originalId_a")) & (pl.col("operation") == pl.col("operation_a"))
                    & (_text(pl.col("value")) == pl.col("value_a")))
            differ = known.filter(~same.fill_null(True))
            conflicts.append(differ.select(
                "id", "originalId", "operation", _text(pl.col("value")).alias("value"),
                pl.col("timestamp").cast(pl.Datetime("us", "UTC")), _reason("", "_a").alias("reason")))
            dropped += hit.height
            gone.append(hit.select("_object", "_row", "id"))
            keyed = keyed.join(applied, on="id", how="anti")
    if keyed.height and keyed["id"].n_unique() < keyed.height:
        # A held occurrence (no ``_object``: read by an earlier run, not folded yet) stands like
        # an applied one; among the others the first by KEY_ORDER counts.
        ordered = keyed.with_columns(pl.col("_object").is_not_null().alias("_new")).sort(
            ["id", "_new", *KEY_ORDER], maintain_order=True, nulls_last=True).drop("_new")
        is_first = pl.col("id").is_first_distinct()
        first, rest = ordered.filter(is_first), ordered.filter(~is_first)
        if rest.height:
            paired = rest.join(first.select("id", *[pl.col(c).alias(f"{c}_k") for c in SIGNATURE]), on="id")
            same = ((pl.col("originalId") == pl.col("originalId_k")) & (pl.col("operation") == pl.col("operation_k"))
                    & (pl.col("value") == pl.col("value_k")))
            conflicts.append(paired.filter(~same).select(
                "id", "originalId", "operation", _text(pl.col("value")).alias("value"),
                pl.col("timestamp").cast(pl.Datetime("us", "UTC")), _reason("", "_k").alias("reason")))
            dropped += rest.height
            gone.append(rest.select("_object", "_row", "id"))
        keyed = first
    found = pl.concat(conflicts, how="vertical").sort(CONFLICT_ORDER) if conflicts else no_conflicts
    kept = pl.concat([rows.filter(~keyed_mask), keyed.select(rows.columns)], how="vertical")
    return Resolved(kept, dropped - found.height, found,
                    pl.concat(gone, how="vertical").cast(drop_schema) if gone else pl.DataFrame(schema=drop_schema))  # type: ignore[arg-type]


def applied_keys(rows: pl.DataFrame) -> pl.DataFrame:
    """The keys of applied ``rows`` to remember (caller-supplied ones): the occurrence that counted."""
    return rows.filter(~generated()).select(
        "id", "originalId", "operation", _text(pl.col("value")).alias("value"),
        pl.col("timestamp").cast(pl.Datetime("us", "UTC")))


HIDDEN_SCHEMA: dict[str, pl.DataType] = {"key": pl.String(), "row": pl.UInt32(), "id": pl.String()}


def hide(rows: pl.DataFrame, hidden: pl.DataFrame) -> pl.DataFrame:
    """``rows`` of applied objects (``_object``: the object's key, ``_row``: the row's position
    in it) without the occurrences that did not count when they were consolidated (``hidden``:
    :data:`HIDDEN_SCHEMA`, recorded by each commit): what every reader of the history sees, one
    row per id. (An object may hold the same id twice: the position tells the copies apart.)"""
    if not hidden.height or not rows.height:
        return rows
    return rows.join(hidden.select("key", "row"), left_on=["_object", "_row"], right_on=["key", "row"], how="anti")
