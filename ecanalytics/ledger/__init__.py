"""The ledger: schemas, transaction objects, and the versioned commit log."""

from ecanalytics.ledger.log import Ledger, new_tx_id
from ecanalytics.ledger.schema import Attribute, Schema
from ecanalytics.ledger.state import Commit, State

__all__ = ["Attribute", "Commit", "Ledger", "Schema", "State", "new_tx_id"]
