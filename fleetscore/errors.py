"""The exception hierarchy shared by every layer.

Every error that a user can cause or fix derives from :class:`FleetscoreError`; its message is one
line that names the file, row, device or setting concerned. The CLI prints that line and exits
non-zero; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class FleetscoreError(Exception):
    """Base of every error fleetscore raises on purpose. ``str(exc)`` is a one-line message."""

    exit_code = 1


class ConfigError(FleetscoreError):
    """A setting is missing, malformed or inconsistent."""

    exit_code = 2


class IngestError(FleetscoreError):
    """Readings could not be ingested."""


class SourceReadError(IngestError):
    """An input file cannot be read at all (missing, unreadable, unknown header)."""


class TooManyBadRowsError(IngestError):
    """The share of quarantined rows passed ``max_bad_fraction``."""


class StoreError(FleetscoreError):
    """The SQL store failed (connection, schema version, query)."""


class ValidationFailed(FleetscoreError):
    """The data-checks gate failed at fleet level: nothing may train or score on this data."""


class TrainingError(FleetscoreError):
    """Training could not produce a release."""


class RegistryError(FleetscoreError):
    """The model registry (MLflow) failed or holds no such version or alias."""


class ReleaseNotFound(RegistryError):
    """The requested release (version or alias) does not exist."""


class ScoringError(FleetscoreError):
    """A scoring run failed past its error threshold."""


class StorageError(FleetscoreError):
    """Blob storage (local folder or Azure Blob Storage) failed."""


class ScheduleError(FleetscoreError):
    """The schedule is missing or malformed, or a window is locked by another scheduler."""


class PublishError(FleetscoreError):
    """Publishing to Azure ML failed or its inputs are inconsistent."""


class EventNotFound(FleetscoreError):
    """An anomaly event id that is not in the events table."""


class NothingToRetrain(TrainingError):
    """A selective release (``release --only ...``) found no series to retrain."""


class AlertError(FleetscoreError):
    """An alert sink that cannot be set up (a missing endpoint or secret)."""


class ServiceUnavailable(FleetscoreError):
    """An outside service (Event Hubs, MLflow, blob storage, SQL, Azure ML) did not answer in time; the
    message names the service and the deadline. Never reported as missing data."""


class RegistryUnavailable(RegistryError, ServiceUnavailable):
    """The MLflow tracking server did not answer (never reported as a missing alias or version)."""


ONE_LINE_LIMIT = 300


def one_line(exc: BaseException | str, *, with_type: bool = False) -> str:
    """The first non-blank line of an exception's message, blanks collapsed, at most 300 characters.

    An exception with an empty message gives its class name; ``with_type`` prefixes the class name
    (``"ValueError: bad input"``) where the kind of failure is part of what the user needs to read.
    Pass a string (for example an SDK error's ``message`` attribute) to shorten that text instead.
    """
    text = exc if isinstance(exc, str) else str(exc)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    first = lines[0][:ONE_LINE_LIMIT] if lines else ""
    if isinstance(exc, str):
        return first
    if with_type:
        return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return first or type(exc).__name__
