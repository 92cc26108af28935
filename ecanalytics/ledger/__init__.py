"""The ledger: schemas, transaction objects, and the versioned commit log."""

from ecanalytics.ledger.log import Commit, Ledger, State, new_tx_id
from ecanalytics.ledger.schema import Attribute, Schema

__all__ = ["Attribute", "Commit", "Ledger", "Schema", "State", "new_tx_id"]
