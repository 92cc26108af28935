"""The catalog: a resource's schema and its plugin configs, so that ``ec.connect(uri)`` in a fresh
process reopens everything from the URI alone.

Changes are commits, never overwrites: the entry starts as ``_catalog/{resource}.json`` (version
0) and every change creates the next version ``_catalog/{resource}.v{N:09d}.json`` only if absent
(S3 ``If-None-Match: *``, ``O_EXCL`` locally). A change that loses the race to a concurrent one is
applied again on top of the winner's version (:func:`update`), so two processes adding attributes
or plugins to one resource both keep their change. Readers take the highest version (one LIST of
``_catalog/``, which every ``connect`` makes anyway). Resource names cannot hold ``.``, so the
version suffix never collides with a name.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

from ecanalytics import _runtime
from ecanalytics.errors import CommitConflictError, CorruptObjectError
from ecanalytics.storage import Store
from ecanalytics.storage import paths as P

FORMAT = 1
Entry = dict[str, Any]


def _parse_name(name: str) -> tuple[str, int] | None:
    """``wallets.json`` -> ("wallets", 0); ``wallets.v000000003.json`` -> ("wallets", 3)."""
    if not name.endswith(".json"):
        return None
    stem = name.removesuffix(".json")
    base, _, suffix = stem.partition(".")
    if not suffix:
        return base, 0
    if len(suffix) == 10 and suffix[0] == "v" and suffix[1:].isdigit():
        return base, int(suffix[1:])
    return None


def _versions(store: Store) -> dict[str, int]:
    """The latest catalog version of every resource (one LIST)."""
    latest: dict[str, int] = {}
    for name in store.listdir(P.catalog_dir()):
        parsed = _parse_name(name)
        if parsed is not None:
            latest[parsed[0]] = max(latest.get(parsed[0], -1), parsed[1])
    return latest


def read_all(store: Store) -> tuple[dict[str, Entry], dict[str, CorruptObjectError]]:
    """Every readable catalog entry by resource name, and the error of every unreadable one: one
    broken entry must not keep the healthy resources of the root from opening."""
    out, broken = {}, {}
    for name, version in sorted(_versions(store).items()):
        try:
            entry = _read_version(store, name, version)
        except CorruptObjectError as exc:
            broken[name] = exc
            continue
        if entry is not None and entry["name"] != name:
            broken[name] = CorruptObjectError(
                f"Catalog entry {store.url(P.catalog_version(name, version))} names the resource {entry['name']!r}, not "
                f"{name!r}; restore it from a backup or rename it to match.")
        elif entry is not None:
            out[entry["name"]] = entry
    return out, broken


def read(store: Store, resource: str) -> Entry | None:
    """The latest catalog entry of ``resource``, or None."""
    return _read_latest(store, resource)[1]


def _read_latest(store: Store, resource: str) -> tuple[int, Entry | None]:
    version = _versions(store).get(resource)
    if version is None:
        return -1, None
    return version, _read_version(store, resource, version)


def _read_version(store: Store, resource: str, version: int) -> Entry | None:
    rel = P.catalog_version(resource, version)
    try:
        raw = store.read(rel)
    except FileNotFoundError:
        return None
    try:
        entry: Entry = json.loads(raw)
        if not isinstance(entry["name"], str) or not isinstance(entry["attributes"], dict) or not isinstance(
                entry.get("plugins", {}), dict):
            raise TypeError("name, attributes or plugins has the wrong type")
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObjectError(
            f"Catalog entry {store.url(rel)} is unreadable ({type(exc).__name__}: {exc}); restore it from a "
            "backup, or delete it and create the resource again (its data and log stay where they are)."
        ) from exc
    return entry


def create(store: Store, resource: str, attributes: dict[str, str], buckets: int | None = None) -> Entry:
    """Create the entry if absent; return whatever entry is the latest afterwards. ``buckets`` is
    the bucket count the resource starts with (its commit log is authoritative afterwards)."""
    entry: Entry = {"format": FORMAT, "name": resource, "attributes": attributes, "plugins": {}}
    if buckets is not None:
        entry["buckets"] = buckets
    store.create(P.catalog_version(resource, 0), json.dumps(entry, indent=2).encode())
    current = read(store, resource)
    assert current is not None
    return current


def update(store: Store, resource: str, change: Callable[[Entry], Entry], *, max_attempts: int = 100) -> Entry | None:
    """Apply ``change`` to the latest entry and commit it as the next version; on a lost race,
    apply it again to the winner's entry. ``change`` gets a copy and may raise to refuse (nothing
    is written then). Returns the entry that is now the latest (None if the resource has none)."""
    for attempt in range(max_attempts):
        version, entry = _read_latest(store, resource)
        if entry is None:
            return None
        new = change(copy.deepcopy(entry))
        if new == entry:
            return entry
        if store.create(P.catalog_version(resource, version + 1), json.dumps(new, indent=2).encode()):
            return new
        _runtime.backoff(attempt, 0.002, 0.2)
    raise CommitConflictError(f"Gave up changing the catalog of {resource!r} after {max_attempts} lost races; retry.")


def save_plugin(store: Store, resource: str, field: str, config: dict[str, Any]) -> None:
    """Store the config of ``resource``'s plugin for ``field`` (a commit; see :func:`update`)."""
    def change(entry: Entry) -> Entry:
        entry.setdefault("plugins", {})[field] = config
        return entry

    update(store, resource, change)
