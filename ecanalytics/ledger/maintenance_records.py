"""Typed records of what maintenance commits: a retention cut and a compaction.

They travel in log entries and checkpoints as JSON (``as_json``/``from_json``); in memory the
state and :class:`~ecanalytics.ledger.state.Commit` hold these types, never loose dicts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ecanalytics.errors import CorruptObjectError

RetentionMode = Literal["archive", "delete"]


def _strings(raw: Any, what: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(k, str) for k in raw):
        raise CorruptObjectError(f"The {what} of a maintenance record is not a list of object keys.")
    return tuple(raw)


@dataclass(frozen=True)
class RetentionCut:
    """A retention commit of one field: cohort days before ``cut`` were ``archived`` (the live keys
    moved, or deleted in ``delete`` mode); ``base`` holds every record's fold of them."""

    field: str
    cut: str  # ISO day
    base: str  # the base object (``originalId, current``)
    archived: tuple[str, ...]
    mode: RetentionMode
    # An earlier cut deleted history, so this one's base stands at the cut like a ``set`` in
    # ``archive`` mode too (a ``delete``-mode cut always does).
    stands: bool = False

    @property
    def complete(self) -> bool:
        """Whether the archive still holds every day before the cut (rebuilds read it)."""
        return self.mode == "archive" and not self.stands

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "cut": self.cut, "base": self.base, "archived": list(self.archived),
                "mode": self.mode, **({"stands": True} if self.stands else {})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RetentionCut:
        try:
            mode = raw["mode"]
            if mode not in ("archive", "delete"):
                raise ValueError(mode)
            return cls(str(raw["field"]), str(raw["cut"]), str(raw["base"]), _strings(raw["archived"], "archive list"),
                       mode, raw.get("stands") is True)
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptObjectError(f"An unreadable retention record ({type(exc).__name__}: {exc}).") from exc


@dataclass(frozen=True)
class CompactionRun:
    """A compaction commit of one field: ``merged`` objects (named with ``token``) replace ``replaced``."""

    field: str
    token: str
    merged: tuple[str, ...]
    replaced: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"field": self.field, "token": self.token, "merged": list(self.merged), "replaced": list(self.replaced)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CompactionRun:
        try:
            return cls(str(raw["field"]), str(raw["token"]), _strings(raw["merged"], "merged list"),
                       _strings(raw["replaced"], "replaced list"))
        except (KeyError, TypeError) as exc:
            raise CorruptObjectError(f"An unreadable compaction record ({type(exc).__name__}: {exc}).") from exc


@dataclass(frozen=True)
class CompactionState:
    """Per field: the tokens of committed compactions, and the sources the latest one replaced
    (which may not be deleted yet)."""

    tokens: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()

    def after(self, run: CompactionRun) -> CompactionState:
        return CompactionState((*self.tokens, run.token), run.replaced)

    def as_json(self) -> dict[str, Any]:
        return {"tokens": list(self.tokens), "replaced": list(self.replaced)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CompactionState:
        return cls(_strings(raw.get("tokens", []), "token list"), _strings(raw.get("replaced", []), "replaced list"))
