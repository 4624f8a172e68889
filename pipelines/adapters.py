"""The adapters a command builds from its settings: here, the predictions storage.

Every part of a run that opens the predictions storage goes through :func:`storage_spec_for`, so the
storage account and connection string travel with the URL everywhere (shards, finalize, readers).
"""

from __future__ import annotations

from fleetscore.pipelines.settings import Settings
from fleetscore.scoring.storage import Storage, StorageSpec, storage_spec


def storage_spec_for(settings: Settings) -> StorageSpec:
    """The predictions storage of these settings as plain data (picklable: shards open it themselves)."""
    from fleetscore.ingestion.timeutil import parse_duration

    timeout = parse_duration(settings.scoring.storage_timeout, "scoring.storage_timeout").total_seconds()
    return storage_spec(settings.storage_url, settings.scoring.storage_account,
                        settings.scoring.storage_connection_string, timeout)


def storage_for(settings: Settings) -> Storage:
    """The predictions storage of these settings (folder or ``az://``), opened."""
    return storage_spec_for(settings).open()
