"""Vocabularies shared across the package."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

Operation = Literal["set", "add", "sub"]
Mode = Literal["sync", "async"]
BuiltinReducer = Literal["default", "sum", "max", "min", "last"]
PythonReducer = Callable[[list[dict[str, Any]]], float]
Record = Mapping[str, Any]
OPERATIONS: tuple[Operation, ...] = ("set", "add", "sub")
