"""Analytics: DuckDB views over the store, cohort statistics and rollups, SQL reports.

Importing this package imports DuckDB; ``import ecanalytics`` alone does not.
"""

from ecanalytics.analytics.engine import SqlEngine, Table
from ecanalytics.analytics.relation import Relation

__all__ = ["Relation", "SqlEngine", "Table"]
