"""The one exception hierarchy of ecanalytics.

Every error raised on purpose derives from :class:`EcError`. Two kinds sit below it:
:class:`TransientError` (retrying later may succeed) and :class:`TerminalError` (fix the input or
the configuration first). Where a built-in exception has the same meaning, the error also derives
from it (``ValueError`` for bad input, ``KeyError`` for a missing record, ``OSError`` for storage), so
existing ``except`` clauses keep working.
"""

from __future__ import annotations


class EcError(Exception):
    """Root of every ecanalytics error."""


class TransientError(EcError):
    """A failure that may succeed when retried (throttling, a lost commit race, a timeout)."""


class TerminalError(EcError):
    """A failure that retrying will not fix: change the input or the configuration."""


class ValidationError(TerminalError, ValueError):
    """Input was rejected before anything was written."""


class ArgumentError(ValidationError, TypeError):
    """A call has the wrong shape (e.g. ``add(id)`` without an amount)."""


class InvalidValueError(ValidationError):
    """An amount is not a finite number (NaN, infinity, a string, a bool, None...)."""


class InvalidNameError(ValidationError):
    """A resource, field or record id cannot be used (empty, path-like, reserved)."""


class InvalidTimezoneError(ValidationError):
    """The cohort time zone is not a known IANA zone."""


class UnknownFieldError(ValidationError):
    """The field is not managed by any plugin of this resource."""


class FieldRequiredError(ValidationError):
    """Several fields are managed, so the call must name one."""


class SchemaError(ValidationError):
    """An attribute definition or a record does not fit the resource schema."""


class RecordExistsError(ValidationError):
    """``insert`` was given an id that already exists."""


class _KeyLikeError(TerminalError, KeyError):
    # KeyError.__str__ quotes its argument; keep the readable message.
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RecordNotFoundError(_KeyLikeError):
    """No record has this id."""


class UnknownResourceError(_KeyLikeError):
    """No resource or transaction dataset has this name."""


class ResourceExistsError(ValidationError):
    """A resource with this name exists with a different schema."""


class SchemaEvolutionError(SchemaError, ResourceExistsError):
    """A change to a resource's attributes that stored data could not follow (a type change, a
    removed attribute, one made required without a default) was refused; nothing was written."""


class StaleSchemaError(TransientError):
    """Stored records carry attributes this process's schema does not know: another process added
    them. Reconnect (``ec.connect``) to read them."""


class ConfigurationError(TerminalError):
    """A plugin or database option is inconsistent."""


class InvalidUriError(ConfigurationError, ValueError):
    """A database URI is malformed (``s3:/bucket`` with one slash, an unknown scheme, a bad bucket
    name, a relative ``file:`` URI); the message says what was probably meant."""


class MalformedFileError(ValidationError):
    """A file given to ``ecanalytics ingest`` cannot be read as transactions; the message names
    the file and its first bad row (and line, for CSV and NDJSON). Nothing was written."""


class ReducerRequiredError(ConfigurationError):
    """The field was configured with a custom Python reducer that must be passed again."""


class ConsolidationError(TerminalError):
    """A reducer failed or returned something that is not a finite number.

    ``record_id`` names the record when the failure is one record's: consolidation then holds that
    record's transactions back and commits the others.
    """

    def __init__(self, message: str, *, record_id: str | None = None) -> None:
        super().__init__(message)
        self.record_id = record_id


class TransactionHeldError(ConsolidationError):
    """A sync write is stored but held, not committed: its record cannot be folded yet (it does not
    exist and has required attributes without defaults, or its value would overflow). It is not
    lost: it is applied by the consolidation after the cause goes away."""


class KeyConflictError(ConsolidationError):
    """A sync write's caller-supplied id was already used for another record, operation or amount:
    the write is stored but never applied (a key means one transaction); ``reason`` says what
    differs (``exists_with_different_record``, ``…_operation``, ``…_amount``). Send a new id for a
    new transaction."""

    def __init__(self, message: str, *, record_id: str | None = None, reason: str = "") -> None:
        super().__init__(message, record_id=record_id)
        self.reason = reason


class ConsolidationFailedError(EcError):
    """Some fields failed to consolidate; the others committed. ``results`` holds the outcomes of
    the fields that succeeded, ``failures`` maps ``"resource.field"`` to the exception."""

    def __init__(self, message: str, results: list[object], failures: dict[str, BaseException]) -> None:
        super().__init__(message)
        self.results = results
        self.failures = failures


class RootNotFoundError(TerminalError, FileNotFoundError):
    """The root holds no ecanalytics catalog (and ``create=False``), or its bucket does not exist."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StorageError(EcError, OSError):
    """The object store failed in a way ecanalytics could not hide."""


class CredentialsError(StorageError, TerminalError, PermissionError):
    """No usable S3 credentials were found (botocore's ``NoCredentialsError``, an unknown profile)."""


class EndpointUnreachableError(StorageError, TransientError, ConnectionError):
    """The S3 endpoint did not answer (wrong host or port, server down, no network)."""


class CorruptObjectError(StorageError, TerminalError):
    """A stored object cannot be decoded. Nothing was applied from it."""


class CommitConflictError(StorageError, TransientError):
    """Another writer kept winning the next log version; try again later."""


class MissingObjectError(CorruptObjectError, FileNotFoundError):
    """An object that the committed state names (the manifest of applied transaction objects, a
    delta, a checkpoint part) is gone. That is corruption, never "no rows": nothing is committed
    from a read that met it. ``key`` is the missing object's URL."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SnapshotGoneError(StorageError, TransientError, FileNotFoundError):
    """A query's files were replaced by maintenance (compaction, retention) while it ran, or
    after the relation was built: re-run the query, which then reads the current objects."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
