"""Blob storage through fsspec: a local folder or Azure Blob Storage (``az://container/prefix``, adlfs).

This is the only module that imports fsspec, adlfs or azure.storage. Everything above it deals in
paths relative to the storage root and bytes.

Atomicity: on a local folder a write goes to a temporary name in the same folder and is renamed into
place (``os.replace``), so a reader sees the old file or the whole new one. On Azure Blob Storage a
blob becomes visible only when its upload commits, so a plain put is already atomic.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleetscore.errors import ConfigError, StorageError

log = logging.getLogger(__name__)

AZURE_PROTOCOLS = ("az", "abfs", "abfss")


@dataclass(frozen=True)
class StorageSpec:
    """Where predictions go, as plain picklable data a worker can reopen: URL + adlfs options."""

    url: str
    options: Mapping[str, str] = field(default_factory=dict)

    def open(self) -> Storage:
        """Open the storage this spec names."""
        return Storage(self.url, self.options)

    def table_location(self, rel: str) -> tuple[str, dict[str, str]]:
        """The URI and delta-rs (object_store) storage options of the table at ``rel`` under the root.

        Derived from the same URL and credentials as the fsspec side: a local absolute path, or
        ``az://container/prefix/rel`` with the account name/key, SAS token or endpoint taken from the
        connection string (this spec's, else ``AZURE_STORAGE_CONNECTION_STRING``). With an account name
        alone, delta-rs uses its own credential chain (workload identity, managed identity, env vars).
        """
        protocol, sep, rest = self.url.partition("://")
        if not sep or protocol == "file":
            return os.path.join(os.path.abspath(rest if sep else self.url), rel), {}
        if protocol not in AZURE_PROTOCOLS:
            return f"{self.url.rstrip('/')}/{rel}", dict(self.options)
        uri = f"az://{rest.strip('/')}/{rel}"
        options: dict[str, str] = {}
        connection = self.options.get("connection_string") or os.environ.get("AZURE_STORAGE_CONNECTION_STRING", "")
        if connection:
            options.update(_object_store_options(connection))
        account = self.options.get("account_name")
        if account and "account_name" not in options:
            options["account_name"] = account
        return uri, options


def storage_spec(url: str, account_name: str = "", connection_string: str = "") -> StorageSpec:
    """Build a :class:`StorageSpec`; empty credentials are left out so adlfs falls back to its env vars."""
    options = {}
    if account_name:
        options["account_name"] = account_name
    if connection_string:
        options["connection_string"] = connection_string
    return StorageSpec(url, options)


class Storage:
    """A storage root (folder or container/prefix) with the few operations the writer needs."""

    def __init__(self, url: str, options: Mapping[str, str] | None = None) -> None:
        self.url = url
        protocol, sep, rest = url.partition("://")
        self.is_local = not sep or protocol == "file"
        try:
            if self.is_local:
                from fsspec.implementations.local import LocalFileSystem

                self.fs: Any = LocalFileSystem()
                self.root = os.path.abspath(rest if sep else url)
            elif protocol in AZURE_PROTOCOLS:
                from adlfs import AzureBlobFileSystem

                self.fs = AzureBlobFileSystem(**dict(options or {}))
                self.root = rest.strip("/")
                if not self.root:
                    raise ConfigError(f"storage_url {url}: expected az://CONTAINER[/PREFIX]")
            else:
                import fsspec

                self.fs = fsspec.filesystem(protocol, **dict(options or {}))
                self.root = rest.rstrip("/")
        except ImportError as exc:
            raise ConfigError(f"storage_url {url}: needs the 'azure' extra (pip install 'fleetscore[azure]')") from exc
        except ValueError as exc:
            raise ConfigError(f"storage_url {url}: {exc}") from exc

    def path(self, rel: str) -> str:
        """The full filesystem path of ``rel`` (a ``/``-separated path under the root)."""
        return f"{self.root}/{rel}".rstrip("/") if rel else self.root

    def display(self, rel: str = "") -> str:
        """A user-facing location: a local path, or ``az://container/prefix/rel``."""
        full = self.path(rel)
        return full if self.is_local else f"{self.url.partition('://')[0]}://{full}"

    def ensure_root(self) -> None:
        """Create the folder or the container if it does not exist."""
        try:
            if self.is_local:
                os.makedirs(self.root, exist_ok=True)
            else:
                container = self.root.split("/", 1)[0]
                if not self.fs.exists(container):
                    self.fs.mkdir(container)
        except Exception as exc:
            raise StorageError(f"{self.display()}: cannot create storage root: {_one_line(exc)}") from exc

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write ``data`` at ``rel`` atomically (readers see the old content or all of the new)."""
        target = self.path(rel)
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
                with open(tmp, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, target)
            else:
                self.fs.pipe_file(target, data)
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: write failed: {_one_line(exc)}") from exc

    def read_bytes(self, rel: str) -> bytes:
        """The content of ``rel``; :class:`StorageError` when it is missing or unreadable."""
        try:
            data: bytes = self.fs.cat_file(self.path(rel))
        except FileNotFoundError as exc:
            raise StorageError(f"{self.display(rel)}: not found") from exc
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: read failed: {_one_line(exc)}") from exc
        return data

    def exists(self, rel: str) -> bool:
        """Whether a file exists at ``rel``."""
        try:
            self.fs.invalidate_cache()
            return bool(self.fs.isfile(self.path(rel)))
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot check: {_one_line(exc)}") from exc

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) of the entries directly under ``rel``, sorted; [] when it does not exist.

        Temporary files of in-flight local writes are left out.
        """
        base = self.path(rel)
        try:
            self.fs.invalidate_cache()
            entries = self.fs.ls(base, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot list: {_one_line(exc)}") from exc
        names = {str(entry).rstrip("/").rsplit("/", 1)[-1] for entry in entries}
        return sorted(n for n in names if n and ".tmp-" not in n)

    def move(self, src: str, dst: str) -> None:
        """Move the file ``src`` to ``dst`` (a rename on a folder, copy then delete on Azure Blob Storage).

        Done already (``src`` gone, ``dst`` there) is not an error, so a retried commit can move again.
        """
        source, target = self.path(src), self.path(dst)
        try:
            if self.is_local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.replace(source, target)
            else:
                self.fs.mv(source, target)
        except FileNotFoundError as exc:
            if not self.exists(dst):
                raise StorageError(f"{self.display(src)}: not found (nor {self.display(dst)})") from exc
        except Exception as exc:
            if self.exists(dst) and not self.exists(src):
                return
            raise StorageError(f"{self.display(src)}: cannot move to {self.display(dst)}: {_one_line(exc)}") from exc

    def remove(self, rel: str) -> None:
        """Delete the file ``rel``; nothing if it is absent."""
        try:
            self.fs.rm_file(self.path(rel))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot remove: {_one_line(exc)}") from exc

    def remove_tree(self, rel: str) -> None:
        """Delete the folder (or blob prefix) ``rel`` and everything under it; nothing if it is absent."""
        try:
            if self.fs.exists(self.path(rel)):
                self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot remove: {_one_line(exc)}") from exc

    def open_read(self, rel: str) -> Any:
        """A binary file object for ``rel`` (for Parquet readers)."""
        try:
            return self.fs.open(self.path(rel), "rb")
        except FileNotFoundError as exc:
            raise StorageError(f"{self.display(rel)}: not found") from exc


def _object_store_options(connection_string: str) -> dict[str, str]:
    """An Azure Storage connection string as object_store options (delta-rs takes no connection string)."""
    parts = dict(item.split("=", 1) for item in connection_string.split(";") if "=" in item)
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        return {"azure_storage_use_emulator": "true"}
    options = {}
    for key, option in (("AccountName", "account_name"), ("AccountKey", "account_key"),
                        ("SharedAccessSignature", "sas_token"), ("BlobEndpoint", "endpoint")):
        if parts.get(key):
            options[option] = parts[key].rstrip("/")
    if options.get("endpoint", "").startswith("http://") or parts.get("DefaultEndpointsProtocol") == "http":
        options["allow_http"] = "true"
    return options


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
