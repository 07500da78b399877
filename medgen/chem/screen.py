"""Screening molecule files of any size, on this machine or a Dask cluster, resumable.

``read -> partitions -> score and filter (engine) -> partition files -> DuckDB -> out``:

1. The input (a file, a folder or a glob) is read once, in order, and cut into partitions of
   ``partition_size`` rows (:mod:`medgen.chem.partitions`).
2. An engine scores the partitions that are not done yet (:mod:`medgen.chem.engines`: ``local``
   processes or ``dask``); each partition's passing rows and rejects are written atomically into
   the work folder ``.<out name>.parts/``, so a killed run resumes where it stopped and
   ``shard=i/N`` runs split the partitions between independent processes.
3. DuckDB dedups, sorts and cuts ``top_k`` over all partitions in bounded memory and writes
   ``out`` and the rejects (:mod:`medgen.chem.merge`); the work folder is removed.

Every input row ends up either in the output or in the rejects with the reason (unreadable bytes,
invalid or over-long SMILES, the first filter it failed, duplicate, outside top-k); ``line`` is the
physical line where the row starts in its file. Outputs are checked before any work
(:mod:`medgen.chem.paths`) and renamed into place only when the whole run succeeded, so a failed
run leaves the previous outputs as they were; an existing ``out`` is replaced only with
``overwrite=True``.

A screen of a user's file does not claim the output is synthetic; when the input carries medgen's
synthetic mark (:mod:`medgen.marking`: a ``medgen sample`` output), the output and the rejects
keep that mark, and the dual-use alerts (:mod:`medgen.chem.dualuse`, a ``dualuse_alerts``
column) are on unless ``dualuse=False``.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medgen.chem.engines import ENGINES, Progress, Task, count_rows_later, run_dask, run_local
from medgen.chem.filters import build_filters
from medgen.chem.guards import MAX_SMILES_LENGTH, check_args, names
from medgen.chem.io import read_molecules
from medgen.chem.merge import MergeSettings, merge
from medgen.chem.partitions import (
    ORDER,
    PLAN,
    READER_COLUMNS,
    ChunkSpec,
    check_plan,
    partition_name,
    read_done,
)
from medgen.chem.paths import (
    _FolderLock,
    check_not_input,
    check_outputs,
    claim_outputs,
    default_rejects_path,
    input_files,
    is_dataset,
    output_paths,
    sort_prefix,
    work_folder,
)
from medgen.chem.properties import GROUPS, OPT_IN_GROUPS, columns_for, default_n_jobs
from medgen.errors import ConfigError, OutputExistsError, UserError
from medgen.utils.atomic import TMP_MARKER, atomic_write_json

__all__ = ["MAX_SMILES_LENGTH", "ScreenSummary", "default_rejects_path", "output_paths"]
__all__ += ["parse_shard", "screen_file"]

log = logging.getLogger(__name__)

#: carried columns with these names are renamed ``input_<name>`` (the output's own columns)
RESERVED = frozenset({"line", "smiles", "source", ORDER})
#: column names that hold an input's id, in order of preference (the SDF title, ``_Name``)
ID_COLUMNS = ("name", "id", "idnumber", "compound_id", "catalog_id", "mol_id", "molecule_id",
              "zinc_id", "chembl_id", "title")  # fmt: skip


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
    engine: str = "local"
    partitions: int = 0
    resumed_partitions: int = 0
    shard: str | None = None

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
        lines += [f"{'partitions (resumed)':<28}{self.partitions:>12,} ({self.resumed_partitions})"]
        return "\n".join(lines)

    def add(self, counts: dict[str, Any]) -> None:
        for key in ("rows", "valid", "invalid", "passed_all", "rejected"):
            setattr(self, key, getattr(self, key) + int(counts.get(key, 0)))
        for name, n in counts.get("passed_filter", {}).items():
            self.passed_filter[name] = self.passed_filter.get(name, 0) + int(n)


def parse_shard(shard: str | None) -> tuple[int, int] | None:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N`` (None stays None)."""
    if shard is None:
        return None
    parts = str(shard).split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        i, n = int(parts[0]), int(parts[1])
        if n >= 1 and 0 <= i < n:
            return i, n
    raise ConfigError("shard", shard, "'i/N' with 0 <= i < N, e.g. shard=0/4 (or null)")


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
    engine: str = "local",
    scheduler: str | None = None,
    cluster: dict[str, Any] | None = None,
    partition_size: int = 50_000,
    shard: str | None = None,
    overwrite: bool = False,
    keep_rejects: bool = True,
    memory_limit: str = "2GB",
    dualuse: bool | None = None,
) -> ScreenSummary:
    """Score and filter ``input`` into ``out``; see the module docstring.

    Args:
        input: a molecule file — ``.smi``/``.cxsmiles``/``.csv``/``.tsv``/``.sdf`` (compressed
            with ``.gz``, ``.bz2``, ``.zst`` or not) or ``.parquet`` —, a folder of them or a
            glob pattern (``"lib/*.cxsmiles.bz2"``). Other columns of the input are carried
            through (renamed ``input_<name>`` where an output column has the name); with several
            files a ``source`` column names each row's file. An empty input gives empty outputs.
        out: ``.csv``/``.csv.gz``/``.parquet``/``.sdf`` (properties become SD tags, the input's id
            the title), or a name without suffix for a parquet dataset (a folder). Its folder
            must exist; an existing ``out`` is replaced only with ``overwrite=True``.
        rejects: ``.csv``/``.tsv`` (gz or not), ``.parquet`` or a dataset of rejected rows
            (``line``, ``input``, ``reason`` and the carried columns); default
            ``<out>.rejects.csv`` (``<out>_rejects`` for a dataset). ``keep_rejects=False``
            counts them in the summary without writing them.
        rules: names from :data:`medgen.chem.filters.RULES` (lipinski, veber, pains, brenk, nih,
            moses). ranges: expressions like ``"qed>=0.5"``, ``"sa<=4"``.
        dedup: keep only the first row (in input order) of each InChIKey.
        sort_by: sort the output by this column (``descending`` by default); ``top_k`` keeps the
            best ``top_k`` rows (the first ones without ``sort_by``). Dedup, sort and top-k run
            in DuckDB within ``memory_limit``, spilling to disk beside ``out``.
        groups: property groups to compute (None: all); groups the filters need are added.
        n_jobs: local worker processes, or the LocalCluster's workers (None: all cores).
        chunk_size: rows per local worker task. partition_size: rows per partition (the unit of
            resume and of a Dask task).
        limit: read only the first ``limit`` rows.
        max_smiles_length: longer SMILES are rejected unscored (None: no limit); some RDKit steps
            grow as the cube of the chain length, so this bounds every row to about a second.
        engine: ``local`` or ``dask``; ``scheduler``: a Dask scheduler address; ``cluster``: a
            ``_target_`` mapping of a Dask cluster class (plus ``jobs``: how many to start).
        shard: ``"i/N"``: score only partitions ``k`` with ``k % N == i`` into the work folder of
            ``out`` and stop; a run without ``shard`` over the same input then merges them.
        dualuse: add the ``dualuse_alerts`` column (dual-use class names); None: only when the
            input carries medgen's synthetic mark (generated molecules).

    Raises:
        UserError: a bad argument (named), an unusable or existing output path, or an input file
            that is not what its name says (:class:`~medgen.errors.InputFileError`, naming file
            and line).
    """
    t0 = time.perf_counter()
    rules, ranges = names("rules", rules), names("ranges", ranges)
    groups = None if groups is None else names("groups", groups)
    check_args(
        dedup=dedup, descending=descending, progress=progress, top_k=top_k, limit=limit,
        chunk_size=chunk_size, n_jobs=n_jobs, max_smiles_length=max_smiles_length,
        sort_by=sort_by, smiles_column=smiles_column, groups=groups,
    )  # fmt: skip
    check_engine_args(engine, partition_size, overwrite, keep_rejects, shard, memory_limit)
    sharding = parse_shard(shard)
    files, root = input_files(input)
    paths = output_paths(out, rejects)
    check_outputs(files, paths)
    check_not_input(input, root, paths)
    out, rejects = paths["out"], paths["rejects"]
    if out.exists() and not overwrite:
        raise OutputExistsError(
            f"out={out} exists; pass overwrite=true to replace it, or choose another out"
        )
    chosen = [g for g in GROUPS if g not in OPT_IN_GROUPS] if groups is None else list(groups)
    mark = input_mark(files)
    if dualuse is None:
        dualuse = mark is not None
    if dualuse and "dualuse" not in chosen:
        chosen.append("dualuse")
    if dedup and "identity" not in chosen:
        chosen.append("identity")
    # validate rule names and ranges on score columns before any work (carried columns later)
    build_filters(rules, [r for r in ranges if is_score_range(r)])
    chosen += [f.group for f in build_filters(rules, []) if f.group and f.group not in chosen]
    chosen += [
        f.group for f in build_filters([], [r for r in ranges if is_score_range(r)])
        if f.group and f.group not in chosen
    ]  # fmt: skip
    groups_t = tuple(g for g in GROUPS if g in chosen)
    sdf = not is_dataset(out) and out.name.lower().endswith((".sdf", ".sd", ".sdf.gz"))
    # SDF records hold the scored molecule (the largest fragment of a salt); the input is a tag
    mol_column = "canonical_smiles" if "identity" in groups_t else "smiles"
    n_jobs = default_n_jobs() if n_jobs is None else n_jobs

    work = work_folder(out)
    plan = {
        "inputs": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files],
        "smiles_column": smiles_column, "groups": list(groups_t), "rules": rules,
        "ranges": ranges, "max_smiles_length": max_smiles_length, "limit": limit,
        "partition_size": partition_size, "sdf_column": mol_column if sdf else None,
        "keep_rejects": keep_rejects,
    }  # fmt: skip
    if not check_plan(work, plan, overwrite=overwrite and sharding is None):
        log.warning("overwrite=true: discarding the partitions in %s", work)
        shutil.rmtree(work)
    summary = ScreenSummary(input=str(input), out=str(out), rejects=str(rejects), engine=engine)
    summary.shard = shard
    summary.passed_filter = {r.strip().lower(): 0 for r in rules}
    summary.passed_filter |= {r.replace(" ", ""): 0 for r in ranges}
    label = Path(str(input)).name + (f" (shard {shard})" if shard else "")
    bar = Progress(label, bar=progress)
    count_rows_later(files, limit, bar)
    reader = _Reader(files, root, work, plan, summary, bar, sharding)
    sdf_column = mol_column if sdf else None
    reader.configure(groups_t, rules, ranges, smiles_column, partition_size, limit,
                     max_smiles_length, sdf_column, keep_rejects, sort_by)  # fmt: skip
    try:
        with _WorkLock(work, exclusive_cleanup=sharding is None):
            if engine == "dask":
                done = run_dask(reader.tasks(), work, scheduler=scheduler, cluster=cluster,
                                n_workers=n_jobs, progress=bar)  # fmt: skip
            else:
                done = run_local(reader.tasks(), work, n_jobs=n_jobs, chunk_size=chunk_size,
                                 progress=bar)  # fmt: skip
            for _, part in done:
                summary.add(part)
    except BaseException:
        reader.forget_if_empty()  # a run refused at its first rows leaves nothing behind
        raise
    finally:
        bar.close()
    log.info("%s", bar.line())
    summary.partitions = len(reader.names)
    if sharding is not None:
        summary.seconds = round(time.perf_counter() - t0, 3)
        log.info("shard %s: %d partitions in %s; run again without shard= to merge them into %s",
                 shard, summary.partitions, work, out)  # fmt: skip
        return summary

    if not reader.names and sort_by is not None:  # no rows: sort_by named no column yet
        available = ["line", *(_output_column(c) for c in columns_for(groups_t))]
        if _output_column(sort_by) not in available:
            raise UserError(f"sort_by={sort_by!r} is not a column; choose from {available}")
    merged_rejected = summary.rejected
    settings = MergeSettings(
        dedup=dedup, sort_by=_output_column(sort_by), descending=descending, top_k=top_k,
        keep_rejects=keep_rejects, memory_limit=memory_limit, threads=n_jobs,
        mol_column=mol_column, name_column=reader.name_column,
    )  # fmt: skip
    template = ["line", *("smiles" if c == "input" else c for c in columns_for(groups_t))]
    with claim_outputs(paths):
        counts = merge(work, reader.names, out=out, rejects=rejects, settings=settings,
                       template=template, spill_prefix=sort_prefix(out),
                       partition_rejected=merged_rejected)  # fmt: skip
    if mark is not None:  # the input was medgen's synthetic output: so is what is left of it
        from medgen.chem.io import mark_file

        for path in (out, rejects):
            if path.exists():
                mark_file(path, mark)
    summary.written, summary.rejected = counts.written, counts.rejected
    summary.duplicates, summary.outside_top_k = counts.duplicates, counts.outside_top_k
    shutil.rmtree(work, ignore_errors=True)
    summary.seconds = round(time.perf_counter() - t0, 3)
    if summary.rows == 0:
        log.warning("%s holds no molecules: %s and %s have no rows", input, out, rejects)
    log.info("screened %s -> %s (%d written, %d rejected to %s) in %.1f s", input, out,
             summary.written, summary.rejected, rejects, summary.seconds)  # fmt: skip
    return summary


def input_mark(files: Sequence[Path]) -> dict[str, Any] | None:
    """The synthetic mark of the first input file that carries one (None: none does)."""
    from medgen.chem.textfiles import GZIP_ERRORS
    from medgen.marking import SUPPORTED, read_mark

    for path in files:
        name = path.name.lower()
        if name.endswith((".csv.gz", ".smi.gz", ".sdf.gz")) or name.endswith(SUPPORTED):
            try:
                record = read_mark(path)
            except (UserError, ValueError):  # the reader names a bad file later
                continue
            except GZIP_ERRORS:
                continue
            if record is not None and not record.get("partial"):
                return {k: v for k, v in record.items() if k != "found_in"}
    return None


def check_engine_args(engine, partition_size, overwrite, keep_rejects, shard, memory) -> None:
    import re

    if not isinstance(memory, str) or not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", memory.strip()):
        raise ConfigError("memory_limit", memory, "a size such as 2GB, 512MB or 1.5GiB")
    if engine not in ENGINES:
        raise ConfigError("engine", engine, f"one of {', '.join(ENGINES)}")
    if (
        isinstance(partition_size, bool)
        or not isinstance(partition_size, int)
        or partition_size < 1
    ):
        raise ConfigError("partition_size", partition_size, "a whole number >= 1")
    for key, value in (("overwrite", overwrite), ("keep_rejects", keep_rejects)):
        if not isinstance(value, bool):
            raise ConfigError(key, value, "True or False")
    if shard is not None and overwrite:
        raise ConfigError(
            "overwrite",
            True,
            "false with shard= (each shard would clear the "
            "others' partitions): clear the output once, before the shards start",
        )


class _Reader:
    """Reads the input in order and makes the partitions this run must score (the others: done
    before, or another shard's)."""

    def __init__(self, files, root, work: Path, plan, summary: ScreenSummary, bar: Progress,
                 sharding: tuple[int, int] | None) -> None:  # fmt: skip
        self.files, self.root, self.work, self.plan = files, root, work, plan
        self.summary, self.bar, self.sharding = summary, bar, sharding
        self.names: list[str] = []  # partitions of this run, in input order
        self.name_column: str | None = None
        self._made_work = False

    def configure(self, groups, rules, ranges, smiles_column, partition_size, limit,
                  max_length, sdf_column, keep_rejects, sort_by) -> None:  # fmt: skip
        self.groups, self.rules, self.ranges = groups, rules, ranges
        self.smiles_column, self.partition_size, self.limit = smiles_column, partition_size, limit
        self.max_length, self.sdf_column, self.keep_rejects = max_length, sdf_column, keep_rejects
        self.sort_by = sort_by

    def tasks(self) -> Iterator[Task]:
        seen, number = 0, 0
        multi = len(self.files) > 1
        for index, path in enumerate(self.files):
            left = None if self.limit is None else self.limit - seen
            if left is not None and left <= 0 and index > 0:
                break
            chunks = read_molecules(path, smiles_column=self.smiles_column, limit=left,
                                    chunk_size=self.partition_size, with_errors=True)  # fmt: skip
            spec = None
            for k, frame in enumerate(chunks):
                seen += len(frame)
                if spec is None:
                    spec = self._spec(index, path, frame, multi)
                name = partition_name(index, k)
                mine = self.sharding is None or number % self.sharding[1] == self.sharding[0]
                number += 1
                if not mine:
                    continue
                self.names.append(name)
                done = read_done(self.work, name)
                if done is not None:
                    self.summary.add(done)
                    self.summary.resumed_partitions += 1
                    self.bar.update(len(frame), skipped=True)
                    continue
                self._make_work()
                yield Task(name, frame, spec)

    def _spec(self, index: int, path: Path, frame: pd.DataFrame, multi: bool) -> ChunkSpec:
        carried = [c for c in frame.columns if c not in READER_COLUMNS]
        renames = _score_name_clashes(carried)
        extra = [renames.get(c, c) for c in carried]
        try:
            filters = build_filters(self.rules, self.ranges, extra)
        except UserError as err:
            raise UserError(f"{path}: {err}") from None
        if self.sort_by is not None:
            available = ["line", *(_output_column(c) for c in columns_for(self.groups)), *extra]
            if _output_column(self.sort_by) not in available:
                raise UserError(f"sort_by={self.sort_by!r} is not a column; choose from "
                                f"{available}")  # fmt: skip
        if self.name_column is None:
            lowered = {e.strip().lower().replace(" ", "_"): e for e in reversed(extra)}
            self.name_column = next((lowered[c] for c in ID_COLUMNS if c in lowered), None)
        groups = [*self.groups, *(f.group for f in filters if f.group)]
        source = None
        if multi:
            source = str(path.relative_to(self.root)) if self.root else str(path)
        return ChunkSpec(
            groups=tuple(g for g in GROUPS if g in groups), rules=tuple(self.rules),
            ranges=tuple(self.ranges), extra=tuple(extra), renames=tuple(renames.items()),
            max_smiles_length=self.max_length, sdf_column=self.sdf_column,
            keep_rejects=self.keep_rejects, file_index=index, source=source,
        )  # fmt: skip

    def _make_work(self) -> None:
        if self._made_work:
            return
        self.work.mkdir(exist_ok=True)
        if not (self.work / PLAN).is_file():
            atomic_write_json(self.work / PLAN, self.plan)
        self._made_work = True

    def forget_if_empty(self) -> None:
        """Remove a work folder this run made that holds no complete partition."""
        done = self.work / "done"
        if self._made_work and not (done.is_dir() and any(done.iterdir())):
            shutil.rmtree(self.work, ignore_errors=True)


class _WorkLock:
    """A shared ``flock`` on the work folder's parent for the whole run; a run that is not a shard
    first removes the temporaries of killed writers inside the work folder, but only while no
    other run (a shard) holds the lock."""

    def __init__(self, work: Path, *, exclusive_cleanup: bool) -> None:
        self.work, self.cleanup = work, exclusive_cleanup
        self._lock: _FolderLock | None = None

    def __enter__(self) -> _WorkLock:
        lock_dir = self.work.parent
        self._lock = _FolderLock(lock_dir)
        if self.cleanup and self._lock.exclusive and self.work.is_dir():
            stale = [p for p in self.work.rglob(f".*{TMP_MARKER}*") if p.is_file()]
            for path in stale:
                path.unlink(missing_ok=True)
            if stale:
                log.info("removed %d temporaries of killed writers in %s", len(stale), self.work)
        self._lock.share()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.close()


def _output_column(name: str | None) -> str | None:
    """A score column's name in the output (the input SMILES is ``smiles`` there)."""
    return "smiles" if name == "input" else name


def _score_name_clashes(carried: list[str]) -> dict[str, str]:
    """``{name: input_<name>}`` for carried columns named like an output column (kept, renamed)."""
    scores = set(columns_for(GROUPS)) | RESERVED
    taken, renames = scores | set(carried), {}
    for column in carried:
        if column in scores:
            new = f"input_{column}"
            while new in taken:
                new = f"input_{new}"
            taken.add(new)
            renames[column] = new
    if renames:
        log.warning("input columns renamed (output columns have their names): %s", renames)
    return renames


def is_score_range(expression: str) -> bool:
    """Whether a range expression names a score column (else it names a carried column)."""
    from medgen.chem.filters import ALIASES, _column_groups

    name = str(expression).split("<")[0].split(">")[0].split("=")[0].split("!")[0].strip()
    return ALIASES.get(name.lower(), name) in _column_groups()
