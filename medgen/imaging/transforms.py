"""MONAI transform pipeline for users' NIfTI scans, and checks that name the offending file.

Pipeline (dictionary transforms on ``{"image": path, "label": path?, ...}``):
``LoadImaged`` -> :class:`FiniteCheckd` (NaN/inf voxels: an error naming the file) ->
``EnsureChannelFirstd`` -> ``Orientationd("RAS")`` -> ``Spacingd`` (target mm;
bilinear for images, nearest for labels) -> intensity mapping to [-1, 1]
(``ScaleIntensityRanged``, or :class:`UnitIntensityd` for per-volume percentiles) -> crop/pad
(``ResizeWithPadOrCropd``, padding with -1 = the bottom of the intensity range), :class:`FitBodyd`
(crop to the body, shrink uniformly only if it is larger than the shape, pad) or ``Resized`` to
the training shape -> :class:`ToScanItemd` (plain tensors: ``image`` (1, D, H, W) float32, ``label``
(1, D, H, W) int64, ``affine`` (4, 4) float64 RAS mm, ``source`` path).

CT body voxels are those above :data:`BODY_HU` (-500 HU); :class:`BodyCropCheckd` warns once per
file when the centre crop removes some of them.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medgen.errors import ConfigError, InputFileError
from medgen.imaging.intensity import IntensityMapping
from medgen.imaging.sources import InputFileNotFound
from medgen.utils.logging import get_logger

log = get_logger(__name__)

BODY_HU = -500.0  # CT voxels above this are body (below: air and lung-like background)
# files already warned about in this process (a warning per file, not per epoch)
_WARNED: set[str] = set()


class ShapeMode(StrEnum):
    """How a resampled scan is brought to the training shape."""

    CROP_PAD = "crop_pad"  # centre crop / pad with -1 (the bottom of the intensity range)
    RESIZE = "resize"  # interpolate to the shape (changes the voxel size, per axis)
    # crop to the body, shrink uniformly (aspect kept) only when it is larger than the shape, pad
    FIT = "fit"


SHAPE_MODES = tuple(m.value for m in ShapeMode)


def count_non_finite(x: Any) -> int:
    """Number of NaN or +-inf values in an array or tensor (0 for integer data)."""
    t = torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    if not (t.is_floating_point() or t.is_complex()):
        return 0
    return int(t.numel() - torch.isfinite(t).sum())


class FiniteCheckd:
    """Raise :class:`InputFileError` naming the file when a loaded volume holds NaN/inf voxels.

    Runs right after loading, so the count is the file's own voxels (resampling would spread a
    NaN over its neighbours and the loss would turn NaN without saying where it came from).
    :func:`build_nifti_transforms` registers it as a MONAI ``Transform``, so that MONAI's
    Cache/PersistentDataset keep caching the (deterministic) steps after it.
    """

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = list(keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        for key in self.keys:
            x = data[key]
            bad = count_non_finite(x)
            if bad:
                meta = getattr(x, "meta", None) or {}
                path = meta.get("filename_or_obj") or data.get("source", "?")
                raise InputFileError(
                    f"{key} file {path} holds {bad} non-finite (NaN/inf) voxel(s) of "
                    f"{int(np.prod(x.shape))}; fix the file or leave it out of data.path"
                )
        return data


class UnitIntensityd:
    """Map ``data[key]`` to [-1, 1] with :meth:`IntensityMapping.to_unit` (per-volume percentiles;
    a constant volume maps to -1 instead of dividing by zero as MONAI's percentile scaling does)."""

    def __init__(self, key: str, mapping: IntensityMapping) -> None:
        self.key, self.mapping = key, mapping

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        out[self.key] = self.mapping.to_unit(data[self.key])
        return out


class ToScanItemd:
    """Turn MONAI's MetaTensors into medgen's plain scan item (see module docstring)."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[str, Any]:
        image = data["image"]
        affine = getattr(image, "affine", None)
        if affine is None:
            raise ValueError(f"{data.get('source')}: the loaded image carries no affine")
        item: dict[str, Any] = {
            "image": torch.as_tensor(np.asarray(image), dtype=torch.float32).contiguous(),
            "affine": torch.as_tensor(np.asarray(affine), dtype=torch.float64).clone(),
            "source": str(data.get("source", "")),
        }
        if data.get("label") is not None:
            label = torch.as_tensor(np.asarray(data["label"])).round().to(torch.int64)
            item["label"] = label.contiguous()
        if data.get("class_label") is not None:
            item["class_label"] = int(data["class_label"])
        return item


def body_threshold(intensity: IntensityMapping) -> float | None:
    """:data:`BODY_HU` in the model's [-1, 1] for a CT window that reaches below it, else None
    (MR, percentile scaling: no HU to tell body from air)."""
    if intensity.kind != "ct_window" or intensity.lo >= BODY_HU:
        return None
    return float(np.asarray(intensity.to_unit(np.array([BODY_HU], dtype=np.float32)))[0])


def _source(data: Mapping[Hashable, Any], key: str = "image") -> str:
    meta = getattr(data[key], "meta", None) or {}
    return str(meta.get("filename_or_obj") or data.get("source", "?"))


def _body_box(image: Any, threshold: float) -> tuple[np.ndarray, np.ndarray] | None:
    """(start, stop) voxel indices of the body's bounding box in a (1, D, H, W) image."""
    mask = np.asarray(image)[0] > threshold
    if not mask.any():
        return None
    idx = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    return np.array([i[0] for i in idx]), np.array([i[-1] + 1 for i in idx])


class BodyCropCheckd:
    """Centre pad/crop to ``spatial_size`` (MONAI ``ResizeWithPadOrCropd``: images padded with
    -1, labels with 0) and warn once per file when the crop removes body voxels (above
    ``threshold`` in [-1, 1], i.e. :data:`BODY_HU`), naming the file, the share lost and a
    spacing that would fit the body."""

    def __init__(
        self,
        keys: Sequence[str],
        spatial_size: Sequence[int],
        spacing: Sequence[float],
        threshold: float | None,
    ) -> None:
        from monai.transforms import ResizeWithPadOrCropd

        self.size = tuple(int(s) for s in spatial_size)
        self.spacing, self.threshold = tuple(float(s) for s in spacing), threshold
        self.crops = [
            ResizeWithPadOrCropd(keys=k, spatial_size=self.size, value=-1.0 if k == "image" else 0)
            for k in keys
        ]

    def __call__(self, data: Mapping[Hashable, Any]) -> Mapping[Hashable, Any]:
        before = None
        if self.threshold is not None:
            before = int((np.asarray(data["image"]) > self.threshold).sum())
        out = data
        for crop in self.crops:
            out = crop(out)
        if before:
            after = int((np.asarray(out["image"]) > self.threshold).sum())
            self.warn(data, (before - after) / before)
        return out

    def warn(self, data: Mapping[Hashable, Any], lost: float) -> None:
        source = _source(data)
        if lost <= 0.0 or source in _WARNED:
            return
        _WARNED.add(source)
        box = _body_box(data["image"], float(self.threshold or 0.0))
        fits = ""
        if box is not None:
            extent = (box[1] - box[0]) * np.asarray(self.spacing)  # mm
            need = float(np.max(extent / np.asarray(self.size)))
            fits = f" (a spacing of {need:.2f} mm fits its body)"
        log.warning(
            "data: the centre crop to %s voxels at %s mm removes %.1f%% of the body voxels "
            "(HU > %g) of %s; raise data.spatial_size or data.spacing%s, or set "
            "data.shape_mode=fit",
            list(self.size),
            list(self.spacing),
            100.0 * lost,
            BODY_HU,
            source,
            fits,
        )


class FitBodyd:
    """Bring a resampled scan to ``spatial_size`` keeping its aspect: crop to the body's box
    (above ``threshold``; the whole volume when there is none), shrink it by one factor on every
    axis only when the box is larger than the shape (MONAI ``Spacingd``: the voxel size grows by
    that factor, recorded in the affine), then centre pad (images -1, labels 0).

    Unlike ``resize`` no axis is stretched, and unlike ``crop_pad`` no body voxel is cut off; a
    scan that fits keeps the target spacing exactly.
    """

    def __init__(self, keys: Sequence[str], spatial_size: Sequence[int], threshold: float | None):
        self.keys = list(keys)
        self.size = np.asarray([int(s) for s in spatial_size])
        self.threshold = threshold

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        from monai.transforms import ResizeWithPadOrCropd, Spacingd, SpatialCropd

        out = dict(data)
        image = out["image"]
        threshold = self.threshold if self.threshold is not None else -1.0 + 1e-6
        box = _body_box(image, threshold)
        if box is not None:
            crop = SpatialCropd(keys=self.keys, roi_start=box[0].tolist(), roi_end=box[1].tolist())
            out = dict(crop(out))
        extent = np.asarray(out["image"].shape[1:])
        factor = float(np.max(extent / self.size))
        if factor > 1.0:
            spacing = np.linalg.norm(np.asarray(out["image"].affine)[:3, :3], axis=0) * factor
            modes = ["bilinear" if k == "image" else "nearest" for k in self.keys]
            out = dict(Spacingd(keys=self.keys, pixdim=tuple(spacing), mode=modes)(out))
        for k in self.keys:
            pad = ResizeWithPadOrCropd(
                keys=k, spatial_size=tuple(self.size), value=-1.0 if k == "image" else 0
            )
            out = dict(pad(out))
        return out


def build_nifti_transforms(
    *,
    spatial_size: Sequence[int],
    spacing: Sequence[float],
    intensity: IntensityMapping,
    shape_mode: ShapeMode = ShapeMode.CROP_PAD,
    with_label: bool = False,
):
    """The MONAI ``Compose`` that maps a NIfTI (image[, label]) to a fixed-shape training item."""
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        Orientationd,
        Resized,
        Spacingd,
        Transform,
    )

    # MONAI caches up to the first non-Transform: go past these (all deterministic)
    for cls in (FiniteCheckd, BodyCropCheckd, FitBodyd):
        Transform.register(cls)

    if shape_mode not in SHAPE_MODES:
        raise ConfigError("data.shape_mode", shape_mode, f"one of {', '.join(SHAPE_MODES)}")
    keys = ["image", "label"] if with_label else ["image"]
    interp = ("bilinear", "nearest") if with_label else ("bilinear",)
    transforms = [
        LoadImaged(keys=keys, image_only=True),
        FiniteCheckd(keys),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        Spacingd(keys=keys, pixdim=tuple(float(s) for s in spacing), mode=interp),
        UnitIntensityd("image", intensity)
        if intensity.kind == "percentile"
        else intensity.monai_transform("image"),
    ]
    size = tuple(int(s) for s in spatial_size)
    threshold = body_threshold(intensity)
    if shape_mode == "crop_pad":
        transforms.append(BodyCropCheckd(keys, size, spacing, threshold))
    elif shape_mode == "fit":
        transforms.append(FitBodyd(keys, size, threshold))
    else:
        transforms.append(
            Resized(keys=keys, spatial_size=size, mode=("trilinear", "nearest")[: len(keys)])
        )
    transforms.append(ToScanItemd())
    return Compose(transforms)


def check_nifti(path: str | os.PathLike, *, role: str = "image") -> tuple[int, ...]:
    """Check that ``path`` is a readable 3D NIfTI volume; return its spatial shape.

    Reads the header only (voxel values are checked when loaded, by :class:`FiniteCheckd`).
    Raises :class:`InputFileError` (:class:`InputFileNotFound` when missing) naming the path and
    the reason (missing, empty, corrupt, or a shape that cannot be mapped to a single-channel 3D
    training volume).
    """
    import nibabel as nib

    p = Path(path)
    if not p.is_file():
        raise InputFileNotFound(f"{role} file not found: {p}")
    if p.stat().st_size == 0:
        raise InputFileError(f"{role} file is empty: {p}")
    try:
        img: Any = nib.load(str(p))  # a Nifti1Image (nibabel types it as any image)
        shape = tuple(int(s) for s in img.shape)
    except Exception as err:  # nibabel raises several types for truncated / foreign files
        raise InputFileError(f"{role} file is not a readable NIfTI volume: {p} ({err})") from err
    spatial = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(spatial) != 3:
        raise InputFileError(
            f"{role} {p} has shape {shape}: it cannot be mapped to a single-channel 3D training "
            "volume (need 3 spatial dims, or 4 with a last dim of 1)"
        )
    if min(spatial) < 2:
        raise InputFileError(
            f"{role} {p} has shape {shape}: a spatial dim below 2 voxels cannot be "
            "resampled to the training shape"
        )
    return spatial


def check_pair(image: str | os.PathLike, label: str | os.PathLike | None) -> None:
    """Check an image (and its label map, if any); a label whose shape differs names both files."""
    shape = check_nifti(image, role="image")
    if label is None:
        return
    lshape = check_nifti(label, role="label")
    if lshape != shape:
        raise InputFileError(
            f"label map {label} has shape {lshape} but its image {image} has shape {shape}"
        )


def percentile_reference(
    paths: Sequence[str | os.PathLike], lo: float, hi: float
) -> tuple[float, float]:
    """Median over ``paths`` of each volume's ``lo``-th / ``hi``-th percentile (source units).

    Raises :class:`InputFileError` naming a file that holds NaN/inf voxels.
    """
    import nibabel as nib

    los, his = [], []
    for p in paths:
        img: Any = nib.load(str(p))
        data = np.asarray(img.dataobj, dtype=np.float32)
        if bad := count_non_finite(data):
            raise InputFileError(
                f"image file {p} holds {bad} non-finite (NaN/inf) voxel(s) of {data.size}; "
                "fix the file or leave it out of data.path"
            )
        a, b = np.percentile(data, [lo, hi])
        los.append(float(a))
        his.append(float(b))
    return float(np.median(los)), float(np.median(his))
