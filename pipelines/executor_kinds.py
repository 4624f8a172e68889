"""Where shards run: one small interface (:class:`Executor`) and one class per kind of executor.

An executor says how many shards it runs at once (its capacity) and whether its workers see this
machine's disk. The run's shard count follows from the fleet's size, ``[scoring] series_per_shard`` and
that capacity (:func:`shard_count`), never from the cores of the machine the command runs on. An
executor whose workers do not share the client's disk refuses, before anything runs, the settings that
only make sense on this machine (:func:`refuse_local_only`): a relative SQLite path, a local storage
folder, a local MLflow store.

Workers take their credentials from their own environment (``PGPASSWORD``,
``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_NAME`` + ``DefaultAzureCredential``): no
secret travels inside a task (:func:`without_password`, :meth:`Executor.task_storage_options`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from fleetscore.errors import ConfigError
from fleetscore.ingestion.timeutil import parse_duration
from fleetscore.pipelines.executors import dask_capacity, default_workers
from fleetscore.pipelines.settings import Settings


class Executor(Protocol):
    """What the scoring and release pipelines need to know about where shards run."""

    @property
    def name(self) -> str:
        """The executor as the ``executor`` setting spells it (``local``, ``dask://HOST:PORT``, ``azureml``)."""

    @property
    def shares_disk(self) -> bool:
        """Whether the workers read and write this machine's files (local paths reach them)."""

    def capacity(self) -> int:
        """How many shards run at once."""

    def check_settings(self, settings: Settings) -> None:
        """Raise :class:`ConfigError` naming the first setting these workers cannot use."""


@dataclass(frozen=True)
class LocalExecutor:
    """Processes on this machine (``workers`` of them; 0 = one per core this process may use)."""

    workers: int = 0
    name: str = "local"

    @property
    def shares_disk(self) -> bool:
        """Local processes see this machine's disk."""
        return True

    def capacity(self) -> int:
        """One shard per worker process."""
        return self.workers or default_workers()

    def check_settings(self, settings: Settings) -> None:
        """Every setting works locally."""


@dataclass(frozen=True)
class DaskExecutor:
    """An existing Dask cluster (``dask://HOST:PORT``): capacity is the cluster's worker threads."""

    name: str
    shared_disk: bool = False  # the ``shared_disk`` setting: workers on this machine or a shared filesystem

    @property
    def shares_disk(self) -> bool:
        """Only when the ``shared_disk`` setting says so (a LocalCluster, a shared filesystem)."""
        return self.shared_disk

    def capacity(self) -> int:
        """The worker threads the scheduler reports now (asked with a deadline)."""
        return dask_capacity(self.name)

    def check_settings(self, settings: Settings) -> None:
        """Refuse the settings that point at this machine."""
        refuse_local_only(settings, self.name, self.shared_disk)


@dataclass(frozen=True)
class AzureMLExecutor:
    """An Azure ML compute cluster: up to ``max_nodes`` nodes, ``processes_per_node`` shards on each."""

    max_nodes: int
    processes_per_node: int = 1
    name: str = "azureml"

    @property
    def shares_disk(self) -> bool:
        """Cluster nodes never see the client's disk."""
        return False

    def capacity(self) -> int:
        """Every process of every node the cluster may scale to."""
        return max(1, self.max_nodes) * max(1, self.processes_per_node)

    def check_settings(self, settings: Settings) -> None:
        """Refuse the settings that point at this machine."""
        refuse_local_only(settings, self.name, shared_disk=False)


def executor_for(settings: Settings, executor: str | None = None) -> Executor:
    """The :class:`Executor` named by ``executor`` (default: the ``executor`` setting)."""
    name = executor or settings.executor
    if name == "local":
        return LocalExecutor(settings.workers)
    if name.startswith("dask://"):
        return DaskExecutor(name, settings.shared_disk)
    if name == "azureml":
        return AzureMLExecutor(settings.azureml.max_nodes, settings.azureml.processes_per_node)
    raise ConfigError(f"executor: expected 'local', 'dask://HOST:PORT' or 'azureml', got {name!r}")


def shard_count(series: int, devices: int, series_per_shard: int, capacity: int, requested: int = 0) -> int:
    """How many shards a run of ``series`` series over ``devices`` devices is cut into.

    ``requested`` (``--shards`` or ``[scoring] shards``) wins when set. Otherwise enough shards that none
    holds more than ``series_per_shard`` series, and at least one per unit of capacity so that every
    worker has one; never more shards than devices (a device is never split).
    """
    if devices <= 0:
        return 1
    if requested > 0:
        return max(1, min(requested, devices))
    if series_per_shard <= 0:
        raise ConfigError(f"scoring.series_per_shard: expected a positive number, got {series_per_shard}")
    wanted = max(math.ceil(series / series_per_shard), capacity, 1)
    return min(wanted, devices)


def seconds(text: str, name: str) -> float:
    """A duration setting (``"60s"``, ``"2h"``) in seconds; ``name`` names the setting in the error."""
    return parse_duration(text, name).total_seconds()


def is_local_url(url: str) -> bool:
    """Whether a storage or tracking URL names a path on this machine (a folder, ``file:``, SQLite)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    return scheme in ("", "file") or scheme.startswith("sqlite") or url.startswith("file:")


def _sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL ('' = in memory), or None when the URL is not SQLite."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("sqlite"):
        return None
    return rest[1:].split("?", 1)[0] if rest.startswith("/") else rest.split("?", 1)[0]


def refuse_local_only(settings: Settings, executor: str, shared_disk: bool) -> None:
    """Raise :class:`ConfigError` naming the first setting that workers of ``executor`` cannot reach.

    Refused always: a SQLite database with a relative path or in memory (each worker would open its
    own, empty one). Refused unless the workers share this machine's disk: any SQLite database, a local
    storage folder, a local MLflow store.
    """
    db = _sqlite_path(settings.database_url)
    if db is not None and (not db or not db.startswith("/") or not shared_disk):
        raise ConfigError(
            f"database_url {settings.database_url}: a {'local' if db.startswith('/') else 'relative'} SQLite "
            f"database cannot be reached by the workers of {executor}; use a database server (postgresql://...)")
    if not shared_disk and is_local_url(settings.storage_url):
        raise ConfigError(f"storage_url {settings.storage_url}: a local folder cannot be reached by the workers "
                          f"of {executor}; use blob storage (az://CONTAINER/PREFIX)")
    if not shared_disk and is_local_url(settings.tracking_uri):
        raise ConfigError(f"tracking_uri {settings.tracking_uri}: a local MLflow store cannot be reached by the "
                          f"workers of {executor}; use an MLflow server (http://...) or an Azure ML workspace")


def without_password(url: str) -> str:
    """``url`` with its password removed: the worker's driver takes it from its own environment
    (``PGPASSWORD`` for PostgreSQL)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username}@{host}" if parts.username else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def task_storage_options(options: Mapping[str, str], executor: Executor) -> dict[str, str]:
    """The storage options a task may carry: on a remote executor none of the secrets (connection
    string, keys, SAS tokens); the workers' own environment or managed identity supplies them."""
    if isinstance(executor, LocalExecutor):
        return dict(options)
    secret = ("connection_string", "account_key", "sas_token", "credential", "client_secret")
    return {k: v for k, v in options.items() if k not in secret}
