"""Where the partitions of a screen are scored: this machine's cores, or a Dask cluster.

Both engines run the same function on the same partitions (:mod:`medgen.chem.partitions`) and
write the same files, so their outputs are identical:

- ``local``: a pool of spawned processes on this machine (:func:`medgen.chem.parallel.map_chunks`);
  a partition is split into ``chunk_size`` tasks and written by this process. No Dask needed.
- ``dask``: one task per partition on a ``dask.distributed`` cluster — a ``LocalCluster`` of
  ``n_jobs`` single-threaded worker processes by default, any running scheduler
  (``scheduler=tcp://host:8786``), or a cluster object built from a config (``cluster=slurm``:
  ``dask_jobqueue.SLURMCluster``). Workers write their partitions themselves, so the work folder
  must be on a file system they share with this process.

This process reads the input and hands partitions out, at most a few per worker at a time, so
memory stays bounded whatever the input size.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from medgen.chem.partitions import ChunkSpec, combine, run_partition, score_chunk, write_partition
from medgen.errors import UserError

log = logging.getLogger(__name__)

ENGINES = ("local", "dask")
LOG_EVERY_S = 30.0  # progress lines in the log (clusters rarely show a live bar)


@dataclass
class Task:
    """One partition still to score."""

    name: str
    frame: pd.DataFrame
    spec: ChunkSpec


class Progress:
    """Partitions done and molecules per second with an ETA: a tqdm bar (``bar=True``) and a log
    line every :data:`LOG_EVERY_S` seconds. ``total`` (rows) may arrive later from a counter."""

    def __init__(self, label: str, *, bar: bool) -> None:
        self.label = label
        self.total: int | None = None
        self.rows = self.scored_rows = self.partitions = self.skipped = 0
        self.start = self.last_log = time.perf_counter()
        self._bar = None
        if bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(desc=f"screening {label}", unit=" mol", dynamic_ncols=True)

    def set_total(self, rows: int) -> None:
        self.total = rows
        if self._bar is not None:
            self._bar.total = rows
            self._bar.refresh()

    def update(self, rows: int, *, skipped: bool = False) -> None:
        self.rows += rows
        self.partitions += 1
        if skipped:
            self.skipped += 1
        else:
            self.scored_rows += rows
        if self._bar is not None:
            self._bar.update(rows)
            self._bar.set_postfix_str(f"partitions {self.partitions} ({self.skipped} resumed)")
        now = time.perf_counter()
        if now - self.last_log >= LOG_EVERY_S:
            self.last_log = now
            log.info("%s", self.line())

    def rate(self) -> float:
        return self.scored_rows / max(time.perf_counter() - self.start, 1e-9)

    def line(self) -> str:
        rate = self.rate()
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {_duration(max(self.total - self.rows, 0) / rate)}"
        total = f" of ~{self.total:,}" if self.total else ""
        return (f"{self.label}: {self.partitions} partitions ({self.skipped} resumed), "
                f"{self.rows:,}{total} molecules, {rate:,.0f} mol/s{eta}")  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def count_rows_later(files: list[Path], limit: int | None, progress: Progress) -> None:
    """Estimate the input's rows in a background thread (newlines or SDF records; parquet from its
    metadata) and give the total to ``progress`` for the ETA."""

    def count() -> None:
        try:
            total = sum(_estimate_rows(f) for f in files)
        except Exception as err:  # an estimate only: the reader reports real problems
            log.debug("could not count the input rows: %s", err)
            return
        progress.set_total(min(total, limit) if limit is not None else total)

    threading.Thread(target=count, daemon=True, name="medgen-screen-count").start()


def _estimate_rows(path: Path) -> int:
    from medgen.chem.readers import file_format
    from medgen.chem.textfiles import open_bytes

    fmt = file_format(path)
    if path.stat().st_size == 0:
        return 0
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    marker = b"$$$$" if fmt == "sdf" else b"\n"
    n = 0
    with open_bytes(path) as fh:
        while block := fh.read(1 << 22):
            n += block.count(marker)
    return n if fmt in ("sdf", "smi", "cxsmiles") else max(n - 1, 0)  # minus a header line


# ------------------------------------------------------------------------------------ engines


def run_local(
    tasks: Iterable[Task], work: Path, *, n_jobs: int, chunk_size: int, progress: Progress
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Score ``tasks`` on ``n_jobs`` local processes; yields ``(name, counts)`` per partition."""
    from medgen.chem.parallel import map_chunks

    queue: deque[tuple[str, int, int]] = deque()  # partition name, chunks, rows

    def pieces() -> Iterator[tuple[pd.DataFrame, ChunkSpec]]:
        for task in tasks:
            starts = range(0, max(len(task.frame), 1), chunk_size)
            queue.append((task.name, len(starts), len(task.frame)))
            for start in starts:
                yield task.frame.iloc[start : start + chunk_size], task.spec

    parts: list = []
    for result in map_chunks(_score_piece, pieces(), n_jobs=n_jobs):
        parts.append(result)
        name, count, rows = queue[0]
        if len(parts) == count:
            queue.popleft()
            counts = write_partition(work, name, combine(parts))
            parts = []
            progress.update(rows)
            yield name, counts


def _score_piece(item: tuple[pd.DataFrame, ChunkSpec]):
    frame, spec = item
    return score_chunk(frame, spec)


def run_dask(
    tasks: Iterable[Task],
    work: Path,
    *,
    scheduler: str | None,
    cluster: dict[str, Any] | None,
    n_workers: int,
    progress: Progress,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Score ``tasks`` on a Dask cluster, one task per partition; yields ``(name, counts)``."""
    client, owned = dask_client(scheduler, cluster, n_workers)
    try:
        yield from _submit_all(client, tasks, work, progress)
    finally:
        client.close()
        if owned is not None:
            owned.close()


def dask_client(scheduler: str | None, cluster: dict[str, Any] | None, n_workers: int):
    """``(client, cluster this function started or None)``."""
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as err:
        raise UserError(
            "engine=dask needs dask.distributed: pip install 'medgen[distributed]'"
        ) from err
    if scheduler:
        log.info("connecting to the Dask scheduler at %s", scheduler)
        return Client(scheduler), None
    if cluster:
        import hydra

        settings = dict(cluster)
        jobs = int(settings.pop("jobs", 1))
        made = hydra.utils.instantiate(settings)
        made.scale(jobs=jobs)
        log.info("started %s with %d job(s): %s", type(made).__name__, jobs, made.dashboard_link)
        return Client(made), made
    # one single-threaded process per core: RDKit holds the GIL while it scores
    made = LocalCluster(
        n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
        silence_logs=logging.WARNING,
    )  # fmt: skip
    return Client(made), made


def _submit_all(client, tasks: Iterable[Task], work: Path, progress: Progress):
    from dask.distributed import wait

    pending: dict[Any, tuple[str, int]] = {}  # future -> (partition name, rows)

    def drain(block_until: int):
        while len(pending) > block_until:
            done, _ = wait(list(pending), return_when="FIRST_COMPLETED")
            for fut in done:
                name, rows = pending.pop(fut)
                counts = fut.result()  # a failed partition raises its error here
                progress.update(rows)
                yield name, counts

    try:
        for task in tasks:
            limit = max(2, 2 * sum(client.nthreads().values()))  # workers may come and go
            fut = client.submit(
                run_partition, task.frame, task.spec, str(work.resolve()), task.name,
                key=f"medgen-screen-{task.name}-{id(task):x}", pure=False,
            )  # fmt: skip
            pending[fut] = (task.name, len(task.frame))
            yield from drain(limit - 1)
        yield from drain(0)
    finally:
        for fut in pending:  # a failure or an interrupt: do not leave work running
            fut.cancel()
