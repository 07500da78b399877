"""Streaming, parallel screening of molecule files of any size.

``read chunk -> score in worker processes -> filter -> dedup -> write / keep top-k``, with at most
a few chunks in memory at a time. Every input row ends up either in the output or in the rejects
file with the reason (invalid SMILES, the first filter it failed, duplicate, outside top-k).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medgen.chem.extsort import ExternalSorter, sort_frame
from medgen.chem.filters import Filter, build_filters
from medgen.chem.io import MoleculeWriter, read_molecules
from medgen.chem.parallel import map_chunks
from medgen.chem.properties import GROUPS, columns_for, default_n_jobs, score_rows, to_frame

log = logging.getLogger(__name__)

REJECT_COLUMNS = ("line", "input", "reason")


@dataclass
class ScreenSummary:
    """Counts of a screening run (``passed_filter`` counts every filter over all valid rows)."""

    input: str
    out: str
    rejects: str
    rows: int = 0
    valid: int = 0
    invalid: int = 0
    passed_filter: dict[str, int] = field(default_factory=dict)
    passed_all: int = 0
    duplicates: int = 0
    outside_top_k: int = 0
    written: int = 0
    rejected: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def table(self) -> str:
        """A plain-text summary table for the log."""
        lines = [f"{'input rows':<28}{self.rows:>12,}", f"{'valid':<28}{self.valid:>12,}"]
        lines += [f"{'invalid':<28}{self.invalid:>12,}"]
        lines += [f"{'passed ' + k:<28}{v:>12,}" for k, v in self.passed_filter.items()]
        lines += [f"{'passed all filters':<28}{self.passed_all:>12,}"]
        lines += [f"{'duplicates (InChIKey)':<28}{self.duplicates:>12,}"]
        lines += [f"{'outside top_k':<28}{self.outside_top_k:>12,}"]
        lines += [f"{'written':<28}{self.written:>12,}", f"{'rejected':<28}{self.rejected:>12,}"]
        return "\n".join(lines)


def _dedup_key(inchikey: str) -> int:
    # 8-byte digest instead of the 27-character key: ~3x less memory per distinct molecule
    return int.from_bytes(hashlib.blake2b(inchikey.encode(), digest_size=8).digest(), "little")


def default_rejects_path(out: str | os.PathLike) -> Path:
    """``<out without suffixes>.rejects.csv`` beside ``out``."""
    out = Path(out)
    stem = out.name.split(".")[0] or "screen"
    return out.with_name(f"{stem}.rejects.csv")


def screen_file(
    input: str | os.PathLike,
    out: str | os.PathLike,
    *,
    rejects: str | os.PathLike | None = None,
    smiles_column: str | None = None,
    rules: Sequence[str] = (),
    ranges: Sequence[str] = (),
    dedup: bool = False,
    sort_by: str | None = None,
    descending: bool = True,
    top_k: int | None = None,
    groups: Sequence[str] | None = None,
    n_jobs: int | None = None,
    chunk_size: int = 2000,
    limit: int | None = None,
    progress: bool = True,
) -> ScreenSummary:
    """Score and filter ``input`` into ``out``; see the module docstring.

    Args:
        input: ``.smi``/``.csv``/``.tsv``/``.sdf`` (gz or not) or ``.parquet``; other columns of the
            input are carried through to the output.
        out: ``.csv``/``.csv.gz``/``.parquet``/``.sdf`` (properties become SD tags).
        rejects: CSV of rejected rows (``line``, ``input``, ``reason`` and the carried columns);
            default ``<out>.rejects.csv``.
        rules: names from :data:`medgen.chem.filters.RULES` (lipinski, veber, pains, brenk, nih,
            moses). ranges: expressions like ``"qed>=0.5"``, ``"sa<=4"``.
        dedup: keep only the first row of each InChIKey. Memory grows with the number of distinct
            passing molecules (about 100 bytes each), not with the file size.
        sort_by: sort the output by this column (``descending`` by default). Without ``top_k``
            an external merge sort spills sorted runs to a temporary folder beside ``out``; with
            ``top_k`` only the best ``top_k`` rows are kept in memory.
        groups: property groups to compute (None: all); groups the filters need are added.
        n_jobs: worker processes (None: all cores). chunk_size: rows per worker task.
        limit: read only the first ``limit`` rows.
    """
    t0 = time.perf_counter()
    rejects = Path(rejects) if rejects else default_rejects_path(out)
    if Path(out).resolve() == Path(input).resolve():
        raise ValueError(f"out={out} would overwrite the input file")
    summary = ScreenSummary(input=str(input), out=str(out), rejects=str(rejects))
    chosen = list(GROUPS) if groups is None else list(groups)
    if dedup and "identity" not in chosen:
        chosen.append("identity")
    # validate rule names and ranges on score columns before any work (carried columns later)
    build_filters(rules, [r for r in ranges if _is_score_range(r)])
    chosen += [f.group for f in build_filters(rules, []) if f.group and f.group not in chosen]
    n_jobs = default_n_jobs() if n_jobs is None else max(1, int(n_jobs))

    chunks = read_molecules(input, smiles_column=smiles_column, chunk_size=chunk_size, limit=limit)
    peeked = _Peek(chunks)
    first = peeked.first()
    extra = [c for c in first.columns if c not in ("line", "smiles")] if first is not None else []
    filters = build_filters(rules, ranges, extra)
    chosen += [f.group for f in filters if f.group and f.group not in chosen]
    groups_t = tuple(g for g in GROUPS if g in chosen)
    if sort_by is not None:
        _check_sort_column(sort_by, columns_for(groups_t) + extra)
    summary.passed_filter = {f.name: 0 for f in filters}

    pending: list[pd.DataFrame] = []  # input chunks whose scores are in flight, in order
    smiles_chunks = (f["smiles"].tolist() for f in _tee(iter(peeked), pending))
    scored = map_chunks(score_rows, smiles_chunks, n_jobs=n_jobs, args=(groups_t,))
    seen: dict[int, int] = {}
    best: pd.DataFrame | None = None
    template = pd.DataFrame(columns=["line", *columns_for(groups_t), *extra])
    bar = _progress(progress, input)
    # SDF records hold the scored molecule (the largest fragment of a salt); "input" stays a tag
    mol_column = "canonical_smiles" if "identity" in groups_t else "input"
    writer_out = MoleculeWriter(out, smiles_column=mol_column)
    sorter = ExternalSorter(
        sort_by or "line", descending=descending, tmp_dir=Path(out).resolve().parent
    )
    with writer_out as writer, MoleculeWriter(rejects) as reject_writer, sorter:
        for columns in scored:
            source = pending.pop(0)
            frame = _merge(source, to_frame(columns))
            template = frame.iloc[:0]
            ok, reasons = _apply_filters(frame, filters, summary)
            if dedup:
                ok, reasons = _dedup(frame, ok, reasons, seen, summary)
            if writer_out.format == "sdf":  # an SDF record needs a molecule RDKit can read
                ok, reasons = _sdf_writable(frame, ok, reasons, mol_column)
            _write_rejects(reject_writer, frame, ~ok, reasons, extra)
            passed = frame[ok]
            summary.rows += len(frame)
            bar.update(len(frame))
            if top_k is not None:
                best, evicted = _keep_top(best, passed, sort_by, descending, top_k)
                summary.outside_top_k += len(evicted)
                reason = f"outside top_k={top_k}" + (f" by {sort_by}" if sort_by else "")
                _write_rejects(reject_writer, evicted, None, reason, extra)
            elif sort_by is not None:
                sorter.add(passed)
            else:
                writer.write(passed)
        if top_k is not None:
            final = best if best is not None else template
            writer.write(sort_frame(final, sort_by, descending) if sort_by is not None else final)
        elif sort_by is not None:
            for chunk in sorter.sorted_chunks():
                writer.write(chunk)
            if writer.rows == 0:
                writer.write(template)
        summary.written = writer.rows
        summary.rejected = reject_writer.rows
        bar.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    log.info("screened %s -> %s (%d written, %d rejected to %s) in %.1f s", input, out,
             summary.written, summary.rejected, rejects, summary.seconds)  # fmt: skip
    return summary


class _Peek:
    """Look at the first chunk of a stream without losing it."""

    def __init__(self, chunks: Iterator[pd.DataFrame]) -> None:
        self._chunks = chunks
        self._first = next(chunks, None)

    def first(self) -> pd.DataFrame | None:
        return self._first

    def __iter__(self) -> Iterator[pd.DataFrame]:
        if self._first is not None:
            yield self._first
        yield from self._chunks


def _tee(frames: Iterator[pd.DataFrame], pending: list[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Yield frames while queueing them for the consumer of the scored results (same order)."""
    for frame in frames:
        pending.append(frame)
        yield frame


def _is_score_range(expression: str) -> bool:
    from medgen.chem.filters import ALIASES, _column_groups

    name = str(expression).split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
    return ALIASES.get(name.lower(), name) in _column_groups()


def _check_sort_column(sort_by: str, available: list[str]) -> None:
    if sort_by not in available:
        raise ValueError(f"sort_by={sort_by!r} is not a column; choose from {available}")


def _merge(source: pd.DataFrame, scored: pd.DataFrame) -> pd.DataFrame:
    """Scored columns with the input's ``line`` first and its carried columns last."""
    carried = source.drop(columns=["smiles", "line"]).reset_index(drop=True)
    carried = carried.drop(columns=[c for c in carried.columns if c in scored.columns])
    line = source["line"].reset_index(drop=True)
    return pd.concat([line, scored, carried], axis=1)


def _apply_filters(
    frame: pd.DataFrame, filters: list[Filter], summary: ScreenSummary
) -> tuple[pd.Series, pd.Series]:
    """Pass mask and the reason for each failing row (invalid: RDKit's message; else the first
    failing filter)."""
    valid = frame["valid"].astype(bool)
    summary.valid += int(valid.sum())
    summary.invalid += int((~valid).sum())
    reasons = pd.Series("", index=frame.index, dtype=object)
    reasons[~valid] = "invalid: " + frame.loc[~valid, "error"].astype(str)
    ok = valid.copy()
    for flt in filters:
        passed = flt.mask(frame)
        summary.passed_filter[flt.name] += int(passed.sum())
        newly = ok & ~passed
        reasons[newly] = f"failed {flt.name}"
        ok &= passed
    summary.passed_all += int(ok.sum())
    return ok, reasons


def _dedup(frame, ok, reasons, seen: dict[int, int], summary: ScreenSummary):
    ok = ok.copy()
    for idx in frame.index[ok]:
        key = frame.at[idx, "inchikey"]
        if not isinstance(key, str) or not key:
            continue
        digest = _dedup_key(key)
        first_line = seen.setdefault(digest, int(frame.at[idx, "line"]))
        if first_line != int(frame.at[idx, "line"]):
            ok[idx] = False
            reasons[idx] = f"duplicate InChIKey {key} (first at line {first_line})"
            summary.duplicates += 1
    return ok, reasons


def _sdf_writable(frame, ok, reasons, mol_column: str):
    """Move passing rows whose ``mol_column`` does not parse (no SDF record possible) to the
    rejects instead of letting the SDF writer drop them."""
    from medgen.chem.mol import parse_smiles

    ok = ok.copy()
    for idx in frame.index[ok]:
        if parse_smiles(frame.at[idx, mol_column]) is None:
            ok[idx] = False
            reasons[idx] = f"not writable to SDF: {mol_column} does not parse"
    return ok, reasons


def _write_rejects(writer: MoleculeWriter, frame, mask, reasons, extra: list[str]) -> None:
    rows = frame if mask is None else frame[mask]
    out = pd.DataFrame(
        {
            "line": rows["line"].to_numpy(),
            "input": rows["input"].to_numpy(),
            "reason": reasons if isinstance(reasons, str) else reasons[mask].to_numpy(),
        }
    )
    for column in extra:
        if column in rows.columns:
            out[column] = rows[column].to_numpy()
    if len(out) or writer.rows == 0:
        writer.write(out)


def _keep_top(best, passed, sort_by, descending, top_k):
    """Merge ``passed`` into the running top-k; return the new top-k and the rows pushed out."""
    both = passed if best is None else pd.concat([best, passed], ignore_index=True)
    if sort_by is not None:
        both = sort_frame(both, sort_by, descending)
    return both.iloc[:top_k].reset_index(drop=True), both.iloc[top_k:]


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, input: Any):
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(desc=f"screening {Path(str(input)).name}", unit=" mol")
