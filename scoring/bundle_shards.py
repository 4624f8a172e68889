"""A release bundle cut along a run's shards, so that a shard carries and loads only its own models.

A worker that cannot read the client's disk gets its models inside its task, as the files of a bundle
folder: only the models of its shard's devices, so a task's size and a worker's memory grow with the
shard, never with the fleet (the scheduler forwards each task once).
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def device_indices(bundle: Any) -> dict[str, list[int]]:
    """Per device, the indices of its models in ``bundle`` (in bundle order)."""
    indices: dict[str, list[int]] = defaultdict(list)
    for i, (device, _sensor) in enumerate(bundle.keys):
        indices[device].append(i)
    return indices


def shard_bundle_files(bundle: Any, shards: Sequence[Sequence[str]]) -> list[dict[str, bytes]]:
    """For each shard (a list of devices), the files of a bundle holding only those devices' models."""
    by_device = device_indices(bundle)
    out = []
    with tempfile.TemporaryDirectory(prefix="fleetscore-shard-bundles-") as tmp:
        for n, devices in enumerate(shards):
            folder = Path(tmp) / str(n)
            bundle.subset([i for d in devices for i in by_device.get(d, ())]).save(folder)
            out.append({p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()})
    return out
