"""Executors: run one function over many shards, locally or on a Dask cluster.

The function and its arguments must be picklable (top-level functions, plain data). Results come back
in shard order. A shard that raises is returned as a :class:`ShardFailure` instead of stopping the
others; the caller decides whether the run fails.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import threading
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
    payload_bytes: int = 0  # the pickled task sent to a remote worker (0: run locally)


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


def die_with_parent() -> None:
    """Make this pool worker exit as soon as the process that started it is gone.

    A worker started from the fork server is not a child of the command, and it holds the fork
    server's "alive" pipe, so after ``kill -9`` of the command the workers, the fork server and the
    resource tracker would stay, holding the command's output and the store. A daemon thread waits on
    the parent's sentinel (a pipe that closes when the parent dies) and ends the worker then; with the
    workers gone the fork server and the tracker see their pipes close and exit too."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)  # the run is gone: nobody would read this worker's result

    threading.Thread(target=watch, name="fleetscore-parent-watch", daemon=True).start()


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
    pool = ProcessPoolExecutor(1, mp_context=_pool_context(), initializer=die_with_parent)
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
    timeout: float | None = None,
) -> list[ShardResult | ShardFailure]:
    """Call ``fn(*shard_args[i])`` for every shard on ``executor`` and return the results in order.

    ``executor`` is ``local`` (processes on this machine; ``workers`` of them, 0 = one per core) or
    ``dask://HOST:PORT`` (an existing Dask scheduler). A single shard, or one worker, runs in this
    process: no pool start-up to pay for. ``on_result`` is called with each shard's result as it comes.
    On Dask, shards still running ``timeout`` seconds after the submission are cancelled and come back
    as failures; a client that dies takes its tasks with it (the scheduler releases them).
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
            with ProcessPoolExecutor(max_workers=n, mp_context=_pool_context(), initializer=die_with_parent) as pool:
                futures = [pool.submit(_timed_call, fn, i, args) for i, args in enumerate(shard_args)]
                for future in as_completed(futures):
                    record(future.result())
    elif executor.startswith("dask://"):
        _run_dask(fn, shard_args, executor, record, timeout)
    else:
        raise ConfigError(f"executor {executor!r} cannot run shards here (use 'local' or 'dask://HOST:PORT')")
    return [r for r in results if r is not None]


def _dask_client(executor: str) -> Any:
    """A client of the scheduler at ``dask://HOST:PORT`` (connecting within 30 s)."""
    try:
        from dask.distributed import Client
    except ImportError as exc:
        raise ConfigError("executor dask:// needs the 'dask' extra: pip install 'fleetscore[dask]'") from exc
    address = "tcp://" + executor[len("dask://"):]
    try:
        return Client(address, timeout=30)
    except OSError as exc:
        raise ConfigError(f"executor {executor}: cannot reach the Dask scheduler at {address}: {exc}") from exc


def dask_capacity(executor: str) -> int:
    """How many tasks the cluster at ``dask://HOST:PORT`` runs at once: its workers' threads."""
    with _dask_client(executor) as client:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    threads = sum(int(w.get("nthreads", 1)) for w in workers.values())
    if threads <= 0:
        raise ConfigError(f"executor {executor}: the Dask scheduler has no workers")
    return threads


def _run_dask(
    fn: Callable[..., Any],
    shard_args: Sequence[tuple[Any, ...]],
    executor: str,
    record: Callable[[ShardResult | ShardFailure], None],
    timeout: float | None,
) -> None:
    from dask.distributed import TimeoutError as DaskTimeout
    from dask.distributed import as_completed as dask_completed

    with _dask_client(executor) as client:
        sizes, futures = [], []
        for i, args in enumerate(shard_args):
            # the task's own bytes (what the scheduler forwards to one worker): O(shard), never O(fleet)
            sizes.append(len(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)))
            # earlier shards first: a run's first shards are the ones its data gate waits for
            futures.append(client.submit(_timed_call, fn, i, args, pure=False, priority=len(shard_args) - i))
        pending = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in dask_completed(futures, timeout=timeout):
                shard = pending.pop(future.key)
                try:
                    item = future.result()
                except Exception as exc:  # noqa: BLE001 - a lost worker (KilledWorker) fails this shard only
                    item = ShardFailure(shard, f"{type(exc).__name__}: {exc}", "")
                if isinstance(item, ShardResult):
                    item = ShardResult(item.shard, item.value, item.seconds, sizes[item.shard])
                record(item)
        except (DaskTimeout, TimeoutError):
            client.cancel([f for f in futures if f.key in pending])
            for i in sorted(pending.values()):
                record(ShardFailure(i, f"shard {i} still running after {timeout:.0f} s on {executor}: cancelled", ""))
