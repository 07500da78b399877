"""The last step of a screen: one table from its partitions, through DuckDB.

InChIKey dedup (the first row in input order wins), ``sort_by`` over every row and ``top_k``
are SQL over the partitions' parquet files, so memory stays within ``memory_limit`` whatever
the row count: DuckDB spills to a folder ``.<out name>.sort-<random>`` beside ``out`` (removed
afterwards; a killed run's is removed by the next run, see :mod:`medgen.chem.paths`).

Ordering, for ``sort_by`` and for ties: numbers before text, missing values (null, NaN) last, in
the requested direction; a text column whose values are numbers (carried from a CSV) sorts as
numbers; ties keep the input order (file, then line). Without sort, dedup or top-k the rows keep
the input order as they are.

Outputs: ``.parquet`` and datasets (a folder: ``part-<i>.parquet`` files) are written by DuckDB;
``.csv``/``.tsv``/``.smi``/``.sdf`` stream through :class:`medgen.chem.io.MoleculeWriter`. Every
output is renamed into place only once all of them are complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medgen.chem.partitions import LINE_BITS, ORDER, REJECT_COLUMNS, REJECTS, SCORED
from medgen.utils.atomic import atomic_path

log = logging.getLogger(__name__)

BATCH_ROWS = 20_000  # rows per batch streamed to a CSV/SDF writer
DATASET_FILE_BYTES = "512MB"  # size of one parquet file of a dataset output


@dataclass(frozen=True)
class MergeSettings:
    dedup: bool = False
    sort_by: str | None = None
    descending: bool = True
    top_k: int | None = None
    keep_rejects: bool = True
    memory_limit: str = "2GB"
    threads: int = 1
    mol_column: str = "smiles"  # SDF: the molecule of each record
    name_column: str | None = None  # SDF: the record title (_Name)


@dataclass
class MergeCounts:
    written: int = 0
    rejected: int = 0
    duplicates: int = 0
    outside_top_k: int = 0


def is_dataset(path: str | os.PathLike) -> bool:
    """An output named without a suffix is a parquet dataset (a folder of parquet files)."""
    return Path(path).suffix == ""


def merge(
    work: Path,
    names: Sequence[str],
    *,
    out: Path,
    rejects: Path,
    settings: MergeSettings,
    template: Sequence[str],
    spill_prefix: str,
    partition_rejected: int,
) -> MergeCounts:
    """Write ``out`` (and ``rejects``) from the partitions ``names`` of ``work``.

    ``template``: the output's columns when there are no partitions at all (an empty input).
    ``partition_rejected``: rows the partitions rejected (counted when rejects are not kept).
    """
    import duckdb

    counts = MergeCounts(rejected=partition_rejected)
    spill = Path(tempfile.mkdtemp(prefix=spill_prefix, dir=out.resolve().parent))
    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit='{settings.memory_limit}'")
        con.execute(f"SET temp_directory='{_sql_text(str(spill))}'")
        con.execute(f"SET threads={max(1, settings.threads)}")
        con.execute("SET preserve_insertion_order=true")
        scored = bool(names)
        if not scored:
            empty = ", ".join(f"NULL::VARCHAR AS {_ident(c)}" for c in template)
            con.execute(f"CREATE VIEW scored AS SELECT {empty} LIMIT 0")
        else:
            con.execute(f"CREATE VIEW scored AS SELECT * FROM {_files(work / SCORED, names)}")
        if settings.keep_rejects and names:
            con.execute("CREATE VIEW partition_rejects AS SELECT * FROM "
                        f"{_files(work / REJECTS, names)}")  # fmt: skip
        columns = [r[0] for r in con.execute("DESCRIBE scored").fetchall()]
        types = dict(
            con.execute("SELECT column_name, column_type FROM (DESCRIBE scored)").fetchall()
        )
        multi = "source" in columns
        extra_rejects: list[str] = []  # queries of rows rejected here, in the rejects' columns
        has_rejects = settings.keep_rejects and scored
        reject_columns = _reject_columns(con, has_rejects, columns)

        kept = "scored"
        if settings.dedup and scored:
            kept, dup_query, counts.duplicates = _dedup(con, columns, multi, reject_columns)
            extra_rejects.append(dup_query)
        order = _order_by(settings, types)
        if settings.top_k is not None:
            con.execute(f"CREATE TEMP TABLE top AS SELECT * FROM {kept} ORDER BY {order} "
                        f"LIMIT {int(settings.top_k)}")  # fmt: skip
            total = _scalar(con, f"SELECT count(*) FROM {kept}")
            top = _scalar(con, "SELECT count(*) FROM top")
            counts.outside_top_k = int(total - top)
            reason = f"outside top_k={settings.top_k}" + (
                f" by {settings.sort_by}" if settings.sort_by else ""
            )
            evicted = f"SELECT * FROM {kept} ANTI JOIN top USING ({ORDER})"
            extra_rejects.append(_as_rejects(evicted, f"'{_sql_text(reason)}'", reject_columns))
            final = f"SELECT * EXCLUDE ({ORDER}) FROM top ORDER BY {order}"
        elif settings.sort_by is not None or settings.dedup:
            final = f"SELECT * EXCLUDE ({ORDER}) FROM {kept} ORDER BY {order}"
        else:
            final = f"SELECT * EXCLUDE ({ORDER}) FROM scored"
        if not scored:
            final = "SELECT * FROM scored"

        with contextlib.ExitStack() as stack:
            counts.written = _write(con, final, out, settings, stack)
            if settings.keep_rejects:
                query = _rejects_query(has_rejects, reject_columns, extra_rejects)
                counts.rejected = _write(con, query, rejects, settings, stack)
            else:
                counts.rejected += counts.duplicates + counts.outside_top_k
                log.info("keep_rejects=false: %d rejected rows counted, not written",
                         counts.rejected)  # fmt: skip
            # every output is complete here; leaving the stack renames them into place
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    return counts


def _files(folder: Path, names: Sequence[str]) -> str:
    """``read_parquet`` of the partitions ``names`` in ``folder``, in order: a glob when they are
    all the folder holds (partition names sort in input order), else the list of files."""
    import glob

    present = sorted(p.stem for p in folder.glob("part-*.parquet"))
    if present == list(names) and not glob.has_magic(str(folder)):
        source = f"'{_sql_text(str(folder))}/part-*.parquet'"
    else:
        source = "[" + ", ".join(f"'{_sql_text(str(folder / n))}.parquet'" for n in names) + "]"
    return f"read_parquet({source}, union_by_name=true)"


def _reject_columns(con, has_rejects: bool, scored_columns: list[str]) -> list[str]:
    if has_rejects:
        return [r[0] for r in con.execute("DESCRIBE partition_rejects").fetchall()]
    multi = ["source"] if "source" in scored_columns else []
    return ["line", *multi, *REJECT_COLUMNS[1:], ORDER]


def _dedup(con, columns: list[str], multi: bool, reject_columns: list[str]):
    """``(kept view, query of the duplicates as rejects, number of duplicates)``."""
    first_source = ", arg_min(source, _order) AS _first_source" if multi else ""
    con.execute(
        f"CREATE TEMP TABLE firsts AS SELECT inchikey, min({ORDER}) AS _first{first_source} "
        "FROM scored WHERE inchikey IS NOT NULL AND inchikey <> '' "
        "GROUP BY inchikey HAVING count(*) > 1"
    )
    con.execute(
        "CREATE VIEW kept AS SELECT s.* FROM scored s LEFT JOIN firsts f USING (inchikey) "
        f"WHERE f._first IS NULL OR s.{ORDER} = f._first"
    )
    where = f"FROM scored s JOIN firsts f USING (inchikey) WHERE s.{ORDER} <> f._first"
    duplicates = _scalar(con, f"SELECT count(*) {where}")
    line = f"(f._first % {1 << LINE_BITS})"
    of = " || ' of ' || f._first_source" if multi else ""
    reason = f"'duplicate InChIKey ' || s.inchikey || ' (first at line ' || {line}{of} || ')'"
    query = _as_rejects(f"SELECT s.*, {reason} AS _reason {where}", "_reason", reject_columns)
    return "kept", query, int(duplicates)


def _as_rejects(rows: str, reason: str, reject_columns: list[str]) -> str:
    """``rows`` (output columns) as reject rows: ``input`` is their SMILES, ``reason`` given."""
    select = []
    for column in reject_columns:
        if column == "input":
            select.append("smiles AS input")
        elif column == "reason":
            select.append(f"{reason} AS reason")
        else:
            select.append(_ident(column))
    return f"SELECT {', '.join(select)} FROM ({rows})"


def _rejects_query(has_rejects: bool, columns: list[str], extra: list[str]) -> str:
    parts = ["SELECT * FROM partition_rejects"] if has_rejects else []
    parts += extra
    if not parts:
        empty = ", ".join(
            f"NULL::{'BIGINT' if c in ('line', ORDER) else 'VARCHAR'} AS {_ident(c)}"
            for c in columns
        )
        return f"SELECT * EXCLUDE ({ORDER}) FROM (SELECT {empty} LIMIT 0)"
    if not extra:  # the partitions' rejects in input order as they are
        return f"SELECT * EXCLUDE ({ORDER}) FROM ({parts[0]})"
    union = " UNION ALL BY NAME ".join(f"({p})" for p in parts)
    return f"SELECT * EXCLUDE ({ORDER}) FROM ({union}) ORDER BY {ORDER}"


def _order_by(settings: MergeSettings, types: dict[str, str]) -> str:
    """ORDER BY terms for ``sort_by`` (see the module docstring), ties in input order."""
    column = settings.sort_by
    if column is None:
        return ORDER
    direction = "DESC" if settings.descending else "ASC"
    col = _ident(column)
    kind = types.get(column, "VARCHAR").upper()
    if kind in ("VARCHAR", "TEXT", "STRING") or kind.startswith("VARCHAR"):
        number = f"TRY_CAST({col} AS DOUBLE)"
        rank = (f"CASE WHEN {col} IS NULL OR isnan({number}) THEN 2 "
                f"WHEN {number} IS NULL THEN 1 ELSE 0 END")  # fmt: skip
        return f"{rank}, {number} {direction}, {col} {direction}, {ORDER}"
    if kind in ("DOUBLE", "FLOAT", "REAL"):
        return f"({col} IS NULL OR isnan({col})), {col} {direction}, {ORDER}"
    return f"({col} IS NULL), {col} {direction}, {ORDER}"


# ------------------------------------------------------------------------------------ writing


def _write(con, query: str, path: Path, settings: MergeSettings, stack) -> int:
    """Write ``query``'s rows to a temporary of ``path`` (renamed when ``stack`` closes)."""
    from medgen.chem.readers import file_format

    if is_dataset(path):
        tmp = stack.enter_context(atomic_folder(path))
        rows = _copy(con, query, tmp, f", FILE_SIZE_BYTES '{DATASET_FILE_BYTES}', "
                     "FILENAME_PATTERN 'part-{i}'")  # fmt: skip
        if not any(tmp.iterdir()):  # no rows: DuckDB wrote no file; keep the columns
            _copy(con, query, tmp / "part-0.parquet")
        return rows
    if file_format(path) == "parquet":
        return _copy(con, query, stack.enter_context(atomic_path(path)))
    from medgen.chem.io import MoleculeWriter

    writer = MoleculeWriter(
        path, smiles_column=settings.mol_column, name_column=settings.name_column
    )
    stack.enter_context(writer)
    for frame in _frames(con, query):
        writer.write(frame)
    writer.finish()  # complete now; renamed when the stack closes
    return writer.rows


def _scalar(con, sql: str) -> Any:
    """The one value ``sql`` returns (fetched whole: DuckDB allows no unfinished result)."""
    return con.execute(sql).fetchall()[0][0]


def _copy(con, query: str, target: Path, options: str = "") -> int:
    """``COPY`` the rows of ``query`` to a parquet file or folder; returns the row count."""
    sql = (
        f"COPY ({query}) TO '{_sql_text(str(target))}' (FORMAT parquet, COMPRESSION zstd{options})"
    )
    return int(_scalar(con, sql))


def _frames(con, query: str) -> Iterator[Any]:
    """``query``'s rows as DataFrames of :data:`BATCH_ROWS` rows (at least one, maybe empty),
    with nullable integers and booleans (a missing count stays missing, not NaN)."""
    import pandas as pd
    import pyarrow as pa

    result = con.sql(query)
    reader = (  # duckdb >= 1.4 names it to_arrow_reader
        result.to_arrow_reader(BATCH_ROWS)
        if hasattr(result, "to_arrow_reader")
        else result.fetch_record_batch(BATCH_ROWS)
    )
    mapping = {
        pa.int64(): pd.Int64Dtype(),
        pa.int32(): pd.Int64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
    }
    any_rows = False
    for batch in reader:
        any_rows = True
        yield batch.to_pandas(types_mapper=mapping.get)
    if not any_rows:
        yield reader.schema.empty_table().to_pandas(types_mapper=mapping.get)


@contextlib.contextmanager
def atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside ``path``, renamed to ``path`` on success (an existing ``path`` is
    replaced: moved aside first, deleted after the rename); removed on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    from medgen.utils.atomic import TMP_MARKER

    tmp = path.with_name(f".{path.name}{TMP_MARKER}{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}{TMP_MARKER}{secrets.token_hex(4)}")
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _ident(name: str) -> str:
    return '"' + str(name).replace('"', '""') + '"'


def _sql_text(text: str) -> str:
    return text.replace("'", "''")
