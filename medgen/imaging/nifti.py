"""One generated volume as one NIfTI file: source units, dtype, affine, atomic save.

The folder these files go into (layout, sidecars, resume) is :mod:`medgen.imaging.cohort`'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medgen.utils.atomic import atomic_path
from medgen.utils.provenance import file_sha256

INT16_MIN, INT16_MAX = -32768, 32767


def to_source_units(volume: Any, intensity: Any, *, channels: int = 1) -> np.ndarray:
    """Map a generated volume ``(C, D, H, W)`` (or ``(D, H, W)`` when C = 1) in [-1, 1] to
    source units with ``intensity.from_unit`` (an ``IntensityMapping``; every channel alike).

    Returns ``(D, H, W)`` for one channel, ``(D, H, W, C)`` (NIfTI's 4th axis) for more: int16 HU
    (rounded, clipped to the int16 range) when the mapping's ``units`` are HU, float32
    otherwise. Raises ``ValueError`` for another channel count or non-finite values.
    """
    import torch

    x = torch.as_tensor(volume).detach().to("cpu", torch.float32)
    if x.ndim == 3 and channels == 1:
        x = x[None]
    if x.ndim != 4 or x.shape[0] != channels:
        want = f"({channels}, D, H, W)" if channels > 1 else "one channel (1, D, H, W) or (D, H, W)"
        raise ValueError(f"expected {want}, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("generated volume holds NaN or infinite values")
    y = np.asarray(torch.as_tensor(intensity.from_unit(x.clamp(-1.0, 1.0))), dtype=np.float64)
    y = y[0] if channels == 1 else np.moveaxis(y, 0, -1)  # (D, H, W) | (D, H, W, C)
    if getattr(intensity, "units", None) == "HU":
        return np.clip(np.rint(y), INT16_MIN, INT16_MAX).astype(np.int16)
    return y.astype(np.float32)


def nifti_image(data: np.ndarray, affine: np.ndarray, description: str):
    """A NIfTI-1 image with ``affine`` as qform and sform (code 1, scanner), units mm."""
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description[:79].encode()
    return img


def save_nifti(img, path: Path) -> str:
    """Save atomically (temporary file, then rename); return the file's sha256."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, tmp)
    return file_sha256(path)


def label_array(label: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """A label map ``(1, D, H, W)`` / ``(D, H, W)`` as uint8 (int16 beyond 0..255)."""
    lab = np.asarray(label.cpu() if hasattr(label, "cpu") else label).squeeze()
    if lab.shape != shape:
        raise ValueError(f"label map of {name} has shape {lab.shape}, image has {shape}")
    return lab.astype(np.uint8 if lab.min() >= 0 and lab.max() < 256 else np.int16)


def read_volume(path: Path) -> np.ndarray:
    """A NIfTI file's voxels as float32 (``(D, H, W)`` or ``(D, H, W, C)``)."""
    import nibabel as nib

    img: Any = nib.load(path)  # a Nifti1Image (nibabel types it as any image)
    return np.asarray(img.dataobj, dtype=np.float32)
