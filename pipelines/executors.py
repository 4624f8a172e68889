"""Executors: run one function over many shards, locally or on a Dask cluster.

The function and its arguments must be picklable (top-level functions, plain data). Results come back
in shard order. A shard that raises is returned as a :class:`ShardFailure` instead of stopping the
others; the caller decides whether the run fails.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from fleetscore.errors import ConfigError
from fleetscore.progress import ProgressCallback

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class ShardFailure:
    """A shard whose function raised: which one, the one-line error and the traceback."""

    shard: int
    error: str
    traceback: str


@dataclass(frozen=True)
class ShardResult:
    """What one shard returned, with its wall time in seconds."""

    shard: int
    value: Any
    seconds: float


def _timed_call(fn: Callable[..., Any], shard: int, args: tuple[Any, ...]) -> ShardResult | ShardFailure:
    start = time.perf_counter()
    try:
        value = fn(*args)
    except Exception as exc:  # noqa: BLE001 - a shard's failure is data for the caller
        return ShardFailure(shard, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return ShardResult(shard, value, time.perf_counter() - start)


# What the fork server imports once, so that the processes forked from it (the shards' workers and
# the data-checks gate) start with them loaded instead of importing them each (a second apiece).
FORKSERVER_PRELOAD = ["numpy", "pandas", "pyarrow", "sqlalchemy", "fleetscore.pipelines.executors",
                      "fleetscore.scoring.shard", "fleetscore.ingestion.store", "fleetscore.training.kernel",
                      "fleetscore.data_checks.gate"]


def _pool_context() -> multiprocessing.context.BaseContext:
    """Workers start from a fork server, never by forking this process: SQLite (and GX's and ADBC's
    connections) must not be carried into a child, which corrupts the database or loses writes. The
    server imports the heavy libraries once, so each worker still starts in milliseconds."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(FORKSERVER_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def start_worker_server() -> None:
    """Start the fork server now, so that it imports :data:`FORKSERVER_PRELOAD` while the caller goes on
    with its own start-up (the scoring command calls this first: its gate and workers then fork at once)."""
    if _pool_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def run_in_background(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future[Any]:
    """Start ``fn(*args, **kwargs)`` in a process of its own (from the fork server) and return its future.

    Never a fork of this process, for the reason in :func:`_pool_context`; the fork server has the
    heavy libraries loaded already.
    """
    pool = ProcessPoolExecutor(1, mp_context=_pool_context())
    future = pool.submit(fn, *args, **kwargs)
    pool.shutdown(wait=False)
    return future


def default_workers() -> int:
    """One worker per core this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def run_shards(
    fn: Callable[..., Any],
    shard_args: Sequence[tuple[Any, ...]],
    executor: str = "local",
    workers: int = 0,
    on_progress: ProgressCallback | None = None,
    on_result: Callable[[ShardResult | ShardFailure], None] | None = None,
) -> list[ShardResult | ShardFailure]:
    """Call ``fn(*shard_args[i])`` for every shard on ``executor`` and return the results in order.

    ``executor`` is ``local`` (processes on this machine; ``workers`` of them, 0 = one per core) or
    ``dask://HOST:PORT`` (an existing Dask scheduler). A single shard, or one worker, runs in this
    process: no pool start-up to pay for. ``on_result`` is called with each shard's result as it comes.
    """
    total = len(shard_args)
    results: list[ShardResult | ShardFailure | None] = [None] * total
    done = 0

    def record(item: ShardResult | ShardFailure) -> None:
        nonlocal done
        results[item.shard] = item
        done += 1
        if isinstance(item, ShardFailure):
            log.warning("shard %d failed: %s", item.shard, item.error)
        if on_result is not None:
            on_result(item)
        if on_progress is not None:
            on_progress(done, total)

    if executor == "local":
        n = min(workers or default_workers(), total)
        if n <= 1:
            for i, args in enumerate(shard_args):
                record(_timed_call(fn, i, args))
        else:
            with ProcessPoolExecutor(max_workers=n, mp_context=_pool_context()) as pool:
                futures = [pool.submit(_timed_call, fn, i, args) for i, args in enumerate(shard_args)]
                for future in as_completed(futures):
                    record(future.result())
    elif executor.startswith("dask://"):
        _run_dask(fn, shard_args, executor, record)
    else:
        raise ConfigError(f"executor {executor!r} cannot run shards here (use 'local' or 'dask://HOST:PORT')")
    return [r for r in results if r is not None]


def _run_dask(
    fn: Callable[..., Any],
    shard_args: Sequence[tuple[Any, ...]],
    executor: str,
    record: Callable[[ShardResult | ShardFailure], None],
) -> None:
    try:
        from dask.distributed import Client
        from dask.distributed import as_completed as dask_completed
    except ImportError as exc:
        raise ConfigError("executor dask:// needs the 'dask' extra: pip install 'fleetscore[dask]'") from exc
    address = "tcp://" + executor[len("dask://"):]
    try:
        client = Client(address, timeout=30)
    except OSError as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
    with client:
        futures = [client.submit(_timed_call, fn, i, args, pure=False) for i, args in enumerate(shard_args)]
        for future in dask_completed(futures):
            record(future.result())
