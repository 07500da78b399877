"""Order-preserving map of a function over chunks, in worker processes, with bounded memory.

``concurrent.futures.ProcessPoolExecutor.map`` submits every chunk up front, which reads a whole
input stream into memory; :func:`map_chunks` keeps at most ``max_in_flight`` chunks submitted and
yields results in input order, so a stream of any length is processed in constant memory.
"""

from __future__ import annotations

import multiprocessing
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
) -> Iterator[R]:
    """Yield ``fn(chunk, *args)`` for each chunk, in order.

    ``n_jobs=1``, or a sequence of at most one chunk, runs in this process (no pool start-up cost).
    Otherwise ``n_jobs`` spawned workers share the chunks; ``fn`` must be a module-level function.
    At most ``max_in_flight`` (default ``2 * n_jobs``) chunks are pending at any time.
    """
    if n_jobs <= 1 or (isinstance(chunks, Sequence) and len(chunks) <= 1):
        for chunk in chunks:
            yield fn(chunk, *args)
        return
    limit = max_in_flight or 2 * n_jobs
    # spawn: workers start clean (no copy of a parent that may hold torch threads or big tables)
    ctx = multiprocessing.get_context("spawn")
    pending: deque[Future] = deque()
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=ctx) as pool:
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
