"""Consolidation: reducers and the exactly-once fold of pending transactions."""

from ecanalytics.consolidation.consolidator import ConsolidationResult, Consolidator
from ecanalytics.consolidation.field import Field
from ecanalytics.consolidation.reducers import BUILTIN_REDUCERS, Reducer, python_reference

__all__ = ["BUILTIN_REDUCERS", "ConsolidationResult", "Consolidator", "Field", "Reducer", "python_reference"]
