"""Vocabularies shared across the package."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeGuard

Operation = Literal["set", "add", "sub"]
Mode = Literal["sync", "async"]
BuiltinReducer = Literal["default", "sum", "max", "min", "last"]
PythonReducer = Callable[[list[dict[str, Any]]], float]
Record = Mapping[str, Any]
OPERATIONS: tuple[Operation, ...] = ("set", "add", "sub")
MAX_INT64 = 2**63 - 1


def is_positive_int(value: object, maximum: int = MAX_INT64) -> TypeGuard[int]:
    """The one rule for counts a caller passes (batch sizes, limits, days, intervals): an ``int``
    (not a ``bool``, not a string such as ``"10"``) from 1 to ``maximum``."""
    return not isinstance(value, bool) and isinstance(value, int) and 1 <= value <= maximum
