"""A fake ``MLClient`` for the Azure ML tests: it keeps what was sent, answers ``get`` like the service.

Only the operations fleetscore uses exist, with the SDK's own signatures, and a missing entity raises the
SDK's own ``ResourceNotFoundError``. Computes and environments are stored as the service would hand them
back: dumped to YAML and loaded again with the SDK's loaders.
"""

from __future__ import annotations

import io
from typing import Any

from azure.ai.ml import load_compute, load_environment
from azure.core.exceptions import ResourceNotFoundError
from azure.core.polling import LROPoller, NoPolling, PollingMethod


def _poller(value: Any, polling: PollingMethod[Any] | None = None) -> LROPoller[Any]:
    """The SDK's own poller; by default one that is done at once, as a fast service would be."""
    return LROPoller(None, value, lambda response: response, polling or NoPolling())


def _roundtrip(entity: Any, loader: Any) -> Any:
    stream = io.StringIO()
    entity.dump(stream)
    return loader(io.StringIO(stream.getvalue()))


class _Operations:
    def __init__(self, kind: str, calls: list[tuple[str, str, str]], loader: Any = None) -> None:
        self.kind = kind
        self.calls = calls
        self.loader = loader
        self.items: dict[tuple[str, str], Any] = {}

    def get(self, name: str, version: str | None = None, label: str | None = None) -> Any:
        if label == "latest":
            versions = [v for (n, v) in self.items if n == name]
            if versions:
                return self.items[(name, versions[-1])]
        elif (name, str(version or "")) in self.items:
            return self.items[(name, str(version or ""))]
        raise ResourceNotFoundError(f"{self.kind} {name}:{version} not found")

    def _store(self, entity: Any) -> Any:
        stored = _roundtrip(entity, self.loader) if self.loader else entity
        version = str(getattr(entity, "version", "") or "") if self.kind in ("environments", "components") else ""
        self.items.pop((entity.name, version), None)
        self.items[(entity.name, version)] = stored
        self.calls.append((self.kind, entity.name, version))
        return stored

    def create_or_update(self, entity: Any, **kwargs: Any) -> Any:
        return self._store(entity)

    polling: PollingMethod[Any] | None = None  # set by a test: how the long-running operation goes

    def begin_create_or_update(self, entity: Any) -> LROPoller[Any]:
        return _poller(self._store(entity), self.polling)


class _Jobs:
    def __init__(self, calls: list[tuple[str, str, str]]) -> None:
        self.calls = calls
        self.submitted: list[tuple[Any, str | None]] = []

    def create_or_update(self, job: Any, *, experiment_name: str | None = None, **kwargs: Any) -> Any:
        self.submitted.append((job, experiment_name))
        self.calls.append(("jobs", job.name or "", experiment_name or ""))
        job.name = f"job-{len(self.submitted)}"
        return job


class FakeMLClient:
    """Records every write in ``calls`` as ``(kind, name, version)``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.compute = _Operations("compute", self.calls, load_compute)
        self.environments = _Operations("environments", self.calls, load_environment)
        self.components = _Operations("components", self.calls)
        self.schedules = _Operations("schedules", self.calls)
        self.jobs = _Jobs(self.calls)
