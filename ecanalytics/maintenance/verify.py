"""Verification: does every object the committed state names exist?

The state names applied transaction objects (the manifest, live and archived), bucket objects
(checkpoint bases and the deltas and marks committed since) and retention bases. An object that is
gone is corruption (an operator, a lifecycle rule, a bug), never "no rows": readers raise
:class:`~ecanalytics.errors.MissingObjectError` when they meet one. :func:`verify` finds them all
up front, with one recursive LIST per prefix and no GET, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ecanalytics.ledger import Ledger
from ecanalytics.ledger.log import is_inline


@dataclass(frozen=True)
class Problem:
    """One object the committed state names that the store does not hold."""

    key: str  # the object's URL
    what: str  # what it is, e.g. "applied transaction object of balance"
    fix: str  # what to do

    def as_dict(self) -> dict[str, str]:
        return {"key": self.key, "what": self.what, "fix": self.fix}


_RESTORE = ("restore it from a backup or from the bucket's object versions; until then readers of that history "
            "raise MissingObjectError and nothing that depends on it is committed")


def verify(ledger: Ledger, fields: Iterable[str]) -> list[Problem]:
    """Every object named by ``ledger``'s latest state (for ``fields``' manifests) that is missing,
    sorted by key. Only reads (LISTs); an empty list means the root is whole."""
    st = ledger.state()
    store = ledger.store
    named: dict[str, str] = {}
    for f in fields:
        for key in st.manifest_of(f)["key"].to_list():
            named[key] = f"applied transaction object of {f}"
        if (cut := st.retention.get(f)) is not None:
            named[cut.base] = f"retention base of {f}"
    for k, bucket in enumerate(st.buckets):
        for part in (bucket.base, *bucket.parts):
            for ref in (part.records, part.marks):
                if ref and not is_inline(ref):
                    named[ref] = f"state object of bucket {k}"
    prefixes = {key.split("/", 1)[0] if not key.startswith("_archive/") else "/".join(key.split("/", 2)[:2])
                for key in named}
    present = {rel for prefix in sorted(prefixes) for rel in store.find(prefix)}
    return [Problem(store.url(key), what, _RESTORE) for key, what in sorted(named.items()) if key not in present]
