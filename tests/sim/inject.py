"""Re-injected old bugs: each one puts a behaviour the library had before back, for one run.

``run_seed(seed, inject=NAME)`` (``python -m tests.sim --inject NAME``) runs the seed with
:data:`INJECTIONS` ``[NAME]`` patched into the library, to show that the simulator finds that
bug, and how fast. Each injection is a small faithful copy of the old code path, written against
the current library's names; nothing here is used by a normal run.

* ``bug1`` (``sweep-by-age``): :func:`ecanalytics.consolidation.cluster.sweep` deletes a bucket
  delta (or cluster run) that no log entry names once it is older than one hour by the store's
  clock, even when the version it was written for is still free. A consolidator paused for more
  than an hour between writing its deltas and creating its log entry then commits an entry
  whose deltas are gone.
* ``bug2`` (``compaction-cleanup-by-age``): compaction's clean-up deletes a ``c-`` output of an
  uncommitted run once it is older than one hour by the store's clock. A compaction paused
  before its commit then commits (and deletes its sources for) outputs that are gone.
  ``bug2-clock`` is the same with the age taken by the sweeping machine's own clock against the
  store's LastModified, as the oldest code did: a machine whose clock runs hours ahead deletes
  fresh output.
* ``bug3`` (``history-skips-missing``): ``read_history`` skips an applied object that is
  missing instead of raising :class:`ecanalytics.MissingObjectError`, so ``recalculate`` commits
  values without it.
* ``bug4`` (``catalog-overwrite``): a catalog change reads the latest entry and overwrites it in
  place instead of creating the next version, so one of two racing changes is lost.
* ``trusted-delete``: a consolidation drops a consumed key from the consumed set as soon as the
  delete of its marker returned without an error, instead of waiting until a LIST shows the
  marker gone; with a delete that fails silently, the object is applied again.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import pkgutil
import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from ecanalytics.ledger import catalog as cat
from ecanalytics.ledger import transactions as tx
from ecanalytics.storage import Store
from ecanalytics.storage import paths as P

if TYPE_CHECKING:
    from ecanalytics.consolidation.field import Field
    from ecanalytics.ledger.log import Ledger
    from ecanalytics.ledger.state import State
    from ecanalytics.ledger.transactions import Inbox

GRACE_S = 3600.0  # the old grace of the sweep and of compaction's clean-up


def _sweep_by_age(ledger: Ledger, *, deltas: bool = True) -> int:
    """The sweep before 1905d19: deltas and runs of a free version go once an hour old."""
    store = ledger.store
    now = store.store_now(f"{P.work_dir(ledger.resource)}/.now")
    if now is None:
        return 0
    old = {rel for rel, t in store.find_times(P.work_dir(ledger.resource)).items()
           if t is not None and now - t >= GRACE_S and not rel.endswith("/.now")}
    latest = ledger.latest_version()
    for rel, t in (store.find_times(P.data_dir(ledger.resource)) if deltas else {}).items():
        version = P.data_file_version(rel)
        if version is None or t is None or not P.is_commit_part(rel):
            continue
        entry = ledger.read_entry(version) if version <= latest else None
        if entry is None:
            if now - t >= GRACE_S:
                old.add(rel)  # the bug: its writer may still commit this version
        elif rel not in entry.parts():
            old.add(rel)
    store.delete(sorted(old))
    return len(old)


def _cleanup_by_age(machine_clock: bool) -> Callable[[Field, State], None]:
    def finish(c: Field, st: State) -> None:
        """Compaction's clean-up before 1905d19: uncommitted ``c-`` output goes once an hour old."""
        from ecanalytics import _runtime
        from ecanalytics.ledger.maintenance_records import CompactionState

        store = c.ledger.store
        info = st.compaction.get(c.field, CompactionState())
        for key in list(info.replaced):
            c.ledger.fault_point("compaction_delete")
            store.delete([key])
        committed = set(info.tokens)
        if machine_clock:
            now: float | None = _runtime.time_ns() / 1e9  # the sweeping machine's clock (simulated, skewed)
        else:
            now = store.store_now(f"{c.dataset}/_sweep/.now")
        if now is None:
            return
        found = store.find_times(c.dataset)
        for key in sorted(found):
            name = key.rsplit("/", 1)[-1]
            t = found[key]
            if name.startswith("c-") and name.endswith(".parquet") and t is not None:
                token = name.split("-")[1]
                if token not in committed and now - t > GRACE_S:
                    store.delete([key])  # the bug: its run may still commit it

    return finish


def _read_history_skipping(store: Store, keys: Sequence[str], value_dtype: pl.DataType | None = None, *,
                           pending: Collection[str] = ()) -> pl.DataFrame:
    """``read_history`` before 1905d19: a missing object reads as no rows (the real reader,
    asked again without each object it reports missing)."""
    from ecanalytics.errors import MissingObjectError

    keys = list(keys)
    while True:
        try:
            result: pl.DataFrame = _ORIGINAL["read_history"](store, keys, value_dtype, pending=pending)
            return result
        except MissingObjectError as exc:  # the bug: a missing applied object is "no rows"
            keys = [k for k in keys if store.url(k) != exc.key]


def _catalog_overwrite(store: Store, resource: str, change: Callable[[cat.Entry], cat.Entry], *,
                       max_attempts: int = 100) -> cat.Entry | None:
    """``catalog.update`` before 0513267: read the latest entry, change it, overwrite it in place."""
    version, entry = cat._read_latest(store, resource)
    if entry is None:
        return None
    new = change(copy.deepcopy(entry))
    if new == entry:
        return entry
    store.write(P.catalog_version(resource, version), json.dumps(new, indent=2).encode())
    return new


def _trusting_scan(self: Field, st: State, *, cleanup: bool) -> tuple[
        Inbox, frozenset[str], tuple[str, ...], frozenset[str], list[str]]:
    """``Field._scan`` trusting deletes: a consumed key whose marker delete returned
    without an error leaves the consumed set at once (no LIST has shown it gone)."""
    inbox = tx.Inbox.scan(self.store, self.dataset)
    consumed = st.consumed.get(self.field, frozenset())
    listed = frozenset(k for k in consumed if k in inbox.markers)
    unlisted = st.unlisted.get(self.field, frozenset()) - listed
    stale = tuple(inbox.markers[k] for k in sorted(listed))
    trusted: set[str] = set()
    if cleanup and stale:
        failed = set(self.store.delete(list(stale)))
        trusted = {k for k in listed if inbox.markers[k] not in failed}  # the bug: "it said deleted"
    carried = (listed - trusted) | (unlisted & consumed)
    candidates = sorted(k for k in inbox.markers if k not in consumed)
    return inbox, carried, stale, unlisted & consumed, candidates


_ORIGINAL: dict[str, Any] = {"read_history": tx.read_history}
Patch = tuple[str, str, Callable[[], Any]]  # (module, attribute, the replacement's factory)
INJECTIONS: dict[str, tuple[str, list[Patch]]] = {
    "bug1": ("sweep deletes an unnamed delta older than 1 h although its version is free", [
        ("ecanalytics.consolidation.cluster", "sweep", lambda: _sweep_by_age),
        ("ecanalytics.maintenance.compaction", "sweep", lambda: _sweep_by_age)]),
    "bug2": ("compaction deletes uncommitted c- output older than 1 h (store clock)", [
        ("ecanalytics.maintenance.compaction", "_finish_compaction", lambda: _cleanup_by_age(False))]),
    "bug2-clock": ("compaction deletes uncommitted c- output older than 1 h by the machine's clock", [
        ("ecanalytics.maintenance.compaction", "_finish_compaction", lambda: _cleanup_by_age(True))]),
    "bug3": ("history readers skip a missing applied object", [
        ("*", "read_history", lambda: _read_history_skipping)]),
    "bug4": ("catalog changes read-modify-overwrite the latest entry", [
        ("ecanalytics.ledger.catalog", "update", lambda: _catalog_overwrite)]),
    "trusted-delete": ("a consumed key leaves the consumed set once its marker delete returned", [
        ("ecanalytics.consolidation.field", "Field._scan", lambda: _trusting_scan)]),
}
ALIASES = {"sweep-by-age": "bug1", "compaction-cleanup-by-age": "bug2", "history-skips-missing": "bug3",
           "catalog-overwrite": "bug4", "bug5": "trusted-delete"}


def names() -> list[str]:
    return [*INJECTIONS, *ALIASES]


@contextlib.contextmanager
def injected(name: str | None) -> Iterator[None]:
    """Patch the library with injection ``name`` (None: nothing) for the duration of the block."""
    if name is None:
        yield
        return
    name = ALIASES.get(name, name)
    if name not in INJECTIONS:
        raise ValueError(f"unknown injection {name!r}; use one of {names()}")
    # Load every module first: one imported during the run (or while the patches go in) would bind
    # a patched name for good (``from ... import sweep``), and the restore would keep the patch.
    import ecanalytics

    for info in pkgutil.walk_packages(ecanalytics.__path__, "ecanalytics."):
        importlib.import_module(info.name)
    saved: list[tuple[Any, str, Any]] = []
    try:
        for module_name, attribute, factory in INJECTIONS[name][1]:
            replacement = factory()
            if module_name == "*":  # every module that imported the name
                original = _ORIGINAL[attribute]
                targets = [m for n, m in list(sys.modules.items())
                           if n.startswith("ecanalytics") and getattr(m, attribute, None) is original]
            else:
                targets = [importlib.import_module(module_name)]
            for target in targets:
                owner, _, attr = attribute.rpartition(".")
                obj = getattr(target, owner) if owner else target
                saved.append((obj, attr, obj.__dict__[attr]))
                setattr(obj, attr, replacement)
        yield
    finally:
        for obj, attr, original in reversed(saved):
            setattr(obj, attr, original)
