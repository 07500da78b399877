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

from medgen.errors import ConfigError, InputFileError, UserError
from medgen.imaging.intensity import IntensityMapping
from medgen.imaging.phantom import make_phantom, phantom_affine
from medgen.utils.logging import get_logger

log = get_logger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# a datalist error lists at most this many of its problems (and counts the rest)
MAX_LISTED_PROBLEMS = 10


class InputFileNotFound(InputFileError, FileNotFoundError):
    """A missing input file: an :class:`InputFileError` that ``except FileNotFoundError`` also
    catches."""


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
        d, h, w = (int(s) for s in spatial_size)
        self.spatial_size = (d, h, w)
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
    """``(<split>_images (N, S, S, S), <split>_labels (N,))`` from a MedMNIST-3D npz, checked.

    Raises :class:`InputFileError` naming the file (and split, item) when it is missing, empty,
    unreadable, misshapen, holds NaN/inf voxels or labels that are not non-negative integers.
    """
    if not path.is_file():
        raise InputFileNotFound(f"MedMNIST npz not found: {path}")
    if path.stat().st_size == 0:
        raise InputFileError(f"MedMNIST npz is empty: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:  # never unpickle a data file
            keys = set(npz.files)
            if f"{split}_images" not in keys or f"{split}_labels" not in keys:
                raise KeyError(f"{split}_images/{split}_labels missing (has {sorted(keys)})")
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except KeyError as err:
        raise InputFileError(f"MedMNIST npz {path}: {err.args[0]}") from err
    except ValueError as err:
        if "allow_pickle" not in str(err):
            raise InputFileError(f"MedMNIST npz {path} cannot be read: {err}") from err
        raise InputFileError(
            f"MedMNIST npz {path} is not plain arrays: it holds pickled Python objects (or is "
            "not an .npz at all), which medgen never loads; MedMNIST ships uint8 images"
        ) from err
    except Exception as err:
        raise InputFileError(f"MedMNIST npz {path} cannot be read: {err}") from err
    if images.ndim == 5 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 4:
        raise InputFileError(
            f"MedMNIST npz {path}: {split}_images has shape {images.shape}; expected (N, S, S, S)"
        )
    if images.dtype.kind not in "biuf":
        raise InputFileError(
            f"MedMNIST npz {path}: {split}_images has dtype {images.dtype}; expected numbers"
        )
    if images.dtype.kind == "f":  # published files are uint8; a float array may hold NaN/inf
        bad = (~np.isfinite(images)).reshape(len(images), -1).sum(axis=1)
        if bad.any():
            first = np.flatnonzero(bad)
            raise InputFileError(
                f"MedMNIST npz {path}: {split}_images holds non-finite (NaN/inf) voxels in "
                f"{len(first)} of {len(images)} volumes, e.g. item {first[0]} "
                f"({int(bad[first[0]])} voxels); fix or drop them"
            )
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    if len(labels) != len(images):
        raise InputFileError(
            f"MedMNIST npz {path}: {len(images)} {split} images but {len(labels)} labels"
        )
    if labels.dtype.kind not in "biuf" or (
        labels.dtype.kind == "f" and not np.all(np.isfinite(labels) & (labels == np.round(labels)))
    ):
        raise InputFileError(
            f"MedMNIST npz {path}: {split}_labels must be integer class indices, "
            f"got dtype {labels.dtype}"
        )
    labels = labels.astype(np.int64)
    if len(labels) and labels.min() < 0:
        neg = int(np.flatnonzero(labels < 0)[0])
        raise InputFileError(
            f"MedMNIST npz {path}: {split}_labels[{neg}]={labels[neg]} is negative; "
            "class labels must be >= 0"
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
    path: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    *,
    num_classes: int | None = None,
    num_classes_key: str = "num_classes",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """Entries ``{"image", "label"?, "class_label"?}`` from a folder, a glob or a datalist JSON:
    ``(training, validation | None, test | None)``.

    A Decathlon-style datalist (``{"training": [{"image": ..., "label": ...}], "validation": ...,
    "test": ...}``) gives paths relative to its own folder; its ``validation`` and ``test`` lists
    (when present and not empty) are returned second and third, else None.
    Every item is checked before anything is loaded (see :func:`read_datalist`); ``num_classes``
    (named ``num_classes_key`` in errors), when known, bounds its ``class_label`` values.
    For a folder or glob, ``labels`` is an optional folder holding label maps with the same names.
    Raises :class:`InputFileError` naming the path and what is wrong.
    """
    p = Path(path).expanduser()
    val = test = None
    if str(p).endswith(".json"):
        entries, val, test = read_datalist(
            p, num_classes=num_classes, num_classes_key=num_classes_key
        )
    else:
        if p.is_dir():
            files = sorted(str(f) for f in p.iterdir() if _is_nifti(f))
        elif any(ch in str(path) for ch in "*?["):
            files = sorted(f for f in glob.glob(os.path.expanduser(str(path))) if _is_nifti(f))
        elif p.is_file() and _is_nifti(p):
            files = [str(p)]
        else:
            raise InputFileNotFound(
                f"data.path {path}: no such folder, NIfTI file or datalist JSON"
            )
        if not files:
            raise InputFileNotFound(f"data.path {path}: no .nii/.nii.gz files found")
        entries = [{"image": f} for f in files]
        if labels is not None:
            ldir = Path(labels).expanduser()
            for e in entries:
                e["label"] = str(ldir / Path(e["image"]).name)
    for group in (entries, val or [], test or []):
        with_label = {("label" in e) for e in group}
        if len(with_label) > 1:
            raise InputFileError(f"data.path {path}: some entries have a label map and others not")
    # training, validation and test batches all feed the class condition: all items or none
    with_class = {("class_label" in e) for e in entries + (val or []) + (test or [])}
    if len(with_class) > 1:
        raise InputFileError(
            f"data.path {path}: some entries have a class_label and others not; "
            "give every training, validation and test item one, or none"
        )
    return entries, val, test


def read_datalist(
    p: Path, *, num_classes: int | None = None, num_classes_key: str = "num_classes"
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """Read and check a Decathlon-style datalist: ``(training, validation | None, test | None)``
    entries (an absent or empty ``validation`` / ``test`` list is None).

    Each item is a path string or an object with ``image`` (and optionally ``label`` and
    ``class_label``, alias ``class``; other keys are ignored). Relative paths are resolved against
    the datalist's folder; paths that leave it (``../x``, absolute) are allowed and logged with
    their resolved path. Checked, all items before raising: the JSON parses (else the error names
    its line), ``training`` is a non-empty list, every ``image``/``label`` is an existing file, and
    every ``class_label`` is an int (not bool, float or str), ``>= 0`` and below ``num_classes``
    when that is given. Raises :class:`InputFileError` listing the problems by item and key.
    """
    p = Path(p)
    if not p.is_file():
        raise InputFileNotFound(f"datalist not found: {p}")
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputFileError(
            f"datalist {p} is not valid JSON (line {err.lineno}, column {err.colno}): {err.msg}"
        ) from err
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"datalist {p} cannot be read as UTF-8 text: {err}") from err
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("training"), list)
        or not doc["training"]
    ):
        raise InputFileError(
            f'datalist {p} needs a non-empty "training" list of {{"image": ...}} entries'
        )
    val, test = doc.get("validation"), doc.get("test")
    for key, group in (("validation", val), ("test", test)):
        if group is not None and not isinstance(group, list):
            raise InputFileError(
                f'datalist {p}: "{key}" must be a list of entries, got {type(group).__name__}'
            )
    root = p.parent.resolve()
    problems: list[str] = []
    outside: list[str] = []

    def file_path(written: Any, where: str) -> str | None:
        if not isinstance(written, str) or not written.strip():
            problems.append(f"{where}={written!r} is not a file path (a non-empty string)")
            return None
        resolved = (root / Path(written).expanduser()).resolve()  # absolute paths stay as they are
        if not resolved.is_relative_to(root):
            outside.append(f"{where}={written!r} -> {resolved}")
        if not resolved.is_file():
            reason = "is a folder, not a file" if resolved.is_dir() else "does not exist"
            problems.append(f"{where}={written!r} (resolved to {resolved}) {reason}")
            return None
        return str(resolved)

    def class_index(value: Any, where: str) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(
                f"{where}={value!r} is not allowed: must be an integer class index "
                f"(got {type(value).__name__})"
            )
            return None
        if value < 0 or (num_classes is not None and value >= num_classes):
            allowed = ">= 0" if num_classes is None else f"in [0, {num_classes})"
            known = "" if num_classes is None else f" ({num_classes_key}={num_classes})"
            problems.append(f"{where}={value!r} is not allowed: must be {allowed}{known}")
            return None
        return value

    def parse(items: list[Any], group: str) -> list[dict[str, Any]]:
        out = []
        for n, it in enumerate(items):
            where = f"{group}[{n}]"
            if isinstance(it, str):
                it = {"image": it}
            if not isinstance(it, dict):
                problems.append(f'{where} is {type(it).__name__}; expected {{"image": ...}}')
                continue
            if "image" not in it:
                problems.append(f'{where} has no "image" entry: {it}')
                continue
            e: dict[str, Any] = {"image": file_path(it["image"], f"{where}.image")}
            if it.get("label") is not None:
                e["label"] = file_path(it["label"], f"{where}.label")
            key = "class_label" if "class_label" in it else "class"
            if it.get(key) is not None:
                e["class_label"] = class_index(it[key], f"{where}.{key}")
            out.append(e)
        return out

    training = parse(doc["training"], "training")
    validation = parse(val, "validation") if val else None
    testing = parse(test, "test") if test else None
    if problems:
        listed = "; ".join(problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        raise InputFileError(
            f"datalist {p}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
            f"{listed}{f'; and {more} more' if more > 0 else ''}"
        )
    if outside:
        log.warning(
            "datalist %s: %d path(s) lie outside its folder %s, used as resolved: %s%s",
            p,
            len(outside),
            root,
            "; ".join(outside[:3]),
            f"; and {len(outside) - 3} more" if len(outside) > 3 else "",
        )
    return training, validation, testing


Entries = list[dict[str, Any]]


def datalist_label_names(path: str | os.PathLike) -> list[str] | None:
    """The label table of a Decathlon datalist (``"labels": {"0": "background", ...}``, or
    nnU-Net v2's ``{"background": 0, ...}``) as one name per value ``0..K-1``; None when the file
    is not a datalist or has no table.

    Raises :class:`InputFileError` when the table's keys are not the values ``0..K-1``.
    """
    p = Path(path).expanduser()
    if not str(p).endswith(".json") or not p.is_file():
        return None
    try:
        table = json.loads(p.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError, AttributeError):
        return None  # read_datalist names what is wrong with the file
    if not isinstance(table, dict) or not table:
        return None
    nnunet = all(isinstance(v, int) and not isinstance(v, bool) for v in table.values())
    pairs = [(v, k) for k, v in table.items()] if nnunet else list(table.items())
    try:
        values = {int(k): str(v) for k, v in pairs}
    except (TypeError, ValueError):
        values = {}
    if sorted(values) != list(range(len(table))):
        raise InputFileError(
            f'datalist {p}: "labels" must map the values 0..K-1 to names '
            f'(e.g. {{"0": "background", "1": "liver"}}), got keys {sorted(table)}'
        )
    return [values[k] for k in range(len(values))]


def header_box(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(centre (3,), extent (3,)) in RAS mm of a NIfTI volume's voxel box, from its header only:
    the axis-aligned world box around the centres of the corner voxels (orientation-free)."""
    import nibabel as nib

    img: Any = nib.load(str(path))
    shape = np.asarray(img.shape[:3], dtype=np.float64)
    corners = np.array(np.meshgrid(*[[0.0, n - 1.0] for n in shape], indexing="ij"))
    corners = corners.reshape(3, -1)
    world = img.affine[:3, :3] @ corners + img.affine[:3, 3:4]  # (3, 8)
    lo, hi = world.min(axis=1), world.max(axis=1)
    # whole voxels: the corner centres plus half a voxel at each end, along each world axis
    voxel = np.abs(img.affine[:3, :3]).sum(axis=1)
    return (lo + hi) / 2.0, (hi - lo) + voxel


def geometry_record(
    first: str, paths: Sequence[str], *, spacing: Sequence[float]
) -> dict[str, Any]:
    """Where the export affine comes from and how the training scans' geometry varies.

    ``first`` is the training item whose transformed affine every exported sample takes;
    ``paths`` the training scans (headers are read, not voxels). ``varies`` is true when the
    centres or fields of view spread by more than one target voxel (``spacing``, mm) along an
    axis: then a sample's position is scan ``first``'s, not its own, which the ``note`` says.
    """
    boxes = [header_box(p) for p in paths]
    centres = np.array([c for c, _ in boxes])
    extents = np.array([e for _, e in boxes])
    c_spread = centres.max(axis=0) - centres.min(axis=0)
    e_spread = extents.max(axis=0) - extents.min(axis=0)
    voxel = np.asarray([float(s) for s in spacing])
    varies = bool(np.any(c_spread > voxel) or np.any(e_spread > voxel))
    r = lambda a: [round(float(v), 3) for v in a]  # noqa: E731
    note = (
        f"every exported sample takes the affine of training item {first}; the "
        f"{len(paths)} training scans' centres spread by {r(c_spread)} mm and their fields of "
        f"view by {r(e_spread)} mm (RAS): a sample's position is that scan's, not its own"
        if varies
        else f"every exported sample takes the affine of training item {first}; the "
        f"{len(paths)} training scans share one geometry (within a voxel)"
    )
    return {
        "affine_from": str(first),
        "items": len(paths),
        "varies": varies,
        "center_mm_min": r(centres.min(axis=0)),
        "center_mm_max": r(centres.max(axis=0)),
        "fov_mm_min": r(extents.min(axis=0)),
        "fov_mm_max": r(extents.max(axis=0)),
        "note": note,
    }


def split_entries(
    entries: Entries, *, val_fraction: float | None, seed: int, test_fraction: float = 0.0
) -> tuple[Entries, Entries, Entries]:
    """A reproducible, disjoint train/val/test split: ``(train, val, test)``.

    Shuffled with ``seed``: the first ``val_fraction`` is val (at least one item when there are
    two or more; None: no val items, e.g. the datalist has its own), the next ``test_fraction``
    test (at least one when > 0 and there are three or more), the rest train (at least one).
    The val items do not depend on ``test_fraction``.
    """
    n = len(entries)
    order = np.random.default_rng(int(seed)).permutation(n)
    n_val = 0
    if val_fraction is not None and n >= 2:
        n_val = min(max(int(round(n * float(val_fraction))), 1), n - 1)
    n_test = int(round(n * float(test_fraction)))
    if test_fraction > 0 and n >= 3:
        n_test = max(n_test, 1)
    n_test = max(0, min(n_test, n - n_val - 1))
    val = [entries[i] for i in order[:n_val]]
    test = [entries[i] for i in order[n_val : n_val + n_test]]
    train = [entries[i] for i in order[n_val + n_test :]]
    return train, val, test


def _user_error(err: BaseException | None) -> UserError | None:
    """The :class:`UserError` behind ``err`` (MONAI wraps transform errors in RuntimeError)."""
    seen = 0
    while err is not None and seen < 32:
        if isinstance(err, UserError):
            return err
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


class NiftiDataset(Dataset):
    """A MONAI dataset over NIfTI entries whose errors name the file they came from.

    A :class:`UserError` raised by a transform (e.g. NaN voxels in a file, see
    :class:`~medgen.imaging.transforms.FiniteCheckd`) comes out as itself, not wrapped.
    """

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
        self.inner: MonaiDataset
        if cache == "memory":
            try:  # loads (and checks) every item now
                self.inner = CacheDataset(data, transform, progress=False, num_workers=0)
            except Exception as err:
                if (user := _user_error(err)) is not None:
                    raise user from None
                raise
        elif cache == "disk":
            if not cache_dir:
                raise ConfigError(
                    "data.cache_dir", cache_dir, "a folder, needed by data.cache=disk"
                )
            self.inner = PersistentDataset(data, transform, cache_dir=cache_dir)
        elif cache == "none":
            self.inner = MonaiDataset(data, transform)
        else:
            raise ConfigError("data.cache", cache, "one of none, memory, disk")

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.inner[index]
        except Exception as err:
            if (user := _user_error(err)) is not None:
                raise user from None
            raise RuntimeError(f"cannot load {self.entries[index]['image']}: {err}") from err
