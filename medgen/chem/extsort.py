"""External merge sort of DataFrame chunks by one column, in bounded memory.

Chunks are buffered up to ``run_rows`` rows, sorted and spilled to temporary parquet "runs"; the
runs are then merged lazily (``heapq.merge``, one ``batch_rows`` batch per run in memory) and
yielded as sorted chunks. Ties keep input order (``line``), so the result is the same as one stable
in-memory sort. Memory: ``run_rows`` rows while collecting, ``runs x batch_rows`` while merging.
"""

from __future__ import annotations

import heapq
import math
import tempfile
from collections.abc import Iterator
from functools import total_ordering
from pathlib import Path
from typing import Any

import pandas as pd


@total_ordering
class _Reversed:
    """Wraps a value so that larger values sort first (descending text keys)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Reversed) and self.value == other.value

    def __lt__(self, other: _Reversed) -> bool:
        return other.value < self.value


def sort_key(value: Any, descending: bool) -> tuple:
    """Key putting missing values last, numbers before text, in the requested direction."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return (2, 0)
    if isinstance(value, str):
        try:  # numbers carried through from a text file sort as numbers
            value = float(value)
        except ValueError:
            return (1, _Reversed(value) if descending else value)
        if math.isnan(value):
            return (2, 0)
    return (0, -value if descending else value)


def sort_frame(frame: pd.DataFrame, column: str, descending: bool) -> pd.DataFrame:
    """``frame`` sorted by ``column`` with :func:`sort_key`, ties in ``line`` order."""
    keys = [sort_key(v, descending) for v in frame[column].tolist()]
    lines = frame["line"].tolist()
    order = sorted(range(len(frame)), key=lambda i: (keys[i], lines[i]))
    return frame.iloc[order].reset_index(drop=True)


class ExternalSorter:
    """Collect chunks with :meth:`add`, then iterate :meth:`sorted_chunks`; use as a context
    manager so that the temporary runs are deleted.

    The runs go to a folder ``<tmp_prefix><random>`` in ``tmp_dir`` (default: the system's
    temporary folder), made only when the first run is spilled; name it after the output (see
    :func:`medgen.chem.paths.sort_prefix`) so that the leftovers of a killed process can be found.
    """

    def __init__(
        self,
        column: str,
        *,
        descending: bool,
        run_rows: int = 50_000,
        batch_rows: int = 2048,
        tmp_dir: Path | None = None,
        tmp_prefix: str = "medgen-sort-",
    ) -> None:
        self.column, self.descending = column, descending
        self.run_rows, self.batch_rows = run_rows, batch_rows
        self._tmp_dir, self._tmp_prefix = tmp_dir, tmp_prefix
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._buffer: list[pd.DataFrame] = []
        self._buffered = 0
        self._runs: list[Path] = []
        self._template: pd.DataFrame | None = None

    def __enter__(self) -> ExternalSorter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()

    def add(self, frame: pd.DataFrame) -> None:
        if self._template is None:
            self._template = frame.iloc[:0]
        if len(frame):
            self._buffer.append(frame)
            self._buffered += len(frame)
        if self._buffered >= self.run_rows:
            self._spill()

    def _sorted(self, frame: pd.DataFrame) -> pd.DataFrame:
        return sort_frame(frame, self.column, self.descending)

    def _spill(self) -> None:
        if not self._buffer:
            return
        run = self._sorted(pd.concat(self._buffer, ignore_index=True))
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix=self._tmp_prefix, dir=self._tmp_dir)
        path = Path(self._tmp.name) / f"run{len(self._runs):05d}.parquet"
        # small row groups: the merge holds one batch per run in memory, not a whole run
        run.to_parquet(path, index=False, row_group_size=self.batch_rows)
        self._runs.append(path)
        self._buffer, self._buffered = [], 0

    def sorted_chunks(self, chunk_rows: int = 10_000) -> Iterator[pd.DataFrame]:
        """Yield the collected rows in sorted order, ``chunk_rows`` at a time."""
        if not self._runs:  # everything fits in memory: one sort
            if self._buffer:
                frame = self._sorted(pd.concat(self._buffer, ignore_index=True))
                for start in range(0, len(frame), chunk_rows):
                    yield frame.iloc[start : start + chunk_rows]
            return
        self._spill()
        assert self._template is not None  # set by the add() that spilled the first run
        streams = [self._records(path) for path in self._runs]
        columns = list(self._template.columns)
        out: list[tuple] = []
        for _, _, record in heapq.merge(*streams):
            out.append(record)
            if len(out) >= chunk_rows:
                yield self._frame(out, columns)
                out = []
        if out:
            yield self._frame(out, columns)

    def _records(self, path: Path) -> Iterator[tuple]:
        import pyarrow.parquet as pq

        assert self._template is not None  # a run exists, so add() has run
        columns = list(self._template.columns)
        line, col = columns.index("line"), columns.index(self.column)
        with pq.ParquetFile(path) as run:
            for batch in run.iter_batches(batch_size=self.batch_rows):
                frame = batch.to_pandas().astype(self._template.dtypes.to_dict())
                for record in frame.itertuples(index=False, name=None):
                    yield sort_key(record[col], self.descending), record[line], record

    def _frame(self, records: list[tuple], columns: list[str]) -> pd.DataFrame:
        assert self._template is not None  # records come from runs, so add() has run
        frame = pd.DataFrame.from_records(records, columns=columns)
        return frame.astype(self._template.dtypes.to_dict())
