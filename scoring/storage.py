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

from fleetscore.errors import ConfigError, StorageError, one_line

log = logging.getLogger(__name__)

AZURE_PROTOCOLS = ("az", "abfs", "abfss")
DEFAULT_TIMEOUT_S = 60.0  # [scoring] storage_timeout


@dataclass(frozen=True)
class StorageSpec:
    """Where predictions go, as plain picklable data a worker can reopen: URL + adlfs options."""

    url: str
    options: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = DEFAULT_TIMEOUT_S  # the deadline of each call to the storage service

    def open(self) -> Storage:
        """Open the storage this spec names."""
        return Storage(self.url, self.options, self.timeout_s)

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
        # object_store's own deadlines: per request, and for all the retries of one request
        seconds = f"{max(int(self.timeout_s), 1)}s"
        options.update({"timeout": seconds, "connect_timeout": seconds, "retry_timeout": seconds})
        return uri, options


def storage_spec(url: str, account_name: str = "", connection_string: str = "",
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> StorageSpec:
    """Build a :class:`StorageSpec`; empty credentials are left out so adlfs falls back to its env vars."""
    options = {}
    if account_name:
        options["account_name"] = account_name
    if connection_string:
        options["connection_string"] = connection_string
    return StorageSpec(url, options, timeout_s)


class Storage:
    """A storage root (folder or container/prefix) with the few operations the writer needs."""

    def __init__(self, url: str, options: Mapping[str, str] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.timeout_s = timeout_s
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

    def _op(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``fs.<name>(*args, **kwargs)``; on an async file system (adlfs) its coroutine within the
        deadline: past it ``FSTimeoutError``, not a wait through the SDK's retries (85 s against a
        refused port, then a silent "assume the container exists")."""
        if not getattr(self.fs, "async_impl", False):
            return getattr(self.fs, name)(*args, **kwargs)
        from fsspec.asyn import sync

        return sync(self.fs.loop, getattr(self.fs, f"_{name}"), *args, timeout=self.timeout_s, **kwargs)

    def _why(self, exc: BaseException) -> str:
        from fsspec.exceptions import FSTimeoutError

        if isinstance(exc, FSTimeoutError):
            return f"the storage service did not answer within {self.timeout_s:g} s ([scoring] storage_timeout)"
        return one_line(exc, with_type=True)

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
                if not self._op("exists", container):
                    self._op("mkdir", container)
        except Exception as exc:
            reason = self._why(exc)
            raise StorageError(f"{self.display()}: cannot create storage root: {reason}") from exc

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
                self._op("pipe_file", target, data)
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: write failed: {self._why(exc)}") from exc

    def read_bytes(self, rel: str) -> bytes:
        """The content of ``rel``; :class:`StorageError` when it is missing or unreadable."""
        try:
            data: bytes = self._op("cat_file", self.path(rel))
        except FileNotFoundError as exc:
            raise StorageError(f"{self.display(rel)}: not found") from exc
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: read failed: {self._why(exc)}") from exc
        return data

    def exists(self, rel: str) -> bool:
        """Whether a file exists at ``rel``."""
        try:
            self.fs.invalidate_cache()
            # info, not isfile: adlfs' isfile answers False when the service does not answer
            return bool(self._op("info", self.path(rel))["type"] == "file")
        except FileNotFoundError:
            return False
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot check: {self._why(exc)}") from exc

    def listdir(self, rel: str) -> list[str]:
        """Names (not paths) of the entries directly under ``rel``, sorted; [] when it does not exist.

        Temporary files of in-flight local writes are left out.
        """
        base = self.path(rel)
        try:
            self.fs.invalidate_cache()
            entries = self._op("ls", base, detail=False)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot list: {self._why(exc)}") from exc
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
                self._op("cp_file", source, target)  # a blob is moved as copy then delete
                self._op("rm_file", source)
        except FileNotFoundError as exc:
            if not self.exists(dst):
                raise StorageError(f"{self.display(src)}: not found (nor {self.display(dst)})") from exc
        except Exception as exc:
            if self.exists(dst) and not self.exists(src):
                return
            reason = self._why(exc)
            raise StorageError(f"{self.display(src)}: cannot move to {self.display(dst)}: {reason}") from exc

    def remove(self, rel: str) -> None:
        """Delete the file ``rel``; nothing if it is absent."""
        try:
            self._op("rm_file", self.path(rel))
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot remove: {self._why(exc)}") from exc

    def remove_tree(self, rel: str) -> None:
        """Delete the folder (or blob prefix) ``rel`` and everything under it; nothing if it is absent."""
        try:
            if self._op("exists", self.path(rel)):
                self._op("rm", self.path(rel), recursive=True)
        except FileNotFoundError:
            return
        except Exception as exc:
            raise StorageError(f"{self.display(rel)}: cannot remove: {self._why(exc)}") from exc

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
