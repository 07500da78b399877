"""Lightning datamodules for 3D scans: procedural phantoms, users' NIfTI scans, MedMNIST-3D.

All yield the same item (see :mod:`medgen.imaging.sources`) and describe their data in
``data_meta``, a plain dict that :class:`~medgen.imaging.diffusion.DiffusionModule` stores in every
checkpoint so that sampling and export can write volumes with the training data's geometry and
units::

    {"source": str, "spatial_size": [D, H, W], "spacing": [sx, sy, sz] (mm),
     "affine": 4x4 nested list (RAS+ mm), "intensity": IntensityMapping.to_dict(),
     "modality": "CT" | "MR" | "OT", "num_classes": int | None, "class_names": list | None}
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset, Subset

from medgen.imaging.intensity import IntensityMapping
from medgen.imaging.phantom import SIZE_CLASSES, phantom_affine, resolve_geometry
from medgen.utils.logging import get_logger

log = get_logger(__name__)


def _triple(value: Any, name: str, cast=float) -> tuple:
    vals = (
        list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value] * 3
    )
    if len(vals) != 3:
        raise ValueError(f"data.{name} must be one value or 3 values, got {value}")
    return tuple(cast(v) for v in vals)


class ScanDataModule(pl.LightningDataModule, abc.ABC):
    """Base datamodule: subclasses implement :meth:`build` (datasets and ``data_meta``).

    Args:
        batch_size: volumes per batch.
        num_workers: DataLoader worker processes (0: load in the main process).
        limit: at most this many items per split (None: all), e.g. ``debug=fast`` sets 16.
        seed: seed of the data itself (phantom subjects, train/val split).
        pin_memory: pin host memory (GPU training).
    """

    def __init__(
        self,
        *,
        batch_size: int = 2,
        num_workers: int = 0,
        limit: int | None = None,
        seed: int = 0,
        pin_memory: bool = False,
    ) -> None:
        super().__init__()
        if int(batch_size) < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.limit = None if limit is None else int(limit)
        self.seed, self.pin_memory = int(seed), bool(pin_memory)
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self._meta: dict[str, Any] | None = None

    # -- subclass API -----------------------------------------------------------------------------
    @abc.abstractmethod
    def build(self) -> tuple[Dataset, Dataset, dict[str, Any]]:
        """Return (train dataset, val dataset, data_meta)."""

    # -- Lightning --------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, meta = self.build()
        if self.limit is not None:
            train = Subset(train, range(min(self.limit, len(train))))
            val = Subset(val, range(min(self.limit, len(val))))
        if len(train) == 0:
            raise ValueError(f"{type(self).__name__}: the training split is empty")
        self.train_set, self.val_set, self._meta = train, val, meta
        log.info(
            "%s: %d train / %d val volumes of %s",
            meta["source"],
            len(train),
            len(val),
            meta["spatial_size"],
        )

    @property
    def data_meta(self) -> dict[str, Any]:
        """Plain description of the data (see module docstring); available after :meth:`setup`."""
        if self._meta is None:
            self.setup()
        assert self._meta is not None
        return self._meta

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            ds,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(ds) >= self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        self.setup()
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def _meta(
    source: str,
    size,
    spacing,
    intensity: IntensityMapping,
    modality: str,
    num_classes: int | None,
    class_names: list[str] | None,
    affine: Any = None,
) -> dict[str, Any]:
    """``data_meta``; ``affine`` (4, 4) is a transformed training item's (its column norms give
    the spacing), else a phantom-style affine centred at 0 from ``size`` and ``spacing``."""
    if affine is None:
        affine = phantom_affine(tuple(size), tuple(spacing))
    else:
        affine = np.asarray(affine, dtype=np.float64)
        spacing = np.linalg.norm(affine[:3, :3], axis=0)
    return {
        "source": source,
        "spatial_size": [int(s) for s in size],
        "spacing": [round(float(s), 6) for s in spacing],
        "affine": np.asarray(affine, dtype=np.float64).tolist(),
        "intensity": intensity.to_dict(),
        "modality": modality,
        "num_classes": num_classes,
        "class_names": class_names,
    }


class PhantomDataModule(ScanDataModule):
    """Procedural CT torso phantoms (``data=phantom``); no files needed.

    Args:
        size: voxels per axis (one int or 3), 16..256.
        spacing: mm per voxel (one or 3); None fits a 420 mm field of view.
        num_train, num_val: number of subjects; train seeds are ``seed + i``, val seeds
            ``seed + 1_000_000 + i`` (never overlapping).
        noise_hu: CT noise SD in HU.
        window_lo, window_hi: CT window in HU mapped to [-1, 1].
        cache: keep generated subjects in memory.
        batch_size, num_workers, limit, seed, pin_memory: see :class:`ScanDataModule`.
    """

    def __init__(
        self,
        *,
        size: int | Sequence[int] = 32,
        spacing: float | Sequence[float] | None = None,
        num_train: int = 256,
        num_val: int = 8,
        noise_hu: float = 12.0,
        window_lo: float = -1000.0,
        window_hi: float = 1000.0,
        cache: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        size = list(size) if isinstance(size, Sequence) else size
        spacing = list(spacing) if isinstance(spacing, Sequence) else spacing
        self.size, self.spacing = resolve_geometry(size, spacing)
        self.num_train, self.num_val = int(num_train), int(num_val)
        self.noise_hu, self.cache = float(noise_hu), bool(cache)
        self.intensity = IntensityMapping("ct_window", float(window_lo), float(window_hi))

    def build(self) -> tuple[Dataset, Dataset, dict[str, Any]]:
        from medgen.imaging.sources import PhantomDataset

        common = dict(
            size=self.size,
            spacing=self.spacing,
            intensity=self.intensity,
            noise_hu=self.noise_hu,
            cache=self.cache,
        )
        train = PhantomDataset(seeds=[self.seed + i for i in range(self.num_train)], **common)
        val = PhantomDataset(
            seeds=[self.seed + 1_000_000 + i for i in range(self.num_val)], **common
        )
        meta = _meta(
            "phantom",
            self.size,
            self.spacing,
            self.intensity,
            "CT",
            len(SIZE_CLASSES),
            list(SIZE_CLASSES),
        )
        return train, val, meta


class NiftiDataModule(ScanDataModule):
    """Users' NIfTI scans (``data=nifti data.path=<folder | glob | datalist.json>``) via MONAI.

    Args:
        path: a folder of ``.nii``/``.nii.gz``, a glob, or a Decathlon-style datalist JSON.
        labels: for a folder/glob, a folder with label maps of the same file names (optional).
        spatial_size: training shape (D, H, W) after resampling (one int or 3).
        spacing: target voxel size in mm (one or 3).
        shape_mode: ``crop_pad`` (centre crop / pad with -1) or ``resize``.
        modality: ``CT`` or ``MR`` (recorded for export).
        intensity: ``ct_window`` (lo/hi HU), ``percentile`` (lo/hi in %) or ``minmax``.
        intensity_lo, intensity_hi: bounds for ``intensity``.
        val_fraction: share of the entries held out for validation when the datalist has no
            ``validation`` list (split reproducibly with ``seed``).
        cache: ``none``, ``memory`` (MONAI CacheDataset) or ``disk`` (PersistentDataset in
            ``cache_dir``).
        cache_dir: folder for ``cache=disk``.
        class_names: names of the datalist's ``class_label`` values (optional).
    """

    def __init__(
        self,
        *,
        path: str,
        labels: str | None = None,
        spatial_size: int | Sequence[int] = 64,
        spacing: float | Sequence[float] = 2.0,
        shape_mode: str = "crop_pad",
        modality: str = "CT",
        intensity: str = "ct_window",
        intensity_lo: float = -1000.0,
        intensity_hi: float = 1000.0,
        val_fraction: float = 0.1,
        cache: str = "none",
        cache_dir: str | None = None,
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path, self.labels = str(path), (str(labels) if labels else None)
        self.spatial_size = _triple(spatial_size, "spatial_size", int)
        self.spacing = _triple(spacing, "spacing", float)
        self.shape_mode, self.modality = shape_mode, str(modality).upper()
        if self.modality not in ("CT", "MR"):
            raise ValueError(f"data.modality must be CT or MR, got {modality!r}")
        self.intensity = IntensityMapping(intensity, float(intensity_lo), float(intensity_hi))
        self.val_fraction, self.cache, self.cache_dir = float(val_fraction), cache, cache_dir
        self.class_names = list(class_names) if class_names else None

    def build(self) -> tuple[Dataset, Dataset, dict[str, Any]]:
        from medgen.imaging.sources import NiftiDataset, resolve_nifti_entries, split_entries
        from medgen.imaging.transforms import (
            build_nifti_transforms,
            check_pair,
            percentile_reference,
        )

        entries, val = resolve_nifti_entries(self.path, self.labels)
        for e in entries + (val or []):
            check_pair(e["image"], e.get("label"))
        if val is None:
            train, val = split_entries(entries, val_fraction=self.val_fraction, seed=self.seed)
        else:
            train = entries
        intensity = self.intensity
        if intensity.kind == "percentile":
            ref = percentile_reference([e["image"] for e in train[:8]], intensity.lo, intensity.hi)
            intensity = IntensityMapping("percentile", intensity.lo, intensity.hi, *ref)
        with_label = "label" in entries[0]
        tf = build_nifti_transforms(
            spatial_size=self.spatial_size,
            spacing=self.spacing,
            intensity=intensity,
            shape_mode=self.shape_mode,
            with_label=with_label,
        )
        classes = [e["class_label"] for e in entries + val if "class_label" in e]
        num_classes = max(classes) + 1 if classes else None
        names = self.class_names if num_classes else None
        kw = dict(cache=self.cache, cache_dir=self.cache_dir)
        train_ds, val_ds = NiftiDataset(train, tf, **kw), NiftiDataset(val, tf, **kw)
        # the geometry of a transformed item (MONAI's MetaTensor tracks the affine through
        # orientation, resampling, resize and crop/pad): world origin and true voxel size
        first = train_ds[0] if len(train_ds) else val_ds[0]
        meta = _meta(
            self.path,
            self.spatial_size,
            self.spacing,
            intensity,
            self.modality,
            num_classes,
            names,
            affine=first["affine"].numpy(),
        )
        return train_ds, val_ds, meta


class MedMNIST3DDataModule(ScanDataModule):
    """A published MedMNIST-3D ``.npz`` (``data=medmnist3d data.path=<file.npz>``); no download.

    Args:
        path: the ``.npz`` (``train_images`` (N, S, S, S) uint8, ``train_labels`` (N, 1),
            ``val_*``).
        spatial_size: training shape; volumes are centre padded/cropped (28^3 -> 32^3 by default).
        spacing: nominal voxel size in mm written into the affine (MedMNIST records none).
        modality: recorded for export only (default ``OT``, DICOM "other"): MedMNIST holds
            0..255 display values, exported in that scale (float32), never as HU.
        class_names: names of the label values (optional).
    """

    def __init__(
        self,
        *,
        path: str,
        spatial_size: int | Sequence[int] = 32,
        spacing: float | Sequence[float] = 1.0,
        modality: str = "OT",
        class_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = str(path)
        self.spatial_size = _triple(spatial_size, "spatial_size", int)
        self.spacing = _triple(spacing, "spacing", float)
        self.modality = str(modality).upper()
        self.class_names = list(class_names) if class_names else None
        self.intensity = IntensityMapping("minmax", 0.0, 255.0)

    def build(self) -> tuple[Dataset, Dataset, dict[str, Any]]:
        from medgen.imaging.sources import MedMNIST3DDataset

        kw = dict(
            path=self.path,
            spatial_size=self.spatial_size,
            spacing=self.spacing,
            intensity=self.intensity,
        )
        train = MedMNIST3DDataset(split="train", **kw)
        val = MedMNIST3DDataset(split="val", **kw)
        num_classes = int(max(train.labels.max(), val.labels.max())) + 1
        meta = _meta(
            self.path,
            self.spatial_size,
            self.spacing,
            self.intensity,
            self.modality,
            num_classes,
            self.class_names,
        )
        return train, val, meta
