"""Maintenance jobs on one managed field's core (its :class:`~ecanalytics.consolidation.Consolidator`
and ledger): recalculation, event-time travel, retention and compaction. They sit below the API
(``Resource`` calls them) and above consolidation."""

from ecanalytics.maintenance.compaction import CompactionResult, compact
from ecanalytics.maintenance.history import RecalculationResult, field_history, recalculate, records_at_events
from ecanalytics.maintenance.retention import RetentionResult, retain

__all__ = ["CompactionResult", "RecalculationResult", "RetentionResult", "compact", "field_history", "recalculate",
           "records_at_events", "retain"]
