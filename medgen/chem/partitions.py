"""Partitions of a screen: the unit of work, of output and of resume.

The input (one file, or the files of a folder or glob in name order) is cut into partitions of
``partition_size`` rows; partition ``k`` of file ``f`` is named ``part-<f:05d>-<k:06d>``. Each
is scored and filtered on its own (:func:`score_chunk`, the same function for every engine) and
written into the screen's work folder, every file atomically::

    <work>/plan.json                    the settings the partitions were made with
    <work>/scored/part-00000-000003.parquet     rows that passed every filter
    <work>/rejects/part-00000-000003.parquet    the others, with line and reason
    <work>/done/part-00000-000003.json          counts; written last: the partition is complete

A rerun with the same plan skips partitions whose ``done`` file exists, so a killed run resumes
where it stopped and ``shard=i/N`` runs fill one work folder without clashing. Both tables carry
``_order`` (``file index * 2**40 + line``): the input order, for ties and for dedup's "first".
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from medgen.chem.guards import misread, precheck
from medgen.chem.io import arrow_type
from medgen.chem.readers import READ_ERROR
from medgen.errors import OutputExistsError
from medgen.utils.atomic import atomic_path, atomic_write_json

PLAN, SCORED, REJECTS, DONE = "plan.json", "scored", "rejects", "done"
ORDER = "_order"  # internal column: file index * 2**40 + line
LINE_BITS = 40
REJECT_COLUMNS = ("line", "input", "reason")
READER_COLUMNS = ("line", "smiles", READ_ERROR)
#: decimals kept in screen outputs (the filters see the rounded values, so outputs agree with them)
DECIMALS = {"mw": 3, "clogp": 3, "tpsa": 2, "fraction_csp3": 3, "qed": 4, "sa": 3}


def partition_name(file_index: int, number: int) -> str:
    return f"part-{file_index:05d}-{number:06d}"


@dataclass(frozen=True)
class ChunkSpec:
    """What a worker needs to score one partition of one input file (plain, picklable values)."""

    groups: tuple[str, ...]
    rules: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # carried columns, after renames
    renames: tuple[tuple[str, str], ...] = ()  # carried columns named like score columns
    max_smiles_length: int | None = None
    sdf_column: str | None = None  # SDF output: rows whose molecule here does not parse are rejects
    keep_rejects: bool = True
    file_index: int = 0
    source: str | None = None  # the file's name in a multi-file input (a `source` column)


@dataclass
class ChunkResult:
    """A scored chunk: passing rows, rejected rows (None when only counted) and counts."""

    passed: pd.DataFrame
    rejects: pd.DataFrame | None
    counts: dict[str, Any] = field(default_factory=dict)


@lru_cache(maxsize=64)
def _filters(rules: tuple[str, ...], ranges: tuple[str, ...], extra: tuple[str, ...]):
    from medgen.chem.filters import build_filters

    return build_filters(rules, ranges, extra)


def score_chunk(frame: pd.DataFrame, spec: ChunkSpec) -> ChunkResult:
    """Score, round and filter a read chunk (``line``, ``smiles``, ``read_error``, carried)."""
    from medgen.chem.properties import score_rows, to_frame

    pre = precheck(frame, READ_ERROR, spec.max_smiles_length)
    texts = [None if r else s for s, r in zip(frame["smiles"].tolist(), pre, strict=True)]
    table = _merge(frame, to_frame(score_rows(texts, spec.groups)), dict(spec.renames), pre)
    for column, decimals in DECIMALS.items():
        if column in table.columns:
            table[column] = table[column].round(decimals)
    filters = _filters(spec.rules, spec.ranges, spec.extra)
    ok, reasons, counts = _apply_filters(table, filters, pre)
    if spec.sdf_column is not None:  # an SDF record needs a molecule RDKit can read
        ok, reasons = _sdf_writable(table, ok, reasons, spec.sdf_column)
    table["error"] = table["error"].where(table["error"].astype(str) != "", None)
    for column in spec.extra:  # an empty cell of a text file is a missing value
        if table[column].dtype == object:
            table[column] = table[column].where(table[column].astype(str) != "", None)
    table[ORDER] = table["line"].astype("int64") + (spec.file_index << LINE_BITS)
    if spec.source is not None:
        table.insert(1, "source", spec.source)
    passed = table[ok.to_numpy()].rename(columns={"input": "smiles"}).reset_index(drop=True)
    counts["rejected"] = int((~ok).sum())
    rejects = None
    if spec.keep_rejects:
        bad = table[(~ok).to_numpy()]
        rejects = pd.DataFrame({"line": bad["line"].to_numpy()})
        if spec.source is not None:
            rejects["source"] = spec.source
        rejects["input"] = bad["input"].to_numpy()
        rejects["reason"] = reasons[~ok].to_numpy()
        for column in spec.extra:
            rejects[column] = bad[column].to_numpy()
        rejects[ORDER] = bad[ORDER].to_numpy()
    return ChunkResult(passed, rejects, counts)


def _merge(source: pd.DataFrame, scored: pd.DataFrame, renames: dict[str, str], pre: pd.Series):
    """``line``, the score columns, then the carried ones; rows refused before scoring are invalid
    with their reason, and keep their input text."""
    carried = source.drop(columns=list(READER_COLUMNS)).reset_index(drop=True)
    line = source["line"].reset_index(drop=True)
    frame = pd.concat([line, scored, carried.rename(columns=renames)], axis=1)
    refused = (pre != "").to_numpy()
    frame["input"] = source["smiles"].to_numpy()
    frame.loc[refused, "valid"] = False
    frame.loc[refused, "error"] = pre.to_numpy()[refused]
    rows = zip(frame["input"].tolist(), frame["valid"].tolist(), strict=True)
    for i, reason in enumerate(misread(text) if ok else "" for text, ok in rows):
        if reason:  # RDKit read only part of the text
            frame.loc[frame.index[i], ["valid", "error"]] = [False, reason]
    return frame


def _apply_filters(frame: pd.DataFrame, filters, pre: pd.Series):
    """Pass mask, the reason for each failing row (invalid: RDKit's message; refused before
    scoring: that reason as it is; else the first failing filter) and the counts."""
    valid = frame["valid"].astype(bool)
    counts: dict[str, Any] = {"rows": len(frame), "valid": int(valid.sum())}
    counts["invalid"] = len(frame) - counts["valid"]
    reasons = pd.Series("", index=frame.index, dtype=object)
    reasons[~valid] = "invalid: " + frame.loc[~valid, "error"].astype(str)
    refused = (pre != "").to_numpy()
    reasons[refused] = pre.to_numpy()[refused]
    ok = valid.copy()
    counts["passed_filter"] = {}
    for flt in filters:
        passed = flt.mask(frame)
        counts["passed_filter"][flt.name] = int(passed.sum())
        reasons[ok & ~passed] = f"failed {flt.name}"
        ok &= passed
    counts["passed_all"] = int(ok.sum())
    return ok, reasons, counts


def _sdf_writable(frame, ok, reasons, column: str):
    """Move passing rows whose ``column`` does not parse (no SDF record possible) to the rejects
    instead of letting the SDF writer drop them."""
    from medgen.chem.mol import parse_smiles

    ok = ok.copy()
    for idx in frame.index[ok]:
        if parse_smiles(frame.at[idx, column]) is None:
            ok[idx] = False
            reasons[idx] = f"not writable to SDF: {column} does not parse"
    return ok, reasons


def combine(results: Sequence[ChunkResult]) -> ChunkResult:
    """The chunks of one partition as one result (counts added up)."""
    counts: dict[str, Any] = {}
    for part in results:
        for key, value in part.counts.items():
            if isinstance(value, dict):
                into = counts.setdefault(key, {})
                for k, v in value.items():
                    into[k] = into.get(k, 0) + v
            else:
                counts[key] = counts.get(key, 0) + value
    passed = pd.concat([r.passed for r in results], ignore_index=True)
    rejected = [r.rejects for r in results if r.rejects is not None]
    rejects = pd.concat(rejected, ignore_index=True) if rejected else None
    return ChunkResult(passed, rejects, counts)


# ------------------------------------------------------------------------------ the work folder


def write_partition(work: str | os.PathLike, name: str, result: ChunkResult) -> dict[str, Any]:
    """Write one partition's tables, then its ``done`` record (so it counts only when complete)."""
    work = Path(work)
    for sub, table in ((SCORED, result.passed), (REJECTS, result.rejects)):
        if table is not None:
            (work / sub).mkdir(parents=True, exist_ok=True)
            write_table(table, work / sub / f"{name}.parquet")
    (work / DONE).mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / DONE / f"{name}.json", result.counts)
    return result.counts


def run_partition(frame: pd.DataFrame, spec: ChunkSpec, work: str, name: str) -> dict[str, Any]:
    """Score one partition and write it into ``work`` (the task a Dask worker runs)."""
    return write_partition(work, name, score_chunk(frame, spec))


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """``frame`` as a parquet file, atomically, with one type per column whatever the values
    (text columns are strings even when every value is missing), so partitions union cleanly."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fields = [pa.field(str(c), arrow_type(frame[c].dtype)) for c in frame.columns]
    table = pa.Table.from_pandas(frame, schema=pa.schema(fields), preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_done(work: Path, name: str) -> dict[str, Any] | None:
    """The counts of a complete partition, or None."""
    try:
        return json.loads((work / DONE / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def check_plan(work: Path, plan: dict[str, Any], *, overwrite: bool) -> bool:
    """Whether ``work`` may be used for ``plan`` as it is (True), must be cleared first (False,
    only with ``overwrite``), or holds other settings (:class:`OutputExistsError`)."""
    path = work / PLAN
    if not path.is_file():
        return True
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        old = {}
    if old == plan:
        return True
    if overwrite:
        return False
    changed = sorted(k for k in {*plan, *old} if plan.get(k) != old.get(k))
    raise OutputExistsError(
        f"{work} holds the partitions of an unfinished screen made with other settings "
        f"(changed: {', '.join(changed)}); rerun with those settings to resume it, or pass "
        "overwrite=true to discard it"
    )
