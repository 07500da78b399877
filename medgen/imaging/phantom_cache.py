"""Generated phantom subjects kept on disk, so DataLoader workers read instead of regenerate.

A 128^3 phantom costs about 2 s to generate; an epoch of them would keep the training loop
waiting, and each DataLoader worker would generate its own copy. :class:`DiskCachedDataset`
wraps a :class:`~medgen.imaging.sources.PhantomDataset` and stores item ``i`` once as
``<folder>/<key>.npz``, where the key hashes the subject's seed and every generation setting of
the dataset (size, spacing, noise, intensity mapping, ...) and the phantom generator's own source
code, so a changed setting or generator never reads a stale file. Files are written atomically
(a worker that dies mid-write leaves no half file) and read with ``allow_pickle=False``; a file
that cannot be read is regenerated. Items are identical to the wrapped dataset's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medgen.utils.atomic import atomic_path
from medgen.utils.logging import get_logger

log = get_logger(__name__)

_SKIP = ("seeds", "cache")  # not generation settings: which subjects, the in-memory cache
_WIDEN = "__int64__"  # names of int64 tensors stored narrower (label maps as uint8)


@lru_cache(maxsize=1)
def generator_hash() -> str:
    """sha256 (first 16 hex digits) of the phantom generator's source: part of every key."""
    from medgen.imaging import phantom

    return hashlib.sha256(Path(phantom.__file__).read_bytes()).hexdigest()[:16]


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, int | float | str | bool | None) else repr(value)


def settings_of(dataset: Any) -> dict[str, Any]:
    """The generation settings of ``dataset``: its public attributes except which seeds it
    holds and whether it caches in memory."""
    names = sorted(k for k in vars(dataset) if not k.startswith("_") and k not in _SKIP)
    return {k: _plain(getattr(dataset, k)) for k in names}


class DiskCachedDataset(Dataset):
    """``dataset`` (a phantom dataset with ``seeds``), its items stored in ``folder``.

    Args:
        dataset: map-style dataset whose item ``i`` is fully determined by ``seeds[i]`` and its
            settings (:func:`settings_of`).
        folder: the cache folder (created when first written).
    """

    def __init__(self, dataset: Any, folder: str | os.PathLike) -> None:
        self.dataset, self.folder = dataset, Path(folder).expanduser()
        text = json.dumps(
            {"settings": settings_of(dataset), "generator": generator_hash()}, sort_keys=True
        )
        self.settings_key = hashlib.sha256(text.encode()).hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.dataset)

    def path(self, index: int) -> Path:
        """Where item ``index`` is stored."""
        return self.folder / f"phantom-{self.settings_key}-{int(self.dataset.seeds[index])}.npz"

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.path(index)
        if path.is_file():
            try:
                return _read(path)
            except (OSError, ValueError, KeyError) as err:  # truncated by a crash, disk error
                log.warning("phantom cache %s unreadable (%s): generating it again", path, err)
        item = self.dataset[index]
        _write(path, item)
        return item


def _write(path: Path, item: dict[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    widened: list[str] = []
    for key, value in item.items():
        if isinstance(value, torch.Tensor):
            array = value.numpy()
            if array.dtype == np.int64 and array.size and 0 <= array.min() and array.max() < 256:
                array, widened = array.astype(np.uint8), [*widened, key]
            arrays[key] = array
        else:
            arrays[key] = np.asarray(value)  # ints, floats, strings: no object arrays
    arrays[_WIDEN] = np.asarray(widened, dtype=str)
    with atomic_path(path) as tmp:
        np.savez(tmp, **arrays)  # type: ignore[arg-type]


def _read(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as npz:
        widened = set(npz[_WIDEN].tolist())
        item: dict[str, Any] = {}
        for key in npz.files:
            if key == _WIDEN:
                continue
            array = npz[key]
            if array.ndim == 0:
                item[key] = array.item()
            else:
                tensor = torch.from_numpy(np.array(array))
                item[key] = tensor.to(torch.int64) if key in widened else tensor
    return item
