"""Where ``medgen screen`` reads and writes, checked before any work, and the leftovers of
killed runs.

The input is a file, a folder (every molecule file below it, in name order) or a glob pattern.
A screen writes ``out``, the rejects file and ``<out stem>.summary.json``, each through a
temporary sibling ``.<stem>.tmp-<8 hex><suffixes>`` renamed into place at the end
(:mod:`medgen.utils.atomic`); DuckDB's sort and dedup spill to a folder
``.<out name>.sort-<random>`` beside ``out``. A run that is killed leaves those behind: the next
run of the same outputs removes exactly these names (nothing else) while no other
``medgen screen`` uses the folder. The scored partitions live in ``.<out name>.parts/``
(:func:`work_folder`) until ``out`` is written: that folder is what a rerun resumes from, so it
is never treated as a leftover.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

from medgen.errors import UserError
from medgen.utils.atomic import TMP_MARKER

log = logging.getLogger(__name__)

#: formats a rejects file may have: every column of a reject row must survive (``.smi`` keeps only
#: the SMILES and ``.sdf`` only rows that parse, which rejects often do not)
REJECTS_FORMATS = ("csv", "tsv", "parquet")


def _stem(out: Path) -> str:
    return out.name.split(".")[0] or "screen"


def is_dataset(path: str | os.PathLike) -> bool:
    """An output named without a suffix is a parquet dataset: a folder of parquet files."""
    return Path(path).suffix == ""


def default_rejects_path(out: str | os.PathLike) -> Path:
    """``<out without suffixes>.rejects.csv`` beside ``out``; for a dataset ``out``, the dataset
    ``<out>_rejects`` beside it."""
    out = Path(out)
    if is_dataset(out):
        return out.with_name(f"{out.name}_rejects")
    return out.with_name(f"{_stem(out)}.rejects.csv")


def work_folder(out: str | os.PathLike) -> Path:
    """``.<out name>.parts`` beside ``out``: the partitions of a screen until ``out`` is written."""
    out = Path(out)
    return out.with_name(f".{out.name}.parts")


def input_files(spec: str | os.PathLike) -> tuple[list[Path], Path | None]:
    """``(files, root)`` of an input: one file (root None), every molecule file below a folder
    (hidden ones skipped), or the files a glob pattern matches (``**`` spans folders), sorted by
    name; ``root`` is the folder names are given relative to. Raises ``MissingFileError``."""
    from medgen.chem.readers import file_format
    from medgen.errors import MissingFileError

    text = os.fspath(spec)
    path = Path(text).expanduser()
    if glob.has_magic(text):
        matches = [Path(m) for m in glob.glob(os.path.expanduser(text), recursive=True)]
        root = Path(text.split("*")[0].split("?")[0].split("[")[0] or ".")
        root = root if str(root).endswith(os.sep) or root.is_dir() else root.parent
    elif path.is_dir():
        matches = [
            p for p in path.rglob("*")
            if not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]  # fmt: skip
        root = path
    elif path.is_file():
        return [path], None
    else:
        raise MissingFileError(f"input={spec}: no such file")

    def readable(p: Path) -> bool:
        try:
            file_format(p)
        except UserError:
            return False
        return p.is_file()

    files = sorted((p for p in matches if readable(p)), key=lambda p: str(p))
    if not files:
        kind = "folder" if path.is_dir() else "pattern"
        raise MissingFileError(f"input={spec}: the {kind} holds no molecule files "
                               "(.smi, .cxsmiles, .csv, .tsv, .sdf, .parquet)")  # fmt: skip
    return files, root


def summary_path(out: str | os.PathLike) -> Path:
    """``<out without suffixes>.summary.json`` beside ``out`` (written by ``medgen screen``)."""
    out = Path(out)
    return out.with_name(f"{_stem(out)}.summary.json")


def sort_prefix(out: str | os.PathLike) -> str:
    """Name prefix of the external-sort folders of ``out`` (created beside it)."""
    return f".{Path(out).name}.sort-"


def output_paths(
    out: str | os.PathLike, rejects: str | os.PathLike | None = None
) -> dict[str, Path]:
    """The files a screen of ``input`` writes: ``out``, ``rejects`` (default
    :func:`default_rejects_path`) and ``summary``; see :func:`check_outputs` for the checks."""
    return {
        "out": Path(out),
        "rejects": Path(rejects) if rejects else default_rejects_path(out),
        "summary": summary_path(out),
    }


def check_not_input(
    spec: str | os.PathLike, root: Path | None, outputs: Mapping[str, Path]
) -> None:
    """Refuse outputs that a rerun would read as input: inside an input folder, or matched by an
    input glob pattern."""
    import fnmatch

    text = os.fspath(spec)
    for key, path in outputs.items():
        target = path.resolve()
        pattern = str(Path(os.path.expanduser(text)).resolve()) if glob.has_magic(text) else None
        inside = root is not None and pattern is None and target.is_relative_to(root.resolve())
        if inside or (pattern is not None and fnmatch.fnmatch(str(target), pattern)):
            raise UserError(
                f"{key}={path} is {'matched by' if pattern else 'inside'} input={spec}: a rerun "
                "would read it as input; write it elsewhere"
            )


def check_outputs(
    inputs: Sequence[str | os.PathLike],
    outputs: Mapping[str, Path],
) -> None:
    """Refuse, before anything is written, outputs that would destroy data or cannot be written.

    Raises :class:`UserError` naming both paths when an output is an input or another output (same
    resolved path, or the same file through a symlink or hard link), when an input has the name
    of a temporary that the stale-file cleanup would delete, and when an output's folder is
    missing, is not a folder or is not writable, or an output file is an existing folder.
    """
    from medgen.chem.readers import file_format

    items = list(outputs.items())
    for key, path in items:
        dataset = key in ("out", "rejects") and is_dataset(path)
        if key in ("out", "rejects") and not dataset:
            try:
                file_format(path)  # a molecule file name we can write, before any work
            except UserError as err:
                raise UserError(f"{key}={path}: {err}; or no suffix for a parquet dataset "
                                "(a folder)") from None  # fmt: skip
            if path.name.lower().endswith((".bz2", ".zst")):
                raise UserError(f"{key}={path}: outputs are compressed with .gz only")
        if key == "rejects" and not dataset and file_format(path) not in REJECTS_FORMATS:
            raise UserError(
                f"rejects={path}: a rejects file must be .csv, .tsv (optionally .gz), .parquet "
                "or a dataset (no suffix), so that every rejected row keeps its SMILES, columns "
                "and reason"
            )
        _check_folder(key, path, dataset)
    for i, (key, path) in enumerate(items):
        for other_key, other in items[i + 1 :]:
            if _same_file(path, other):
                raise UserError(
                    f"{key}={path} and {other_key}={other} are the same file; "
                    "one would overwrite the other: give them different names"
                )
        for source in inputs:
            if _same_file(path, Path(source)):
                raise UserError(
                    f"{key}={path} is the input file {source}: it would be overwritten; "
                    f"write the {key} file under another name"
                )
    patterns = [p for path in outputs.values() for p in _temporary_patterns(path)]
    for source in inputs:
        name = Path(source).name
        if any(p.fullmatch(name) for p in patterns):
            raise UserError(
                f"input {source} is named like a temporary file of the outputs "
                f"({', '.join(str(p) for p in outputs.values())}) that a rerun deletes; "
                "rename the input"
            )


def _check_folder(key: str, path: Path, dataset: bool = False) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.exists():
        raise UserError(f"{key}={path}: the folder {folder} does not exist; create it first")
    if not folder.is_dir():
        raise UserError(f"{key}={path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{key}={path}: the folder {folder} is not writable")
    if path.is_dir() and not dataset:
        raise UserError(f"{key}={path} is a folder; name a file")
    if dataset and path.exists() and not path.is_dir():
        raise UserError(f"{key}={path} is a file; a dataset (no suffix) is a folder")


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links; both must exist
    except OSError:
        return False


def _temporary_patterns(path: Path) -> list[re.Pattern[str]]:
    """Names an interrupted atomic write of ``path`` leaves (and, for every output, a sort folder
    named after it)."""
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    tmp = re.escape(f".{stem}{TMP_MARKER}") + "[0-9a-f]{8}" + re.escape(suffixes)
    return [re.compile(tmp), re.compile(re.escape(sort_prefix(path)) + r"[a-z0-9_]{8}")]


def stale_temporaries(outputs: Iterable[Path]) -> list[Path]:
    """Entries beside ``outputs`` whose names match their temporaries exactly."""
    found: list[Path] = []
    by_folder: dict[Path, list[re.Pattern[str]]] = {}
    for path in outputs:
        by_folder.setdefault(path.resolve().parent, []).extend(_temporary_patterns(path))
    for folder, patterns in by_folder.items():
        with os.scandir(folder) as entries:
            found += [
                folder / e.name for e in entries if any(p.fullmatch(e.name) for p in patterns)
            ]
    return sorted(found)


@contextlib.contextmanager
def claim_outputs(outputs: Mapping[str, Path]) -> Iterator[list[Path]]:
    """Hold the output folders for a run and first remove what killed runs of these outputs left.

    Every run holds a shared ``flock`` on each output folder while it runs; the cleanup needs an
    exclusive one, so it never deletes the live temporaries of a concurrent screen in the same
    folder (it then skips that folder and says so). Yields the removed paths.
    """
    folders = sorted({p.resolve().parent for p in outputs.values()})
    with contextlib.ExitStack() as stack:
        removed: list[Path] = []
        for folder in folders:
            lock = stack.enter_context(_FolderLock(folder))
            if not lock.exclusive:
                log.info("another medgen screen is running in %s: stale temporaries there are "
                         "left for a later run", folder)  # fmt: skip
                continue
            mine = [p for p in outputs.values() if p.resolve().parent == folder]
            for stale in stale_temporaries(mine):
                if stale.is_dir() and not stale.is_symlink():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink(missing_ok=True)
                removed.append(stale)
            lock.share()
        if removed:
            log.warning("removed %d temporaries left by an interrupted run: %s", len(removed),
                        ", ".join(str(p) for p in removed))  # fmt: skip
        yield removed


class _FolderLock:
    """``flock`` on a folder: exclusive if no one else holds it (``.exclusive``), else shared.

    Where locks are unsupported (no ``fcntl``, some network file systems) ``exclusive`` is True: a
    concurrent run then fails loudly on its missing temporary, never silently.
    """

    def __init__(self, folder: Path) -> None:
        self._fd: int | None = None
        self.exclusive = True
        try:
            import fcntl
        except ImportError:  # Windows: files held open there cannot be deleted anyway
            return
        self._flock = fcntl.flock
        self._fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.exclusive = False
            fcntl.flock(self._fd, fcntl.LOCK_SH)  # others hold it exclusively only to clean up
        except OSError:  # locking not supported on this file system
            self.close()

    def share(self) -> None:
        """Downgrade to a shared lock (after the cleanup), so that other runs may start."""
        if self._fd is not None:
            import fcntl

            self._flock(self._fd, fcntl.LOCK_SH)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def __enter__(self) -> _FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
