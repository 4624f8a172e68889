"""Split a fleet into shards of devices: deterministic, balanced, each shard sorted."""

from __future__ import annotations

from collections.abc import Sequence


def shard_devices(devices: Sequence[str], n_shards: int) -> list[list[str]]:
    """Split ``devices`` into ``n_shards`` lists whose sizes differ by at most one.

    The devices are de-duplicated and sorted first, then dealt out in contiguous runs, so the result
    depends only on the set of devices and ``n_shards`` (not on their order), every shard is sorted
    and the shards are in order. Never returns more shards than devices; no devices -> ``[]``.
    """
    if n_shards < 1:
        raise ValueError(f"n_shards must be at least 1, got {n_shards}")
    unique = sorted({str(d) for d in devices})
    if not unique:
        return []
    n = min(n_shards, len(unique))
    size, extra = divmod(len(unique), n)
    shards: list[list[str]] = []
    start = 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        shards.append(unique[start:stop])
        start = stop
    return shards
