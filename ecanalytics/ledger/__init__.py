"""The ledger: schemas, transaction objects, and the versioned commit log."""

from ecanalytics.ledger.log import CommitProperties, Ledger, new_tx_id
from ecanalytics.ledger.schema import Attribute, Schema
from ecanalytics.ledger.state import Commit, State

__all__ = ["Attribute", "Commit", "CommitProperties", "Ledger", "Schema", "State", "new_tx_id"]
