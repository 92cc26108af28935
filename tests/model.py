"""An independent, plain-Python model of the ledger, for checking values.

It knows nothing of Parquet, Polars or the commit log. It keeps every applied transaction per
(record, field) and a list of pending ones; a value is the fold of the applied transactions in
event order ``(timestamp, key)`` from the field's default, as the issue on late data defines it.
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
    applied: dict[tuple[str, str], list[Tx]] = field(default_factory=dict)
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
            self.applied.setdefault((t.record, fld), []).append(t)

    def copy(self) -> LedgerModel:
        return LedgerModel(dict(self.defaults), {k: list(v) for k, v in self.applied.items()}, list(self.pending),
                           set(self.applied_keys))

    @property
    def values(self) -> dict[tuple[str, str], float]:
        return {k: self._fold(k[1], txs) for k, txs in self.applied.items()}

    def _fold(self, fld: str, txs: list[Tx]) -> float:
        cur = self.defaults[fld]
        for t in sorted(txs, key=lambda t: (t.ts, t.key)):
            cur = t.value if t.op == "set" else cur + t.value if t.op == "add" else cur - t.value
        return cur

    def value(self, record: str, fld: str) -> float:
        return self._fold(fld, self.applied.get((record, fld), []))

    def table(self, fld: str) -> dict[str, Any]:
        return {r: v for (r, f), v in self.values.items() if f == fld}
