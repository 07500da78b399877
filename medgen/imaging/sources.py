"""Scan sources. Every item is the same plain dict, whatever the source:

- ``image``: (1, D, H, W) float32 in [-1, 1]
- ``affine``: (4, 4) float64, voxel index -> RAS+ world mm
- ``label``: (1, D, H, W) int64 label map, where the source has one
- ``class_label``: int, where the source has one
- ``source``: str, the file path or ``"phantom:<seed>"`` (``"<npz>:<split>:<index>"`` for MedMNIST)
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medgen.imaging.intensity import IntensityMapping
from medgen.imaging.phantom import make_phantom, phantom_affine
from medgen.utils.logging import get_logger

log = get_logger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


class PhantomDataset(Dataset):
    """Procedural torso phantoms generated on the fly (see :mod:`medgen.imaging.phantom`).

    Item ``i`` is the subject with seed ``seeds[i]``; ``class_label`` is its body-size bin.

    With ``cache`` the generated subjects are kept (image float32, label map uint8, widened to
    int64 on access) in the main process only: DataLoader workers generate on the fly instead of
    each building its own copy of the cache. Items are identical either way (seeded).
    """

    def __init__(
        self,
        *,
        seeds: Sequence[int],
        size: tuple[int, int, int],
        spacing: tuple[float, float, float],
        intensity: IntensityMapping,
        noise_hu: float = 12.0,
        cache: bool = True,
    ) -> None:
        self.seeds = [int(s) for s in seeds]
        self.size, self.spacing, self.intensity = size, spacing, intensity
        self.noise_hu = float(noise_hu)
        self.cache = cache
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        stored = self._cache.get(index)
        if stored is None:
            seed = self.seeds[index]
            ph = make_phantom(seed, self.size, self.spacing, noise_hu=self.noise_hu)
            stored = {
                "image": torch.from_numpy(self.intensity.to_unit(ph.image))[None],
                "affine": torch.from_numpy(ph.affine),
                "label": torch.from_numpy(ph.labels.astype(np.uint8))[None],  # labels 0..<256
                "class_label": ph.size_class,
                "source": f"phantom:{seed}",
            }
            if self.cache and torch.utils.data.get_worker_info() is None:
                self._cache[index] = stored
        item = dict(stored)
        item["image"] = stored["image"].clone()
        item["affine"] = stored["affine"].clone()
        item["label"] = stored["label"].to(torch.int64)
        return item


class MedMNIST3DDataset(Dataset):
    """One split of a published MedMNIST-3D ``.npz`` (``<split>_images`` (N, S, S, S) uint8,
    ``<split>_labels`` (N, 1)), centre padded/cropped to ``spatial_size``, 0..255 -> [-1, 1]."""

    def __init__(
        self,
        *,
        path: str | os.PathLike,
        split: str,
        spatial_size: tuple[int, int, int],
        spacing: tuple[float, float, float],
        intensity: IntensityMapping,
    ) -> None:
        self.path, self.split = Path(path), split
        self.images, self.labels = load_medmnist_split(self.path, split)
        self.spatial_size = tuple(int(s) for s in spatial_size)
        self.affine = torch.from_numpy(phantom_affine(self.spatial_size, spacing))
        self.intensity = intensity

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        vol = center_pad_crop(np.asarray(self.images[index], dtype=np.float32), self.spatial_size)
        return {
            "image": torch.from_numpy(self.intensity.to_unit(vol))[None],
            "affine": self.affine.clone(),
            "class_label": int(self.labels[index]),
            "source": f"{self.path}:{self.split}:{index}",
        }


def load_medmnist_split(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(<split>_images (N, S, S, S), <split>_labels (N,))`` from a MedMNIST-3D npz, checked."""
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST npz not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"MedMNIST npz is empty: {path}")
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            if f"{split}_images" not in keys or f"{split}_labels" not in keys:
                raise KeyError(f"{split}_images/{split}_labels missing (has {sorted(keys)})")
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except KeyError as err:
        raise ValueError(f"MedMNIST npz {path}: {err.args[0]}") from err
    except Exception as err:
        raise ValueError(f"MedMNIST npz {path} cannot be read: {err}") from err
    if images.ndim == 5 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 4:
        raise ValueError(
            f"MedMNIST npz {path}: {split}_images has shape {images.shape}; expected (N, S, S, S)"
        )
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(np.int64)
    if len(labels) != len(images):
        raise ValueError(
            f"MedMNIST npz {path}: {len(images)} {split} images but {len(labels)} labels"
        )
    return images, labels


def center_pad_crop(vol: np.ndarray, size: Sequence[int], value: float = 0.0) -> np.ndarray:
    """Centre-pad (with ``value``) and/or centre-crop a (D, H, W) array to ``size``."""
    out = vol
    for axis, target in enumerate(size):
        n = out.shape[axis]
        if n < target:
            before = (target - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - n - before)
            out = np.pad(out, pad, constant_values=value)
        elif n > target:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
    return out


def _is_nifti(p: str | Path) -> bool:
    return str(p).endswith(NIFTI_SUFFIXES)


def resolve_nifti_entries(
    path: str | os.PathLike, labels: str | os.PathLike | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """Entries ``{"image", "label"?, "class_label"?}`` from a folder, a glob or a datalist JSON.

    A Decathlon-style datalist (``{"training": [{"image": ..., "label": ...}], "validation": ...}``)
    gives paths relative to its own folder; its ``validation`` list (if any) is returned second.
    For a folder or glob, ``labels`` is an optional folder holding label maps with the same names.
    """
    p = Path(path).expanduser()
    val = None
    if str(p).endswith(".json"):
        entries, val = _read_datalist(p)
    else:
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if _is_nifti(f))
        elif any(ch in str(path) for ch in "*?["):
            files = sorted(f for f in glob.glob(os.path.expanduser(str(path))) if _is_nifti(f))
        elif p.is_file() and _is_nifti(p):
            files = [str(p)]
        else:
            raise FileNotFoundError(
                f"data.path {path}: no such folder, NIfTI file or datalist JSON"
            )
        if not files:
            raise FileNotFoundError(f"data.path {path}: no .nii/.nii.gz files found")
        entries = [{"image": f} for f in files]
        if labels is not None:
            ldir = Path(labels).expanduser()
            for e in entries:
                e["label"] = str(ldir / Path(e["image"]).name)
    for group in (entries, val or []):
        with_label = {("label" in e) for e in group}
        if len(with_label) > 1:
            raise ValueError(f"data.path {path}: some entries have a label map and others not")
    return entries, val


def _read_datalist(p: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    if not p.is_file():
        raise FileNotFoundError(f"datalist not found: {p}")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"datalist {p} is not valid JSON (line {err.lineno}): {err.msg}") from err
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("training"), list)
        or not doc["training"]
    ):
        raise ValueError(
            f'datalist {p} needs a non-empty "training" list of {{"image": ...}} entries'
        )

    def parse(items: list[Any], key: str) -> list[dict[str, Any]]:
        out = []
        for n, it in enumerate(items):
            it = {"image": it} if isinstance(it, str) else dict(it)
            if "image" not in it:
                raise ValueError(f'datalist {p}: {key}[{n}] has no "image" entry: {it}')
            e = {"image": str((p.parent / it["image"]).resolve())}
            if it.get("label"):
                e["label"] = str((p.parent / it["label"]).resolve())
            cls = it.get("class_label", it.get("class"))
            if cls is not None:
                e["class_label"] = int(cls)
            out.append(e)
        return out

    val = doc.get("validation")
    return parse(doc["training"], "training"), (parse(val, "validation") if val else None)


def split_entries(
    entries: list[dict[str, Any]], *, val_fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A reproducible train/val split: shuffle with ``seed``, the first ``val_fraction`` is val
    (at least one item when there are two or more)."""
    order = np.random.default_rng(int(seed)).permutation(len(entries))
    n_val = int(round(len(entries) * float(val_fraction)))
    if len(entries) >= 2:
        n_val = min(max(n_val, 1), len(entries) - 1)
    else:
        n_val = 0
    val = [entries[i] for i in order[:n_val]]
    train = [entries[i] for i in order[n_val:]]
    return train, val


class NiftiDataset(Dataset):
    """A MONAI dataset over NIfTI entries whose errors name the file they came from."""

    def __init__(
        self,
        entries: list[dict[str, Any]],
        transform,
        *,
        cache: str = "none",
        cache_dir: str | None = None,
    ) -> None:
        from monai.data import CacheDataset, PersistentDataset
        from monai.data import Dataset as MonaiDataset

        data = [{**e, "source": e["image"]} for e in entries]
        self.entries = data
        if cache == "memory":
            self.inner = CacheDataset(data, transform, progress=False, num_workers=0)
        elif cache == "disk":
            if not cache_dir:
                raise ValueError("data.cache=disk needs data.cache_dir")
            self.inner = PersistentDataset(data, transform, cache_dir=cache_dir)
        elif cache == "none":
            self.inner = MonaiDataset(data, transform)
        else:
            raise ValueError(f"data.cache must be none, memory or disk; got {cache!r}")

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.inner[index]
        except Exception as err:
            raise RuntimeError(f"cannot load {self.entries[index]['image']}: {err}") from err
