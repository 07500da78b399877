"""Order-preserving map of a function over chunks, in worker processes, with bounded memory.

``concurrent.futures.ProcessPoolExecutor.map`` submits every chunk up front, which reads a whole
input stream into memory; :func:`map_chunks` keeps at most ``max_in_flight`` chunks submitted and
yields results in input order, so a stream of any length is processed in constant memory.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_chunks(
    fn: Callable[..., R],
    chunks: Iterable[T],
    *,
    n_jobs: int = 1,
    args: Sequence[Any] = (),
    max_in_flight: int | None = None,
    executor: ProcessPoolExecutor | None = None,
) -> Iterator[R]:
    """Yield ``fn(chunk, *args)`` for each chunk, in order.

    ``n_jobs=1``, or a sequence of at most one chunk, runs in this process (no pool start-up cost).
    Otherwise ``n_jobs`` spawned workers share the chunks; ``fn`` must be a module-level function.
    At most ``max_in_flight`` (default ``2 * n_jobs``) chunks are pending at any time.
    ``executor``: an already running pool to use (and leave running) instead of starting one.
    """
    if executor is None and (n_jobs <= 1 or (isinstance(chunks, Sequence) and len(chunks) <= 1)):
        for chunk in chunks:
            yield fn(chunk, *args)
        return
    if executor is not None:
        yield from _map_ordered(executor, fn, chunks, args, max_in_flight or 2 * n_jobs)
        return
    with worker_pool(n_jobs) as pool:
        yield from _map_ordered(pool, fn, chunks, args, max_in_flight or 2 * n_jobs)


def worker_pool(n_jobs: int) -> ProcessPoolExecutor:
    """A pool of ``n_jobs`` spawned workers (they start clean: no copy of a parent that may hold
    torch threads or large tables). Workers exit on their own if the parent process dies."""
    return ProcessPoolExecutor(
        max_workers=n_jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(),),
    )


def _exit_with_parent(parent: int) -> None:
    """Worker initializer: a daemon thread ends this worker when ``parent`` is gone (a killed
    parent cannot shut its pool down, and orphaned workers would otherwise wait forever).

    Each worker also keeps to one BLAS/OpenMP thread (set before anything imports torch or
    numpy's BLAS): ``n_jobs`` workers already fill the cores, and more threads than cores make
    matrix products (ChemNet, Tanimoto blocks) many times slower on a loaded machine."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="medgen-parent-watch").start()


def _map_ordered(pool, fn, chunks, args, limit: int):
    pending: deque[Future] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(fn, chunk, *args))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:  # the consumer stopped early or a chunk failed
            fut.cancel()
