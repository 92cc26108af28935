"""ecanalytics: eventually consistent numeric fields with their full history on object storage.

Example:
    >>> import ecanalytics as ec
    >>> db = ec.connect("memory://init-doc")
    >>> _ = db.use_plugin(ec.EventualConsistencyPlugin(resource="wallets", field="balance", mode="sync",
    ...                                                auto_consolidate=False))
    >>> wallets = db.create_resource("wallets", {"id": "string|required", "balance": "number|default:0"})
    >>> wallets.add("w1", 5)
    5.0
    >>> db.close()
"""

from ecanalytics.consolidation import ConsolidationResult
from ecanalytics.database import Database, connect
from ecanalytics.errors import (
    ArgumentError,
    CommitConflictError,
    ConfigurationError,
    ConsolidationError,
    ConsolidationFailedError,
    CorruptObjectError,
    CredentialsError,
    EcError,
    EndpointUnreachableError,
    FieldRequiredError,
    InvalidNameError,
    InvalidTimezoneError,
    InvalidUriError,
    InvalidValueError,
    KeyConflictError,
    MalformedFileError,
    MissingObjectError,
    RecordExistsError,
    RecordNotFoundError,
    ReducerRequiredError,
    ResourceExistsError,
    RootNotFoundError,
    SchemaError,
    SchemaEvolutionError,
    SnapshotGoneError,
    StaleSchemaError,
    StorageError,
    TerminalError,
    TransactionHeldError,
    TransientError,
    UnknownFieldError,
    UnknownResourceError,
    ValidationError,
)
from ecanalytics.plugin import EventualConsistencyPlugin
from ecanalytics.resource import Resource, TransactionDataset

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # ``ec.reports`` imports DuckDB-facing code, so it is loaded on first use only.
    if name == "reports":
        import importlib

        return importlib.import_module("ecanalytics.reports")
    raise AttributeError(f"module 'ecanalytics' has no attribute {name!r}")


__all__ = [
    "ArgumentError",
    "CommitConflictError",
    "ConfigurationError",
    "ConsolidationError",
    "ConsolidationFailedError",
    "ConsolidationResult",
    "CorruptObjectError",
    "CredentialsError",
    "Database",
    "EcError",
    "EndpointUnreachableError",
    "EventualConsistencyPlugin",
    "FieldRequiredError",
    "InvalidNameError",
    "InvalidTimezoneError",
    "InvalidUriError",
    "InvalidValueError",
    "KeyConflictError",
    "MalformedFileError",
    "MissingObjectError",
    "RecordExistsError",
    "RecordNotFoundError",
    "ReducerRequiredError",
    "Resource",
    "ResourceExistsError",
    "RootNotFoundError",
    "SchemaError",
    "SchemaEvolutionError",
    "SnapshotGoneError",
    "StaleSchemaError",
    "StorageError",
    "TerminalError",
    "TransactionDataset",
    "TransactionHeldError",
    "TransientError",
    "UnknownFieldError",
    "UnknownResourceError",
    "ValidationError",
    "__version__",
    "connect",
    "reports",
]
