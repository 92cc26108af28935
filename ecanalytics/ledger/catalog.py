"""The catalog: ``_catalog/{resource}.json`` holds a resource's schema and its plugin configs,
so that ``ec.connect(uri)`` in a fresh process reopens everything from the URI alone."""

from __future__ import annotations

import json
from typing import Any

from ecanalytics.errors import CorruptObjectError
from ecanalytics.storage import Store
from ecanalytics.storage import paths as P

FORMAT = 1


def read_all(store: Store) -> tuple[dict[str, dict[str, Any]], dict[str, CorruptObjectError]]:
    """Every readable catalog entry by resource name, and the error of every unreadable one: one
    broken entry must not keep the healthy resources of the root from opening."""
    out, broken = {}, {}
    for name in store.listdir(P.catalog_dir()):
        if name.endswith(".json"):
            try:
                entry = read(store, name.removesuffix(".json"))
            except CorruptObjectError as exc:
                broken[name.removesuffix(".json")] = exc
                continue
            if entry is not None and entry["name"] != name.removesuffix(".json"):
                broken[name.removesuffix(".json")] = CorruptObjectError(
                    f"Catalog entry {store.url(P.catalog_dir())}/{name} names the resource {entry['name']!r}, not "
                    f"{name.removesuffix('.json')!r}; restore it from a backup or rename it to match.")
            elif entry is not None:
                out[entry["name"]] = entry
    return out, broken


def read(store: Store, resource: str) -> dict[str, Any] | None:
    rel = P.catalog_entry(resource)
    try:
        raw = store.read(rel)
    except FileNotFoundError:
        return None
    try:
        entry: dict[str, Any] = json.loads(raw)
        if not isinstance(entry["name"], str) or not isinstance(entry["attributes"], dict) or not isinstance(
                entry.get("plugins", {}), dict):
            raise TypeError("name, attributes or plugins has the wrong type")
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptObjectError(
            f"Catalog entry {store.url(rel)} is unreadable ({type(exc).__name__}: {exc}); restore it from a "
            "backup, or delete it and create the resource again (its data and log stay where they are)."
        ) from exc
    return entry


def create(store: Store, resource: str, attributes: dict[str, str], buckets: int | None = None) -> dict[str, Any]:
    """Create the entry if absent; return whatever entry exists afterwards. ``buckets`` is the
    bucket count the resource starts with (its commit log is authoritative afterwards)."""
    entry: dict[str, Any] = {"format": FORMAT, "name": resource, "attributes": attributes, "plugins": {}}
    if buckets is not None:
        entry["buckets"] = buckets
    store.create(P.catalog_entry(resource), json.dumps(entry, indent=2).encode())
    current = read(store, resource)
    assert current is not None
    return current


def save_plugin(store: Store, resource: str, field: str, config: dict[str, Any]) -> None:
    entry = read(store, resource)
    if entry is None:
        return
    entry.setdefault("plugins", {})[field] = config
    store.write(P.catalog_entry(resource), json.dumps(entry, indent=2).encode())


def save_attributes(store: Store, resource: str, attributes: dict[str, str]) -> None:
    """Replace a resource's attributes (schema evolution; the caller checked the change)."""
    entry = read(store, resource)
    if entry is None:
        return
    entry["attributes"] = attributes
    store.write(P.catalog_entry(resource), json.dumps(entry, indent=2).encode())
