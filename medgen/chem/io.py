"""Streaming molecule files: read ``.smi``/``.csv``/``.tsv``/``.sdf`` (gzipped or not) in chunks
(:mod:`medgen.chem.readers`), and write ``.csv``/``.parquet``/``.sdf`` chunk by chunk, atomically.

Every chunk a reader yields is a DataFrame with ``line`` (1-based physical line where the row
starts; for SDF the record number), ``smiles`` (None where there is none) and the file's other
columns carried through as strings. Memory is bounded by the chunk size, whatever the file size.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medgen.chem.mol import parse_smiles
from medgen.chem.readers import (
    READ_ERROR,
    SMILES_COLUMN_NAMES,
    detect_smiles_column,
    file_format,
    read_molecules,
)
from medgen.utils.atomic import atomic_path

__all__ = [
    "READ_ERROR",
    "SMILES_COLUMN_NAMES",
    "MoleculeWriter",
    "detect_smiles_column",
    "file_format",
    "read_molecules",
]

log = logging.getLogger(__name__)


class MoleculeWriter:
    """Write DataFrame chunks to ``.csv``/``.tsv``/``.smi`` (gz or not), ``.parquet`` or ``.sdf``.

    The file appears at ``path`` only when the writer closes without error (temp file + rename).
    For SDF, each row's molecule comes from ``smiles_column``, its title (``_Name``) from
    ``name_column`` and every other column becomes an SD tag (missing values are left out; a
    ``name`` column read back from an SDF's titles is the title only); rows without a parsable
    SMILES are skipped with a warning. Use as a context manager.

    ``mark``: a :func:`medgen.marking.provenance` record the file carries (synthetic outputs):
    leading ``# `` comment lines in CSV/TSV/SMI, the ``medgen_synthetic`` property on every SDF
    record (the full record on the first), the ``medgen.synthetic`` key of the parquet schema
    metadata. medgen's readers skip the comment lines.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        smiles_column: str = "smiles",
        name_column: str | None = "name",
        mark: Mapping[str, Any] | None = None,
    ) -> None:
        self.path = Path(path)
        self.mark = None if mark is None else dict(mark)
        self.format = file_format(self.path)
        self.smiles_column = smiles_column
        self.name_column = name_column
        self.rows = 0  # rows written (for SDF: records, without the skipped rows)
        self.skipped = 0  # SDF rows left out because their SMILES does not parse
        self._stack = contextlib.ExitStack()
        self._tmp: Path | None = None
        self._handle: Any = None
        self._columns: list[str] | None = None
        self._finished = False
        self._marked = False  # SDF: the full record went on the first record written

    def __enter__(self) -> MoleculeWriter:
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self.finish()
            else:
                self._close()
        except BaseException as err:  # an unfinished file must not be renamed into place
            with contextlib.suppress(Exception):
                self._close()
            self._stack.__exit__(type(err), err, err.__traceback__)
            raise
        self._stack.__exit__(exc_type, exc, tb)

    def finish(self) -> None:
        """Complete the temporary file (no more writes); the rename to ``path`` happens on exit.

        Call it for every writer of a run before any of them exits, so that a failure to flush one
        file (a full disk) leaves none of the run's outputs renamed into place.
        """
        if self._finished or self._tmp is None:
            return
        if self._handle is None:
            self._write_empty()
        self._close()
        self._finished = True

    def _close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame`` (the first chunk fixes the columns; later chunks are aligned to it)."""
        if self._tmp is None or self._finished:
            raise RuntimeError("MoleculeWriter.write() outside its `with` block or after finish()")
        if self._columns is None:
            self._columns = [str(c) for c in frame.columns]
        frame = frame.reindex(columns=self._columns)
        skipped = {"parquet": self._write_parquet, "sdf": self._write_sdf}.get(
            self.format, self._write_csv
        )(frame)
        self.skipped += skipped or 0
        self.rows += len(frame) - (skipped or 0)

    def _write_csv(self, frame: pd.DataFrame) -> None:
        first = self._handle is None
        if first:
            assert self._tmp is not None  # set by __enter__ before any write
            if self.path.name.lower().endswith(".gz"):
                self._handle = gzip.open(self._tmp, "wt", encoding="utf-8", newline="")
            else:
                self._handle = open(self._tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
            if self.mark is not None:
                from medgen.marking import header_lines

                self._handle.write("".join(f"{line}\n" for line in header_lines(self.mark)))
        sep = {"tsv": "\t", "smi": " "}.get(self.format, ",")
        if self.format == "smi":  # SMILES and name only: a .smi line has no room for more
            keep = [self.smiles_column, *(["name"] if "name" in frame.columns else [])]
            frame = frame[keep]
        frame.to_csv(self._handle, sep=sep, index=False, header=first and self.format != "smi")

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._handle is None:
            self._schema = pa.schema(
                [(c, arrow_type(frame[c].dtype)) for c in frame.columns], metadata=self._metadata()
            )
            self._handle = pq.ParquetWriter(self._tmp, self._schema)
        table = pa.Table.from_pandas(frame, schema=self._schema, preserve_index=False)
        self._handle.write_table(table)

    def _write_sdf(self, frame: pd.DataFrame) -> int:
        from rdkit import Chem
        from rdkit.Chem import rdDepictor

        if self._handle is None:
            self._handle = Chem.SDWriter(str(self._tmp))
        skipped = 0
        for row in frame.to_dict("records"):
            mol = parse_smiles(row.get(self.smiles_column))
            if mol is None:
                skipped += 1
                continue
            rdDepictor.Compute2DCoords(mol)
            for key, value in row.items():
                if key not in (self.smiles_column, "name") and not _missing(value):
                    mol.SetProp(str(key), str(value))
                elif key == "name" and self.name_column != "name" and not _missing(value):
                    mol.SetProp("name", str(value))
            name = row.get(self.name_column) if self.name_column else None
            mol.SetProp("_Name", "" if _missing(name) else str(name))
            if self.mark is not None:
                from medgen.marking import SDF_TAG, sdf_value

                mol.SetProp(SDF_TAG, sdf_value(self.mark, first=not self._marked))
                self._marked = True
            self._handle.write(mol)
        if skipped:
            log.warning(
                "%s: %d rows without a valid SMILES left out of the SDF", self.path, skipped
            )
        return skipped

    def _metadata(self) -> dict[bytes, bytes] | None:
        """Parquet schema metadata holding the mark (None without one)."""
        if self.mark is None:
            return None
        from medgen.marking import parquet_metadata

        return parquet_metadata(self.mark)

    def _write_empty(self) -> None:
        assert self._tmp is not None  # set by __enter__
        if self.format == "sdf":
            Path(self._tmp).write_text("")
        elif self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({c: pa.array([], pa.string()) for c in self._columns or []})
            pq.write_table(table.replace_schema_metadata(self._metadata()), self._tmp)
        else:
            self._write_csv(pd.DataFrame(columns=self._columns or []))


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def arrow_type(dtype: Any):
    """The Arrow type a pandas column of ``dtype`` is written as (text for anything else)."""
    import pyarrow as pa

    if pd.api.types.is_bool_dtype(dtype):
        return pa.bool_()
    if pd.api.types.is_integer_dtype(dtype):
        return pa.int64()
    if pd.api.types.is_float_dtype(dtype):
        return pa.float64()
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return pa.from_numpy_dtype(dtype)
    return pa.string()


def mark_file(path: str | os.PathLike, record: Mapping[str, Any]) -> Path:
    """Give an existing molecule file the mark ``record`` (as :class:`MoleculeWriter` writes it),
    rewriting it atomically in one streaming pass: ``# `` lines on top of CSV/TSV/SMI (gz or
    not), the property on every SDF record, parquet schema metadata (each file of a dataset
    folder). An earlier mark of the file is replaced."""
    from medgen.marking import MARK, SDF_TAG, header_lines, parquet_metadata, sdf_value

    path = Path(path)
    if path.is_dir():  # a parquet dataset
        for part in sorted(path.glob("*.parquet")):
            mark_file(part, record)
        return path
    fmt = file_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetFile(path) as source:
            metadata = {**(source.schema_arrow.metadata or {}), **parquet_metadata(record)}
            schema = source.schema_arrow.with_metadata(metadata)
            with atomic_path(path) as tmp:
                with pq.ParquetWriter(tmp, schema, compression="zstd") as sink:
                    for batch in source.iter_batches():
                        sink.write_batch(batch)
        return path
    opener: Any = gzip.open if path.name.lower().endswith(".gz") else open
    with (
        atomic_path(path) as tmp,
        opener(path, "rt", encoding="utf-8", newline="") as src,
        opener(tmp, "wt", encoding="utf-8", newline="") as dst,
    ):
        if fmt == "sdf":
            first, skip = True, 0
            for line in src:
                if skip:  # the value line of an earlier mark, then its blank line
                    skip -= 1
                    continue
                if line.startswith(">") and f"<{SDF_TAG}>" in line:
                    skip = 2
                    continue
                if line.startswith("$$$$"):
                    dst.write(f">  <{SDF_TAG}>\n{sdf_value(record, first=first)}\n\n")
                    first = False
                dst.write(line)
        else:
            dst.write("".join(f"{line}\n" for line in header_lines(record)))
            at_top = True
            for line in src:
                if at_top and line.startswith("# ") and (MARK in line or "medgen" in line):
                    continue  # the file's earlier mark
                at_top = False
                dst.write(line)
    return path
