"""Maintenance jobs on one managed field's core (its :class:`~ecanalytics.consolidation.Field`
and ledger): recalculation, event-time travel, retention, compaction and verification. They sit below the API
(``Resource`` calls them) and above consolidation."""

from ecanalytics.maintenance.compaction import CompactionResult, compact
from ecanalytics.maintenance.history import RecalculationResult, field_history, recalculate, records_at_events
from ecanalytics.maintenance.retention import RetentionResult, retain
from ecanalytics.maintenance.verify import Problem, verify

__all__ = ["CompactionResult", "Problem", "RecalculationResult", "RetentionResult", "compact", "field_history",
           "recalculate", "records_at_events", "retain", "verify"]
