"""An independent, plain-Python model of the ledger, for checking values.

It knows nothing of Parquet, Polars or the commit log: it keeps a dict of values and a list of
pending transactions, and folds them exactly as the issue describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass
class Tx:
    key: str
    record: str
    field: str
    op: str
    value: float
    ts: datetime


@dataclass
class LedgerModel:
    defaults: dict[str, float]
    values: dict[tuple[str, str], float] = field(default_factory=dict)
    pending: list[Tx] = field(default_factory=list)
    applied_keys: set[str] = field(default_factory=set)

    def write(self, tx: Tx) -> None:
        self.pending.append(tx)

    def consolidate(self, fld: str) -> None:
        todo = sorted((t for t in self.pending if t.field == fld), key=lambda t: (t.ts, t.key))
        self.pending = [t for t in self.pending if t.field != fld]
        for t in todo:
            if t.key in self.applied_keys:
                continue  # an idempotent retry
            self.applied_keys.add(t.key)
            cur = self.values.get((t.record, fld), self.defaults[fld])
            if t.op == "set":
                cur = t.value
            elif t.op == "add":
                cur += t.value
            else:
                cur -= t.value
            self.values[(t.record, fld)] = cur

    def value(self, record: str, fld: str) -> float:
        return self.values.get((record, fld), self.defaults[fld])

    def table(self, fld: str) -> dict[str, Any]:
        return {r: v for (r, f), v in self.values.items() if f == fld}
