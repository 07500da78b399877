"""Streaming molecule files: read ``.smi``/``.csv``/``.tsv``/``.sdf`` (gzipped or not) in chunks,
and write ``.csv``/``.parquet``/``.sdf`` chunk by chunk, atomically.

Every chunk a reader yields is a DataFrame with ``line`` (1-based line of the row in the file; for
SDF the record number), ``smiles`` (None where there is none) and the file's other columns carried
through as strings. Memory is bounded by the chunk size, whatever the file size.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from medgen.chem.mol import parse_smiles
from medgen.utils.atomic import atomic_path

log = logging.getLogger(__name__)

#: column names recognised as the SMILES column of a CSV (compared case-insensitively)
SMILES_COLUMN_NAMES = ("smiles", "canonical_smiles", "smi", "isosmiles", "structure", "mol")


def file_format(path: str | os.PathLike) -> str:
    """``smi``, ``csv``, ``tsv``, ``sdf`` or ``parquet`` from the name (``.gz`` ignored)."""
    name = Path(path).name.lower().removesuffix(".gz")
    for ext, fmt in ((".smi", "smi"), (".smiles", "smi"), (".txt", "smi"), (".csv", "csv")):
        if name.endswith(ext):
            return fmt
    for ext, fmt in ((".tsv", "tsv"), (".sdf", "sdf"), (".sd", "sdf"), (".parquet", "parquet")):
        if name.endswith(ext):
            return fmt
    raise ValueError(
        f"{path}: unknown molecule file type; "
        "use .smi, .csv, .tsv, .sdf (optionally .gz) or .parquet"
    )


def _open_text(path: Path) -> IO[str]:
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def read_molecules(
    path: str | os.PathLike,
    *,
    smiles_column: str | None = None,
    chunk_size: int = 10_000,
    limit: int | None = None,
) -> Iterator[pd.DataFrame]:
    """Yield chunks of at most ``chunk_size`` rows from a molecule file (see module docstring).

    Args:
        path: ``.smi`` (SMILES then an optional name per line; a ``smiles`` header line is skipped),
            ``.csv``/``.tsv`` (SMILES column named by ``smiles_column`` or detected), ``.sdf``
            (SD tags become columns), any of them gzipped; or ``.parquet``.
        smiles_column: the CSV/parquet column holding SMILES (None: detect by name, then by
            content).
        limit: stop after this many rows (None: all).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"molecule file not found: {path}")
    fmt = file_format(path)
    readers = {"smi": _read_smi, "csv": _read_table, "tsv": _read_table, "sdf": _read_sdf}
    readers["parquet"] = _read_parquet
    chunks = readers[fmt](path, fmt=fmt, smiles_column=smiles_column, chunk_size=chunk_size)
    seen = 0
    for chunk in chunks:
        if limit is not None and seen + len(chunk) >= limit:
            yield chunk.iloc[: limit - seen].reset_index(drop=True)
            return
        seen += len(chunk)
        yield chunk


def _read_smi(path: Path, *, chunk_size: int, **_: Any) -> Iterator[pd.DataFrame]:
    lines: list[int] = []
    smiles: list[str | None] = []
    names: list[str] = []
    with _open_text(path) as fh:
        for lineno, raw in enumerate(fh, start=1):
            text = raw.strip()
            if lineno == 1 and text.split(maxsplit=1)[:1] and text.split()[0].lower() == "smiles":
                continue  # header line
            if not text or text.startswith("#"):
                continue
            parts = text.split(maxsplit=1)
            lines.append(lineno)
            smiles.append(parts[0])
            names.append(parts[1] if len(parts) > 1 else "")
            if len(lines) >= chunk_size:
                yield pd.DataFrame({"line": lines, "smiles": smiles, "name": names})
                lines, smiles, names = [], [], []
    if lines:
        yield pd.DataFrame({"line": lines, "smiles": smiles, "name": names})


def detect_smiles_column(frame: pd.DataFrame, path: str | os.PathLike = "") -> str:
    """The SMILES column of ``frame``: one with a known name, else the first column whose first
    non-empty values mostly parse as SMILES. Raises ``ValueError`` naming the file and columns."""
    lower = {str(c).lower(): c for c in frame.columns}
    for name in SMILES_COLUMN_NAMES:
        if name in lower:
            return str(lower[name])
    for column in frame.columns:
        values = [v for v in frame[column].head(20).tolist() if isinstance(v, str) and v.strip()]
        numeric = pd.to_numeric(pd.Series(values), errors="coerce").notna().sum()
        if values and numeric == 0:
            if sum(parse_smiles(v) is not None for v in values) >= max(1, 0.8 * len(values)):
                return str(column)
    raise ValueError(
        f"{path}: no SMILES column found among {list(frame.columns)}; name it with smiles_column="
    )


def _read_table(
    path: Path, *, fmt: str, smiles_column: str | None, chunk_size: int
) -> Iterator[pd.DataFrame]:
    reader = pd.read_csv(
        path,
        sep="\t" if fmt == "tsv" else ",",
        dtype=str,
        keep_default_na=False,
        chunksize=chunk_size,
        compression="infer",
        skip_blank_lines=False,
    )
    start = 2  # line 1 is the header
    column = smiles_column
    with reader:
        for chunk in _named_errors(reader, path):
            if column is None:
                column = detect_smiles_column(chunk, path)
                log.info("%s: SMILES column %r", path, column)
            elif column not in chunk.columns:
                raise ValueError(
                    f"{path}: smiles_column={column!r} is not a column; have {list(chunk.columns)}"
                )
            yield _with_line(chunk, column, start)
            start += len(chunk)


def _named_errors(reader: Iterator[pd.DataFrame], path: Path) -> Iterator[pd.DataFrame]:
    """``reader``'s chunks; a malformed row raises ``ValueError`` naming the file (pandas' own
    message names only the line)."""
    try:
        yield from reader
    except pd.errors.ParserError as err:
        raise ValueError(f"{path}: {err}") from err


def _with_line(chunk: pd.DataFrame, column: str, start: int) -> pd.DataFrame:
    out = chunk.rename(columns={column: "smiles"}).reset_index(drop=True)
    out = out.drop(columns=[c for c in ("line",) if c in out.columns])
    out.insert(0, "line", np.arange(start, start + len(out), dtype=np.int64))
    return out[["line", "smiles", *(c for c in out.columns if c not in ("line", "smiles"))]]


def _read_parquet(
    path: Path, *, smiles_column: str | None, chunk_size: int, **_: Any
) -> Iterator[pd.DataFrame]:
    import pyarrow.parquet as pq

    column = smiles_column
    start = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_size):
        chunk = batch.to_pandas()  # carried columns keep their parquet types
        column = column or detect_smiles_column(chunk, path)
        if column not in chunk.columns:
            raise ValueError(
                f"{path}: smiles_column={column!r} is not a column; have {list(chunk.columns)}"
            )
        chunk[column] = chunk[column].astype(object).where(chunk[column].notna(), None)
        yield _with_line(chunk, column, start)
        start += len(chunk)


def _read_sdf(path: Path, *, chunk_size: int, **_: Any) -> Iterator[pd.DataFrame]:
    """SDF records, streamed; a record RDKit cannot read gets ``smiles=None``."""
    from rdkit import Chem, rdBase

    rows: list[dict[str, Any]] = []
    tags: list[str] | None = None
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh, rdBase.BlockLogs():
        for record, mol in enumerate(Chem.ForwardSDMolSupplier(fh), start=1):
            row: dict[str, Any] = {"line": record, "smiles": None, "name": ""}
            if mol is not None:
                row["smiles"] = Chem.MolToSmiles(mol)
                row["name"] = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
                props = mol.GetPropsAsDict(includePrivate=False, includeComputed=False)
                if tags is None:  # the first record's tags fix the columns of the stream
                    tags = [t for t in props if t not in ("line", "smiles", "name")]
                for tag in tags:
                    row[tag] = str(props[tag]) if tag in props else ""
            rows.append(row)
            if len(rows) >= chunk_size:
                yield _sdf_frame(rows, tags)
                rows = []
    if rows:
        yield _sdf_frame(rows, tags)


def _sdf_frame(rows: list[dict[str, Any]], tags: list[str] | None) -> pd.DataFrame:
    columns = ["line", "smiles", "name", *(tags or [])]
    return pd.DataFrame(rows, columns=columns).fillna({c: "" for c in columns[2:]})


class MoleculeWriter:
    """Write DataFrame chunks to ``.csv``/``.tsv``/``.smi`` (gz or not), ``.parquet`` or ``.sdf``.

    The file appears at ``path`` only when the writer closes without error (temp file + rename).
    For SDF, each row's molecule comes from ``smiles_column`` and every other column becomes an SD
    tag (missing values are left out); rows without a parsable SMILES are skipped with a warning.
    Use as a context manager.
    """

    def __init__(self, path: str | os.PathLike, *, smiles_column: str = "smiles") -> None:
        self.path = Path(path)
        self.format = file_format(self.path)
        self.smiles_column = smiles_column
        self.rows = 0  # rows written (for SDF: records, without the skipped rows)
        self.skipped = 0  # SDF rows left out because their SMILES does not parse
        self._stack = contextlib.ExitStack()
        self._tmp: Path | None = None
        self._handle: Any = None
        self._columns: list[str] | None = None

    def __enter__(self) -> MoleculeWriter:
        self._tmp = self._stack.enter_context(atomic_path(self.path))
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if self._handle is not None:
                self._handle.close()
            if exc_type is None and self._handle is None:
                self._write_empty()
        finally:
            self._stack.__exit__(exc_type, exc, tb)

    def write(self, frame: pd.DataFrame) -> None:
        """Append ``frame`` (the first chunk fixes the columns; later chunks are aligned to it)."""
        if self._tmp is None:
            raise RuntimeError("MoleculeWriter.write() outside its `with` block")
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
            if self.path.name.lower().endswith(".gz"):
                self._handle = gzip.open(self._tmp, "wt", encoding="utf-8", newline="")
            else:
                self._handle = open(self._tmp, "w", encoding="utf-8", newline="")  # noqa: SIM115
        sep = {"tsv": "\t", "smi": " "}.get(self.format, ",")
        if self.format == "smi":  # SMILES and name only: a .smi line has no room for more
            keep = [self.smiles_column, *(["name"] if "name" in frame.columns else [])]
            frame = frame[keep]
        frame.to_csv(self._handle, sep=sep, index=False, header=first and self.format != "smi")

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._handle is None:
            self._schema = pa.schema([(c, _arrow_type(frame[c].dtype)) for c in frame.columns])
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
            name = row.get("name")
            mol.SetProp("_Name", "" if _missing(name) else str(name))
            self._handle.write(mol)
        if skipped:
            log.warning(
                "%s: %d rows without a valid SMILES left out of the SDF", self.path, skipped
            )
        return skipped

    def _write_empty(self) -> None:
        if self.format == "sdf":
            Path(self._tmp).write_text("")
        elif self.format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(
                pa.table({c: pa.array([], pa.string()) for c in self._columns or []}), self._tmp
            )
        else:
            self._write_csv(pd.DataFrame(columns=self._columns or []))
            self._handle.close()  # __exit__ saw no handle before this call


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value))


def _arrow_type(dtype: Any):
    import pyarrow as pa

    if pd.api.types.is_bool_dtype(dtype):
        return pa.bool_()
    if pd.api.types.is_integer_dtype(dtype):
        return pa.int64()
    if pd.api.types.is_float_dtype(dtype):
        return pa.float64()
    return pa.string()
