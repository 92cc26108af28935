"""The demo job: sample wallet traffic written to a root, consolidated, and summarised.

The demo writes to a new root, or appends to a root an earlier demo wrote (more traffic on the
same wallets). It refuses any other root before writing anything: a root that holds other
resources, a ``wallets`` resource with other attributes, or files and no ecanalytics data at all,
is someone's data."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import polars as pl

from ecanalytics.consolidation import ConsolidationResult
from ecanalytics.consolidation.reducers import signed_value
from ecanalytics.database import Database
from ecanalytics.errors import ResourceExistsError
from ecanalytics.plugin import EventualConsistencyPlugin
from ecanalytics.resource import TransactionDataset

WALLET_ATTRIBUTES = {
    "id": "string|required",
    "userId": "string|required",
    "balance": "number|default:0",
    "points": "number|default:0",
    "currency": "string|required",
}


@dataclass(frozen=True)
class DemoReport:
    """What the demo wrote and what consolidation produced."""

    written: int
    results: list[ConsolidationResult]
    values: pl.DataFrame
    cohorts: pl.DataFrame
    appended: bool = False  # the root held an earlier demo's wallets, which got more traffic
    earlier: int = 0  # balance transactions that earlier demos had written there


def check_demo_root(db: Database) -> bool:
    """True when ``db`` holds an earlier demo's wallets, False when it is empty; raises
    :class:`ResourceExistsError` (nothing written) for a root that holds anything else: other
    resources, or files that are not an ecanalytics root at all (a home folder, a project)."""
    if not db.has_catalog():
        found = [*db.store.listdirs(""), *db.store.listdir("")]
        if found:
            shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            raise ResourceExistsError(
                f"{db.uri} is not a demo root: it holds {shown}, and no ecanalytics data. The demo writes only to "
                "a new (or empty) folder or to one an earlier demo wrote; nothing was written. Pick another folder, "
                "e.g. --root ./ec-demo.")
    others = sorted((set(db.resource_names()) | set(db.broken)) - {"wallets"})
    wallets = db.resource("wallets") if "wallets" in db.resource_names() else None
    if wallets is not None and wallets.schema.to_spec() != WALLET_ATTRIBUTES:
        others.insert(0, "wallets (with other attributes than the demo's)")
    if "wallets" in db.broken:
        others.insert(0, "wallets (unreadable)")
    if others:
        raise ResourceExistsError(
            f"{db.uri} is not a demo root: it holds {', '.join(others)}. The demo writes only to a new folder or "
            "to one an earlier demo wrote; nothing was written. Pick another folder, e.g. --root ./ec-demo."
        )
    return wallets is not None


def run_demo(
    db: Database,
    *,
    records: int = 50,
    transactions: int = 2000,
    days: int = 7,
    seed: int = 7,
    timezone_name: str = "America/Sao_Paulo",
    progress: Callable[[int], None] | None = None,
    until: datetime | None = None,
) -> DemoReport:
    """Write ``transactions`` random add/sub/set calls over ``records`` wallets spread over the
    ``days`` days before ``until`` (default now; pass a fixed instant for reproducible output),
    batched and async, consolidate both fields, and summarise per cohort day.

    On a root an earlier demo wrote, the traffic is appended (``appended`` and ``earlier`` say
    so); any other non-empty root raises :class:`ResourceExistsError` before anything is written."""
    appended = check_demo_root(db)
    earlier = 0
    if appended:
        history = db.resources.get("wallets_transactions_balance")
        earlier = history.to_polars().height if isinstance(history, TransactionDataset) else 0
    rng = random.Random(seed)
    for field in ("balance", "points"):
        db.use_plugin(EventualConsistencyPlugin(
            resource="wallets", field=field, mode="async", auto_consolidate=False,
            batch_transactions=True, batch_size=500, cohort={"timezone": timezone_name},
        ))
    wallets = db.create_resource("wallets", WALLET_ATTRIBUTES)
    existing = set(wallets.to_polars()["id"].to_list())
    for i in range(records):
        wid = f"wallet-{i:04d}"
        if wid not in existing:
            wallets.insert({"id": wid, "userId": f"user-{i % 17:03d}", "balance": 0, "currency": rng.choice(["USD", "EUR", "BRL"])})
    now = until or datetime.now(timezone.utc)
    for n in range(transactions):
        wid = f"wallet-{rng.randrange(records):04d}"
        when = now - timedelta(seconds=rng.uniform(0, days * 86400))
        if rng.random() < 0.7:
            op = rng.choices(["add", "sub", "set"], weights=[6, 3, 1])[0]
            amount = rng.randrange(1, 500) if op != "set" else rng.randrange(100, 5000)
            getattr(wallets, op)(wid, "balance", amount, timestamp=when, source="demo")
        else:
            wallets.add(wid, "points", rng.randrange(1, 50), timestamp=when, source="demo")
        if progress is not None:
            progress(n + 1)
    db.flush()
    results = db.consolidate("wallets")
    values = wallets.to_polars().select("id", "currency", "balance", "points")
    history = db.resources["wallets_transactions_balance"]
    assert isinstance(history, TransactionDataset)
    cohorts = cohort_summary(history.to_polars())
    return DemoReport(transactions, results, values, cohorts, appended, earlier)


def cohort_summary(txs: pl.DataFrame) -> pl.DataFrame:
    """Per cohort day: ``transactionCount``, ``{set,add,sub}Count`` and the signed ``totalValue`` (the
    names of the ``daily_totals`` report)."""
    signed = signed_value()
    return (
        txs.group_by("cohortDate")
        .agg(
            pl.len().alias("transactionCount"),
            *[(pl.col("operation") == op).sum().alias(f"{op}Count") for op in ("set", "add", "sub")],
            signed.sum().alias("totalValue"),
        )
        .sort("cohortDate")
    )
