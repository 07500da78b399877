"""Streaming, parallel screening of molecule files of any size.

``read chunk -> score in worker processes -> filter -> dedup -> write / keep top-k``, with at most
a few chunks in memory at a time. Every input row ends up either in the output or in the rejects
file with the reason (unreadable bytes, invalid or over-long SMILES, the first filter it failed,
duplicate, outside top-k); ``line`` is the physical line where the row starts in the input.
Outputs are checked before any work (:mod:`medgen.chem.paths`) and renamed into place only when
the whole run succeeded, so a failed run leaves the previous outputs as they were.
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
from medgen.chem.guards import MAX_SMILES_LENGTH, check_args, misread, names, precheck
from medgen.chem.io import READ_ERROR, MoleculeWriter, read_molecules
from medgen.chem.parallel import map_chunks
from medgen.chem.paths import (
    check_outputs,
    claim_outputs,
    default_rejects_path,
    output_paths,
    sort_prefix,
)
from medgen.chem.properties import GROUPS, columns_for, default_n_jobs, score_rows, to_frame
from medgen.errors import UserError

__all__ = ["MAX_SMILES_LENGTH", "ScreenSummary", "default_rejects_path", "output_paths"]
__all__ += ["screen_file"]

log = logging.getLogger(__name__)

REJECT_COLUMNS = ("line", "input", "reason")
_READER_COLUMNS = ("line", "smiles", READ_ERROR)


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
    max_smiles_length: int | None = MAX_SMILES_LENGTH,
    progress: bool = True,
) -> ScreenSummary:
    """Score and filter ``input`` into ``out``; see the module docstring.

    Args:
        input: ``.smi``/``.csv``/``.tsv``/``.sdf`` (gz or not) or ``.parquet``; other columns of the
            input are carried through to the output (renamed ``input_<name>`` where a score column
            has the name). A zero-byte or header-only input gives empty outputs (0 rows).
        out: ``.csv``/``.csv.gz``/``.parquet``/``.sdf`` (properties become SD tags); its folder must
            exist. Outputs appear only when the run succeeds (atomic rename); a rerun removes the
            temporaries a killed run of the same outputs left (see :mod:`medgen.chem.paths`).
        rejects: ``.csv``/``.tsv`` (gz or not) or ``.parquet`` of rejected rows (``line``,
            ``input``, ``reason`` and the carried columns); default ``<out>.rejects.csv``. No
            output may be the input or another output.
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
        max_smiles_length: longer SMILES are rejected unscored (None: no limit). Some steps grow
            faster than the molecule (the Murcko scaffold of an n-atom chain takes ~n³ time:
            1 s at 1,000 atoms, 9 s at 2,000); each atom takes at least one character, so the
            default bounds every row to about a second. Drug-like SMILES have < 200 characters.

    Raises:
        UserError: a bad argument (named), an unusable output path, or an input file that is not
            what its name says (:class:`~medgen.errors.InputFileError`, naming file and line).
    """
    t0 = time.perf_counter()
    rules, ranges = names("rules", rules), names("ranges", ranges)
    groups = None if groups is None else names("groups", groups)
    check_args(
        dedup=dedup, descending=descending, progress=progress, top_k=top_k, limit=limit,
        chunk_size=chunk_size, n_jobs=n_jobs, max_smiles_length=max_smiles_length,
        sort_by=sort_by, smiles_column=smiles_column, groups=groups,
    )  # fmt: skip
    paths = output_paths(out, rejects)
    check_outputs([input], paths)
    out, rejects = paths["out"], paths["rejects"]
    summary = ScreenSummary(input=str(input), out=str(out), rejects=str(rejects))
    chosen = list(GROUPS) if groups is None else list(groups)
    if dedup and "identity" not in chosen:
        chosen.append("identity")
    # validate rule names and ranges on score columns before any work (carried columns later)
    build_filters(rules, [r for r in ranges if _is_score_range(r)])
    chosen += [f.group for f in build_filters(rules, []) if f.group and f.group not in chosen]
    n_jobs = default_n_jobs() if n_jobs is None else n_jobs

    chunks = read_molecules(
        input, smiles_column=smiles_column, chunk_size=chunk_size, limit=limit, with_errors=True
    )
    peeked = _Peek(chunks)
    first = peeked.first()
    carried = [c for c in first.columns if c not in _READER_COLUMNS] if first is not None else []
    renames = _score_name_clashes(carried)
    extra = [renames.get(c, c) for c in carried]
    filters = build_filters(rules, ranges, extra)
    chosen += [f.group for f in filters if f.group and f.group not in chosen]
    groups_t = tuple(g for g in GROUPS if g in chosen)
    if sort_by is not None:
        _check_sort_column(sort_by, columns_for(groups_t) + extra)
    summary.passed_filter = {f.name: 0 for f in filters}

    pending: list[tuple[pd.DataFrame, pd.Series]] = []  # chunks whose scores are in flight
    smiles_chunks = _prechecked(iter(peeked), pending, max_smiles_length)
    seen: dict[int, int] = {}
    best: pd.DataFrame | None = None
    template = pd.DataFrame(columns=["line", *columns_for(groups_t), *extra])
    reject_template = pd.DataFrame(columns=[*REJECT_COLUMNS, *extra])
    # SDF records hold the scored molecule (the largest fragment of a salt); "input" stays a tag
    mol_column = "canonical_smiles" if "identity" in groups_t else "input"
    with claim_outputs(paths):
        scored = map_chunks(score_rows, smiles_chunks, n_jobs=n_jobs, args=(groups_t,))
        writer_out = MoleculeWriter(out, smiles_column=mol_column)
        sorter = ExternalSorter(
            sort_by or "line", descending=descending, tmp_dir=out.resolve().parent,
            tmp_prefix=sort_prefix(out),
        )  # fmt: skip
        bar = _progress(progress, input)
        with writer_out as writer, MoleculeWriter(rejects) as reject_writer, sorter:
            for columns in scored:
                source, pre = pending.pop(0)
                frame = _merge(source, to_frame(columns), renames, pre)
                template = frame.iloc[:0]
                ok, reasons = _apply_filters(frame, filters, summary, pre)
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
                final = sort_frame(final, sort_by, descending) if sort_by is not None else final
                writer.write(final)
            elif sort_by is not None:
                for chunk in sorter.sorted_chunks():
                    writer.write(chunk)
            if writer.rows == 0:  # no rows (or an empty input): the columns still
                writer.write(template)
            if reject_writer.rows == 0:
                reject_writer.write(reject_template)
            # both files complete before either is renamed into place
            writer.finish()
            reject_writer.finish()
            summary.written = writer.rows
            summary.rejected = reject_writer.rows
            bar.close()
    summary.seconds = round(time.perf_counter() - t0, 3)
    if summary.rows == 0:
        log.warning("%s holds no molecules: %s and %s have no rows", input, out, rejects)
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


def _prechecked(
    frames: Iterator[pd.DataFrame], pending: list, max_length: int | None
) -> Iterator[list[str | None]]:
    """The SMILES to score per chunk (None for rows refused by :func:`precheck`), queueing each
    chunk and its refusals for the consumer of the scored results (same order)."""
    for frame in frames:
        pre = precheck(frame, READ_ERROR, max_length)
        pending.append((frame, pre))
        yield [None if r else s for s, r in zip(frame["smiles"].tolist(), pre, strict=True)]


def _score_name_clashes(carried: list[str]) -> dict[str, str]:
    """``{name: input_<name>}`` for carried columns named like a score column (kept, renamed)."""
    scores = set(columns_for(GROUPS))
    taken, renames = scores | set(carried) | {"line"}, {}
    for column in carried:
        if column in scores:
            new = f"input_{column}"
            while new in taken:
                new = f"input_{new}"
            taken.add(new)
            renames[column] = new
    if renames:
        log.warning("input columns renamed (score columns have their names): %s", renames)
    return renames


def _is_score_range(expression: str) -> bool:
    from medgen.chem.filters import ALIASES, _column_groups

    name = str(expression).split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
    return ALIASES.get(name.lower(), name) in _column_groups()


def _check_sort_column(sort_by: str, available: list[str]) -> None:
    if sort_by not in available:
        raise UserError(f"sort_by={sort_by!r} is not a column; choose from {available}")


def _merge(
    source: pd.DataFrame, scored: pd.DataFrame, renames: dict[str, str], pre: pd.Series
) -> pd.DataFrame:
    """Scored columns with the input's ``line`` first and its carried columns last; rows refused
    before scoring are invalid with their reason, and keep their input text."""
    carried = source.drop(columns=list(_READER_COLUMNS)).reset_index(drop=True)
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


def _apply_filters(
    frame: pd.DataFrame, filters: list[Filter], summary: ScreenSummary, pre: pd.Series
) -> tuple[pd.Series, pd.Series]:
    """Pass mask and the reason for each failing row (invalid: RDKit's message; refused before
    scoring: that reason as it is; else the first failing filter)."""
    valid = frame["valid"].astype(bool)
    summary.valid += int(valid.sum())
    summary.invalid += int((~valid).sum())
    reasons = pd.Series("", index=frame.index, dtype=object)
    reasons[~valid] = "invalid: " + frame.loc[~valid, "error"].astype(str)
    refused = (pre != "").to_numpy()
    reasons[refused] = pre.to_numpy()[refused]
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
