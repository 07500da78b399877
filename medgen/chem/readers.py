"""Streaming readers of molecule files: ``.smi``/``.cxsmiles``/``.csv``/``.tsv``/``.sdf``
(compressed with gzip, bzip2 or zstd, or not) and ``.parquet``, in chunks of bounded size.

Every chunk is a DataFrame with ``line`` (the physical 1-based line where the row starts, as an
editor shows it, also for CSV fields that span lines; for SDF the record number; for parquet the
row number), ``smiles`` (None where there is none) and the file's other columns carried through as
text. A carried column named like one of these (``line``, ``smiles``, SDF's ``name``) is renamed
``input_<name>``, never dropped. A ``.smi``/``.smiles``/``.cxsmiles`` file whose first line is a
tab-separated header naming a SMILES column (Enamine's REAL files: ``smiles<TAB>idnumber<TAB>...``)
is read as a tab-separated table.

Bad input is never skipped silently. A row whose bytes are not UTF-8 keeps its place: with
``with_errors=True`` its reason is in a ``read_error`` column (``""`` for good rows), otherwise its
``smiles`` is None; its text is kept with the bad bytes written as ``\\xNN``. A file that is not
what its name says (binary, UTF-16, corrupt or truncated compressed data, a bad parquet) or is
malformed (a CSV row with more fields than the header) raises
:class:`~medgen.errors.InputFileError` naming the file and line. A zero-byte file of any format
holds no molecules: it yields no chunks.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medgen.chem.mol import parse_smiles
from medgen.chem.textfiles import (
    CODECS,
    Lines,
    StopOnGzipError,
    check_text,
    escaped,
    guarded_lines,
    gzip_error,
    open_bytes,
)
from medgen.errors import InputFileError, MissingFileError, UserError

log = logging.getLogger(__name__)

#: column names recognised as the SMILES column of a CSV (compared case-insensitively)
SMILES_COLUMN_NAMES = ("smiles", "canonical_smiles", "smi", "isosmiles", "structure", "mol")
#: the column ``read_molecules(..., with_errors=True)`` adds: why a row could not be read
READ_ERROR = "read_error"

_CSV_FIELD_LIMIT = 64 * 2**20  # characters; the csv module's default (128 Ki) is too small


_EXTENSIONS = (
    (".cxsmiles", "cxsmiles"), (".cxsmi", "cxsmiles"), (".smi", "smi"), (".smiles", "smi"),
    (".txt", "smi"), (".csv", "csv"), (".tsv", "tsv"), (".sdf", "sdf"), (".sd", "sdf"),
    (".parquet", "parquet"),
)  # fmt: skip


def file_format(path: str | os.PathLike) -> str:
    """``smi``, ``cxsmiles``, ``csv``, ``tsv``, ``sdf`` or ``parquet`` from the name (a ``.gz``,
    ``.bz2`` or ``.zst`` suffix ignored)."""
    name = Path(path).name.lower()
    name = next((name.removesuffix(c) for c in CODECS if name.endswith(c)), name)
    for ext, fmt in _EXTENSIONS:
        if name.endswith(ext):
            return fmt
    raise UserError(
        f"{path}: unknown molecule file type; use .smi, .cxsmiles, .csv, .tsv, .sdf (optionally "
        ".gz, .bz2 or .zst) or .parquet"
    )


def read_molecules(
    path: str | os.PathLike,
    *,
    smiles_column: str | None = None,
    chunk_size: int = 10_000,
    limit: int | None = None,
    with_errors: bool = False,
) -> Iterator[pd.DataFrame]:
    """Yield chunks of at most ``chunk_size`` rows from a molecule file (see module docstring).

    Args:
        path: ``.smi`` (SMILES then an optional name per line; a ``smiles`` header line is skipped),
            ``.csv``/``.tsv`` (SMILES column named by ``smiles_column`` or detected), ``.sdf``
            (SD tags become columns), any of them gzipped; or ``.parquet``. Text is UTF-8 (a
            byte-order mark is allowed); CRLF line ends are fine.
        smiles_column: the CSV/parquet column holding SMILES (None: detect by name, then by
            content; two candidates are an error asking for this argument).
        limit: stop after this many rows (None: all).
        with_errors: add the ``read_error`` column instead of blanking unreadable rows' SMILES.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"molecule file not found: {path}")
    if not path.is_file():
        raise InputFileError(f"{path} is not a file; name a molecule file")
    for key, value, low in (("chunk_size", chunk_size, 1), ("limit", limit, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise UserError(f"{key}={value!r} is not allowed: a whole number >= {low}")
        if value is not None and value < low:
            raise UserError(f"{key}={value!r} is not allowed: a whole number >= {low}")
    fmt = file_format(path)
    if path.stat().st_size == 0:
        log.warning("%s is empty (0 bytes): no molecules", path)
        return
    if fmt != "parquet":
        check_text(path, fmt)
    if fmt in ("smi", "cxsmiles") and _tab_header(path):
        fmt = "tsv"  # Enamine-style: a header line, tab-separated columns
    readers: dict[str, Any] = {"smi": _read_smi, "csv": _read_table, "tsv": _read_table}
    readers.update(sdf=_read_sdf, parquet=_read_parquet, cxsmiles=_read_smi)
    chunks = readers[fmt](path, fmt=fmt, smiles_column=smiles_column, chunk_size=chunk_size)
    seen, warned = 0, False
    for chunk in chunks:
        if limit is not None and seen + len(chunk) >= limit:
            chunk = chunk.iloc[: limit - seen].reset_index(drop=True)
        seen += len(chunk)
        bad = chunk[READ_ERROR] != ""
        if bad.any() and not warned:
            first = chunk.loc[bad.idxmax()]
            log.warning("%s: %s (the row is kept as a reject; further such rows are not logged)",
                        path, first[READ_ERROR])  # fmt: skip
            warned = True
        if not with_errors:
            chunk = chunk.drop(columns=READ_ERROR)
            chunk.loc[bad, "smiles"] = None
        yield chunk
        if limit is not None and seen >= limit:
            return


def _tab_header(path: Path) -> bool:
    """Whether the first non-blank line of a SMILES file is a tab-separated header naming a SMILES
    column (then the file is a table, as Enamine writes its ``.cxsmiles`` and ``.smiles`` files)."""
    with open_bytes(path) as fh:
        for raw in guarded_lines(fh, path):
            text = raw.decode("utf-8", "replace").lstrip("\ufeff").strip("\r\n")
            if text.strip() and not text.startswith("#"):  # a comment (a medgen mark) first
                fields = [f.strip().lower() for f in text.split("\t")]
                return len(fields) > 1 and any(f in SMILES_COLUMN_NAMES for f in fields)
    return False


def _split_cxsmiles(text: str) -> list[str]:
    """``[smiles, name]`` of a CXSMILES line: the ``|...|`` extension after the SMILES belongs to
    it (``C[C@H](N)C(=O)O |&1:1| alanine``)."""
    parts = text.split(maxsplit=1)
    if len(parts) == 2 and parts[1].startswith("|"):
        end = parts[1].find("|", 1)
        if end > 0:
            rest = parts[1][end + 1 :].strip()
            return [f"{parts[0]} {parts[1][: end + 1]}", *([rest] if rest else [])]
    return parts


def _read_smi(path: Path, *, fmt: str, chunk_size: int, **_: Any) -> Iterator[pd.DataFrame]:
    rows: list[tuple[int, str | None, str, str]] = []
    split = _split_cxsmiles if fmt == "cxsmiles" else (lambda t: t.split(maxsplit=1))
    with open_bytes(path) as fh:
        lines = Lines(path, fh)
        for raw in lines:
            error = lines.take_bad()
            text = escaped(raw).strip() if error else raw.strip()
            parts = split(text)
            if lines.number == 1 and parts and parts[0].lower() == "smiles":
                continue  # header line
            if not text or text.startswith("#"):
                continue
            rows.append((lines.number, parts[0], parts[1] if len(parts) > 1 else "", error))
            if len(rows) >= chunk_size:
                yield pd.DataFrame(rows, columns=["line", "smiles", "name", READ_ERROR])
                rows = []
    if rows:
        yield pd.DataFrame(rows, columns=["line", "smiles", "name", READ_ERROR])


def detect_smiles_column(frame: pd.DataFrame, path: str | os.PathLike = "") -> str:
    """The SMILES column of ``frame``: the one with a known name, else the one column whose first
    non-empty values mostly parse as SMILES. Raises :class:`InputFileError` naming the file and the
    columns when there is none or more than one candidate."""
    columns = [str(c) for c in frame.columns]
    candidates = [c for c in columns if c.lower() in SMILES_COLUMN_NAMES]
    if not candidates:
        candidates = [c for c in columns if _looks_like_smiles(frame[c])]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise InputFileError(
            f"{path}: several columns could hold the SMILES: {candidates}; "
            "choose one with smiles_column=<name>"
        )
    raise InputFileError(
        f"{path}: no SMILES column found among {columns}; name it with smiles_column=<name>"
    )


def _looks_like_smiles(values: pd.Series) -> bool:
    sample = [v for v in values.head(20).tolist() if isinstance(v, str) and v.strip()]
    if not sample or pd.to_numeric(pd.Series(sample), errors="coerce").notna().any():
        return False
    return sum(parse_smiles(v) is not None for v in sample) >= max(1, 0.8 * len(sample))


def _read_table(
    path: Path, *, fmt: str, smiles_column: str | None, chunk_size: int
) -> Iterator[pd.DataFrame]:
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    sep = "\t" if fmt == "tsv" else ","
    with open_bytes(path) as fh:
        lines = Lines(path, fh, leading_comments=True)  # a medgen mark: "# " lines on top
        records = _records(csv.reader(lines, delimiter=sep), lines)
        header = next((r for r in records if r[1]), None)  # leading blank lines are no header
        if header is None:
            log.warning("%s has no header line: no molecules", path)
            return
        header_line, names = header[0], _header_names(header[1], header[2], path, header[0])
        column, rows, yielded = smiles_column, [], False
        meta: list[tuple[int, str]] = []
        for line, fields, error in records:
            if len(fields) > len(names):
                raise InputFileError(
                    f"{path}: line {line}: {len(fields)} fields, but the header (line "
                    f"{header_line}) has {len(names)}; quote fields that contain {sep!r}"
                )
            fields += [""] * (len(names) - len(fields))  # a short (or blank) row: empty cells
            rows.append([escaped(f) for f in fields] if error else fields)
            meta.append((line, error))
            if len(rows) >= chunk_size:
                column = column or detect_smiles_column(pd.DataFrame(rows, columns=names), path)
                yield _finish(pd.DataFrame(rows, columns=names), column, meta, path)
                rows, meta, yielded = [], [], True
        if rows or not yielded:  # a header-only file still yields its (empty) columns
            frame = pd.DataFrame(rows, columns=names, dtype=object)
            yield _finish(frame, column or detect_smiles_column(frame, path), meta, path)


def _records(reader: Iterator[list[str]], lines: Lines) -> Iterator[tuple[int, list[str], str]]:
    """``(first physical line, fields, read error)`` per CSV record (the reader reads no line
    ahead, so the lines read for a record are its own)."""
    while True:
        start = lines.number + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise InputFileError(f"{lines.path}: line {lines.number}: {err}") from err
        yield start, fields, lines.take_bad()


def _header_names(fields: list[str], error: str, path: Path, line: int) -> list[str]:
    names = [escaped(f) if error else f for f in fields]
    names = [n or f"Unnamed: {i}" for i, n in enumerate(names)]  # pandas' name for a blank one
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputFileError(
            f"{path}: line {line}: the header repeats the column names {duplicates}; "
            "column names must be unique"
        )
    return names


def _finish(
    frame: pd.DataFrame, column: str, meta: list[tuple[int, str]], path: Path | str
) -> pd.DataFrame:
    """``line``, ``smiles``, ``read_error`` then the carried columns (reserved names renamed)."""
    if column not in frame.columns:
        raise InputFileError(
            f"{path}: smiles_column={column!r} is not a column; have {list(frame.columns)}"
        )
    out = frame.reset_index(drop=True)
    out = out.rename(columns=_renamed(out.columns, column, ("line", "smiles", READ_ERROR)))
    out = out.rename(columns={column: "smiles"})
    carried = [c for c in out.columns if c != "smiles"]
    out.insert(0, "line", np.array([m[0] for m in meta], dtype=np.int64))
    out.insert(2, READ_ERROR, pd.Series([m[1] for m in meta], dtype=object))
    return out[["line", "smiles", READ_ERROR, *carried]]


def _renamed(columns, keep: str, reserved: tuple[str, ...]) -> dict[str, str]:
    """``{name: input_<name>}`` for carried columns whose names the reader's own columns use."""
    taken, renames = {str(c) for c in columns} | set(reserved), {}
    for c in columns:
        if c != keep and c in reserved:
            new = f"input_{c}"
            while new in taken:
                new = f"input_{new}"
            taken.add(new)
            renames[c] = new
    if renames:
        log.warning("carried columns renamed (their names are the reader's own): %s", renames)
    return renames


def _read_parquet(
    path: Path, *, smiles_column: str | None, chunk_size: int, **_: Any
) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise InputFileError(f"{path}: not a readable parquet file ({err})") from err
    with parquet:
        names = parquet.schema_arrow.names
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputFileError(
                f"{path}: the columns {duplicates} occur more than once; "
                "column names must be unique"
            )
        column, start = smiles_column, 1
        batches = parquet.iter_batches(batch_size=chunk_size)
        while True:
            try:
                batch = next(batches, None)
            except (pa.ArrowException, OSError) as err:
                raise InputFileError(f"{path}: corrupt parquet data after row {start - 1} "
                                     f"({err})") from err  # fmt: skip
            if batch is None and start > 1:
                return
            table = parquet.schema_arrow.empty_table() if batch is None else batch
            chunk = table.to_pandas()  # carried columns keep their parquet types
            column = column or detect_smiles_column(chunk, path)
            if column in chunk.columns:
                values = chunk[column].astype(object)
                chunk[column] = values.where(values.notna(), None)
            yield _finish(chunk, column, [(start + i, "") for i in range(len(chunk))], path)
            if batch is None:  # no rows at all: the columns only
                return
            start += len(chunk)


def _sdf_tags(path: Path) -> list[str]:
    """Every SD tag name in the file, in order of first appearance (one fast pass over the text),
    so that a tag that only later records carry still gets its column."""
    tag = re.compile(rb"^>.*?<([^>]*)>")
    tags: dict[str, None] = {}
    in_data = header_next = False  # in a record's data block; the next line may name a tag
    with open_bytes(path) as fh:
        for raw in guarded_lines(fh, path):
            if raw.startswith(b"$$$$"):
                in_data = header_next = False
            elif raw.startswith(b"M  END"):
                in_data = header_next = True
            elif in_data:
                match = tag.match(raw) if header_next else None
                if match:
                    tags.setdefault(match.group(1).decode("utf-8", "backslashreplace"), None)
                header_next = not raw.strip()  # values run until a blank line
    return list(tags)


def _read_sdf(path: Path, *, chunk_size: int, **_: Any) -> Iterator[pd.DataFrame]:
    """SDF records, streamed; a record RDKit cannot read gets ``smiles=None``."""
    from rdkit import Chem, rdBase

    from medgen.marking import SDF_TAG

    tags = [t for t in _sdf_tags(path) if t != SDF_TAG]  # a medgen mark is the file's, not a row's
    renames = _renamed(tags, "", ("line", "smiles", "name", READ_ERROR))
    columns = ["line", "smiles", READ_ERROR, "name", *(renames.get(t, t) for t in tags)]
    rows: list[dict[str, Any]] = []
    record = 0
    with open_bytes(path) as raw, rdBase.BlockLogs():
        fh = StopOnGzipError(raw)
        for record, mol in enumerate(Chem.ForwardSDMolSupplier(fh), start=1):
            row: dict[str, Any] = {"line": record, "smiles": None, READ_ERROR: "", "name": ""}
            if mol is not None:
                row["smiles"] = Chem.MolToSmiles(mol)
                try:  # text, as written (GetPropsAsDict would turn "1.50" into 1.5)
                    row["name"] = mol.GetProp("_Name") if mol.HasProp("_Name") else ""
                    names = (t for t in mol.GetPropNames() if t != SDF_TAG)
                    props = {renames.get(t, t): mol.GetProp(t) for t in names}
                    if not props.keys() <= set(columns):  # the fast tag scan missed one
                        log.warning("%s: record %d: tags %s not carried", path, record,
                                    sorted(props.keys() - set(columns)))  # fmt: skip
                    row.update(props)
                except UnicodeDecodeError:
                    row[READ_ERROR] = f"undecodable bytes (not UTF-8) in record {record}"
            rows.append(row)
            if len(rows) >= chunk_size:
                yield pd.DataFrame(rows, columns=columns).fillna({c: "" for c in columns[3:]})
                rows = []
        if fh.error is not None:
            raise gzip_error(path, fh.error, f"in or after record {record}")
    if rows:
        yield pd.DataFrame(rows, columns=columns).fillna({c: "" for c in columns[3:]})
