"""Reducers fold a record's pending transactions into its new value.

Two interfaces:

* **Built-in reducers** (``"default"``, ``"sum"``, ``"max"``, ``"min"``, ``"last"``) are vectorized
  Polars plans: group-bys and joins, no Python loop per row. A consolidation folds ``default``,
  ``sum``, ``min`` and ``max`` chunk by chunk into mergeable per-record states
  (:mod:`ecanalytics.consolidation.states`); the plans below are the general path (``last``,
  previews, spilled buckets, Dask), and they define the values the states must equal.
* **A Python callable** ``reducer(transactions: list[dict]) -> number``, as in the original plugin.
  It is called once per record with a synthetic ``set`` of the current value first
  (``{"operation": "set", "value": current, "source": "current", "synthetic": True, ...}``), followed
  by the pending transactions ordered by ``(timestamp, id)``. It is the slow path.

Each built-in is defined by what it does to that same list, with ``sub`` rows counting as
``-value`` ("signed value"):

========== ================================================================================
default    walk in order: ``set`` replaces, ``add`` adds, ``sub`` subtracts
sum        the sum of the signed values (the synthetic set contributes the current value)
max / min  the largest / smallest signed value
last       the signed value of the last transaction
========== ================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any, get_args

import polars as pl

from ecanalytics.errors import ConfigurationError, ConsolidationError
from ecanalytics.types import BuiltinReducer, PythonReducer

BUILTIN_REDUCERS: tuple[str, ...] = get_args(BuiltinReducer)
_ORDER = ["timestamp", "id"]


def signed_value() -> pl.Expr:
    """A row's signed value: ``-value`` for a ``sub``, ``value`` otherwise."""
    return pl.when(pl.col("operation") == "sub").then(-pl.col("value")).otherwise(pl.col("value"))


def _default(pending: pl.LazyFrame, current: pl.LazyFrame, default: pl.Expr) -> pl.LazyFrame:
    # Join-based fold (no full sort): each record's last set, then the signed sum of what follows
    # it. The records are the union of those two group-bys, so no separate unique() pass is needed.
    last_set = (
        pending.filter(pl.col("operation") == "set")
        .sort(_ORDER)
        .group_by("originalId")
        .agg(pl.col("value").last().alias("_set_value"), pl.col("timestamp").last().alias("_set_ts"),
             pl.col("id").last().alias("_set_id"))
    )
    after = (
        pending.filter(pl.col("operation") != "set")
        .join(last_set.select("originalId", "_set_ts", "_set_id"), on="originalId", how="left")
        .filter(
            pl.col("_set_ts").is_null()
            | (pl.col("timestamp") > pl.col("_set_ts"))
            | ((pl.col("timestamp") == pl.col("_set_ts")) & (pl.col("id") > pl.col("_set_id")))
        )
        .group_by("originalId")
        .agg(signed_value().sum().alias("_delta"))
    )
    return (
        last_set.select("originalId", "_set_value")
        .join(after, on="originalId", how="full", coalesce=True)
        .join(current, on="originalId", how="left")
        .select(
            "originalId",
            (pl.coalesce("_set_value", "current", default) + pl.col("_delta").fill_null(0)).alias("value"),
        )
    )


def _aggregate(
    agg: Callable[[pl.Expr], pl.Expr], combine: Callable[[pl.Expr, pl.Expr], pl.Expr]
) -> Callable[[pl.LazyFrame, pl.LazyFrame, pl.Expr], pl.LazyFrame]:
    def run(pending: pl.LazyFrame, current: pl.LazyFrame, default: pl.Expr) -> pl.LazyFrame:
        return (
            pending.group_by("originalId").agg(agg(signed_value()).alias("_agg"))
            .join(current, on="originalId", how="left")
            .select("originalId", combine(pl.col("current").fill_null(default), pl.col("_agg")).alias("value"))
        )

    return run


_VECTORIZED: dict[str, Callable[[pl.LazyFrame, pl.LazyFrame, pl.Expr], pl.LazyFrame]] = {
    "default": _default,
    "sum": _aggregate(lambda e: e.sum(), lambda cur, agg: cur + agg),
    "max": _aggregate(lambda e: e.max(), lambda cur, agg: pl.max_horizontal(cur, agg)),
    "min": _aggregate(lambda e: e.min(), lambda cur, agg: pl.min_horizontal(cur, agg)),
    "last": _aggregate(lambda e: e.sort_by(_ORDER).last(), lambda cur, agg: agg),
}


class Reducer:
    """A built-in name or a Python callable, applied to pending transactions.

    ``current`` is a frame ``originalId, current`` of existing records (it may hold more records
    than ``pending`` touches); a record missing from it starts from ``default``. The result has one
    row ``originalId, value`` per record in ``pending``.
    """

    def __init__(self, spec: BuiltinReducer | PythonReducer | None) -> None:
        spec = "default" if spec is None else spec
        if isinstance(spec, str) and spec not in BUILTIN_REDUCERS:
            # A named reducer that a package registers in the ``ecanalytics.reducers`` entry-point
            # group; the catalog stores the name, so every process that has the package finds it.
            self.name: str = spec
            self.func: PythonReducer | None = load_named(spec)
        elif isinstance(spec, str):
            self.name = spec
            self.func = None
        elif callable(spec):
            self.name = f"python:{getattr(spec, '__module__', '?')}.{getattr(spec, '__qualname__', repr(spec))}"
            self.func = spec
        else:
            raise ConfigurationError(f"reducer must be None, a name in {list(BUILTIN_REDUCERS)} or a callable.")

    @property
    def is_builtin(self) -> bool:
        return self.func is None

    def __call__(self, pending: pl.DataFrame, current: pl.DataFrame, default: Any) -> pl.DataFrame:
        # Float64 for number fields, Decimal(p, s) for decimal fields: exact sums stay exact, and
        # the result is cast back to the field's type; a decimal that no longer fits it becomes
        # null, which consolidation holds back as an overflow (as a non-finite float).
        dtype = current.schema["current"]
        if self.func is None:
            plan = _VECTORIZED[self.name](pending.lazy(), current.lazy(), pl.lit(default).cast(dtype))
            return plan.with_columns(pl.col("value").cast(dtype, strict=False)).collect()
        return self._python(pending, current, default)

    def _python(self, pending: pl.DataFrame, current: pl.DataFrame, default: Any) -> pl.DataFrame:
        assert self.func is not None
        touched = pending.select("originalId").unique().join(current, on="originalId", how="left")
        base = dict(zip(touched["originalId"].to_list(), touched["current"].fill_null(default).to_list(), strict=True))
        groups: dict[str, list[dict[str, Any]]] = {}
        cols = ["id", "originalId", "field", "value", "operation", "timestamp", "source"]
        for row in pending.sort(["originalId", *_ORDER]).select(cols).iter_rows(named=True):
            groups.setdefault(row["originalId"], []).append(row)
        ids, values = [], []
        dtype = current.schema["current"]
        for rid, cur in base.items():
            synthetic = {"id": None, "originalId": rid, "field": None, "value": cur, "operation": "set",
                         "timestamp": None, "source": "current", "synthetic": True}
            try:
                result = self.func([synthetic, *groups.get(rid, [])])
            except Exception as exc:
                raise ConsolidationError(f"Reducer {self.name} failed for record {rid!r}: {exc!r}",
                                         record_id=rid) from exc
            # Finite and within the field's type: a float for number fields (10**400 is not one, and
            # math.isfinite() itself overflows on it), at most p - s integer digits for decimal(p, s).
            # Via Decimal, so a signaling NaN never reaches float() (which raises on it).
            ok = not isinstance(result, bool) and isinstance(result, (int, float, Decimal))
            if ok:
                exact = Decimal(result)  # exact for floats too (and numpy floats, unlike their repr)
                if not exact.is_finite():
                    ok = False
                elif isinstance(dtype, pl.Decimal):
                    ok = not exact or exact.adjusted() < (dtype.precision or 38) - dtype.scale
                else:
                    ok = not exact or (exact.adjusted() < 309 and math.isfinite(float(exact)))
            if not ok:
                from ecanalytics.storage.paths import describe

                raise ConsolidationError(
                    f"Reducer {self.name} returned {describe(result)} for record {rid!r}; it must return a finite "
                    f"number that fits the field ({dtype}).",
                    record_id=rid,
                )
            ids.append(rid)
            values.append(result if isinstance(dtype, pl.Decimal) else float(result))
        dtype = current.schema["current"]
        return pl.DataFrame({"originalId": ids, "value": values}, schema={"originalId": pl.String, "value": dtype})


ENTRY_POINT_GROUP = "ecanalytics.reducers"


def load_named(name: str) -> PythonReducer:
    """The reducer registered as ``name`` in the ``ecanalytics.reducers`` entry-point group, e.g.
    ``[project.entry-points."ecanalytics.reducers"] capped = "mypkg.reducers:capped"``."""
    from importlib.metadata import entry_points

    found = entry_points(group=ENTRY_POINT_GROUP, name=name)
    if not found:
        raise ConfigurationError(
            f"Unknown reducer {name!r}: not one of {list(BUILTIN_REDUCERS)} and no installed package registers it in "
            f"the {ENTRY_POINT_GROUP!r} entry-point group. Install that package, or pass a callable."
        )
    func = next(iter(found)).load()
    if not callable(func):
        raise ConfigurationError(f"The {ENTRY_POINT_GROUP} entry point {name!r} is not callable.")
    return func  # type: ignore[no-any-return]


def load_reference(ref: str) -> PythonReducer:
    """A reducer given as ``package.module:function`` (the CLI's ``--reducer``)."""
    import importlib

    module, _, attr = ref.partition(":")
    try:
        func = getattr(importlib.import_module(module), attr) if module and attr else None
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"Cannot load reducer {ref!r} ({exc}); use package.module:function.") from exc
    if not callable(func):
        raise ConfigurationError(f"Reducer {ref!r} is not a callable; use package.module:function.")
    return func  # type: ignore[no-any-return]


def python_reference(name: str) -> PythonReducer:
    """The plain-Python definition of a built-in reducer (documentation, tests, benchmarks)."""

    def signed(t: dict[str, Any]) -> float:
        return -t["value"] if t["operation"] == "sub" else float(t["value"])

    def default(txs: list[dict[str, Any]]) -> float:
        acc = 0.0
        for t in txs:
            acc = t["value"] if t["operation"] == "set" else acc + signed(t)
        return acc

    table: dict[str, PythonReducer] = {
        "default": default,
        "sum": lambda txs: sum(signed(t) for t in txs),
        "max": lambda txs: max(signed(t) for t in txs),
        "min": lambda txs: min(signed(t) for t in txs),
        "last": lambda txs: signed(txs[-1]),
    }
    return table[name]
