"""Atomic file writing: write a temporary file beside the target, then rename it over the target.

A reader (or a resumed job) therefore sees either the old file or the complete new one, never a
half-written file. Temporary files are named ``.<name>.tmp-<random><suffixes>`` so that libraries
that pick a format from the suffix (nibabel's ``.nii.gz``) still work, and so that they are easy to
find and clean up after a crash (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARKER = ".tmp-"


def _temp_sibling(path: Path) -> Path:
    suffixes = "".join(path.suffixes)
    stem = path.name[: len(path.name) - len(suffixes)] if suffixes else path.name
    return path.with_name(f".{stem}{TMP_MARKER}{secrets.token_hex(4)}{suffixes}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    Use it for writers that want a file name (``nib.save(img, tmp)``, ``df.to_parquet(tmp)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"atomic write to {path}: the writer did not create {tmp}")
        with open(tmp, "rb+") as fh:  # flush file contents to disk before the rename is visible
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON (sorted keys, trailing newline) to ``path`` atomically."""
    text = json.dumps(obj, indent=indent, sort_keys=True, default=_json_default) + "\n"
    return atomic_write_text(path, text)


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays, paths and tensors turn up in metrics and provenance records
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable: {obj!r}")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files left in ``folder`` (recursively) by an interrupted atomic write."""
    removed = []
    for p in Path(folder).rglob(f".*{TMP_MARKER}*"):
        if p.is_file():
            p.unlink()
            removed.append(p)
    return removed
