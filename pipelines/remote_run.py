"""What a run does differently when its shards run on workers that are not this process's children.

- :func:`for_executor` rewrites the shard tasks: no secret inside (database password, storage keys:
  the workers take them from their environment or managed identity) and each shard's own models as
  bytes (:mod:`scoring.bundle_shards`), never the whole release, so a worker's memory and a task's
  size follow the shard (even where the workers could read the release's folder).
- :class:`Heartbeat` rewrites a small file under the run's folder while shards wait for the plan, so
  that a shard whose client was killed stops waiting instead of holding its worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from types import TracebackType
from typing import Any

from fleetscore.ingestion.timeutil import utcnow
from fleetscore.pipelines.executor_kinds import Executor, LocalExecutor, task_storage_options, without_password
from fleetscore.scoring.bundle_shards import shard_bundle_files
from fleetscore.scoring.shard import ShardTask
from fleetscore.scoring.storage import Storage, StorageSpec

log = logging.getLogger(__name__)

HEARTBEAT = "_heartbeat.json"


def for_executor(tasks: Sequence[ShardTask], executor: Executor, bundle: Any) -> list[ShardTask]:
    """``tasks`` as they may travel to ``executor``'s workers (unchanged for local processes)."""
    if isinstance(executor, LocalExecutor):
        return list(tasks)
    files = shard_bundle_files(bundle, [t.devices for t in tasks])
    out = []
    for task, own in zip(tasks, files, strict=True):
        spec = StorageSpec(task.storage.url, task_storage_options(task.storage.options, executor),
                           task.storage.timeout_s)
        out.append(replace(task, database_url=without_password(task.database_url), storage=spec,
                           bundle=own))
    return out


class Heartbeat:
    """Rewrite ``<prefix>/_heartbeat.json`` every ``every`` seconds until closed (a daemon thread)."""

    def __init__(self, storage: Storage, prefix: str, every: float) -> None:
        self.path = f"{prefix}/{HEARTBEAT}"
        self._storage, self._every = storage, every
        self._stop = threading.Event()
        self._count = 0
        self._beat()
        self._thread = threading.Thread(target=self._run, name="fleetscore-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self._count += 1
        self._storage.write_bytes(self.path, f'{{"beat": {self._count}, "at": "{utcnow().isoformat()}"}}'.encode())

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the shards allow several
                log.warning("heartbeat %s: %s", self.path, exc)

    def close(self) -> None:
        """Stop beating (the run's plan or abort marker is written, or the run is over)."""
        self._stop.set()
        self._thread.join(timeout=self._every + 5)

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
