"""Intensity mapping between a scan's own units (HU for CT, scanner units for MR) and [-1, 1].

Diffusion models train on images in [-1, 1]. :class:`IntensityMapping` records how a data set was
mapped, is stored in every checkpoint (``hparams["data_meta"]["intensity"]``) and lets export map
samples back:

- ``ct_window``: a fixed HU window ``[lo, hi]`` -> ``[-1, 1]``, clipped. Exactly invertible inside
  the window (values outside it come back as ``lo`` or ``hi``).
- ``percentile``: per volume, its ``lo``-th and ``hi``-th percentiles -> ``[-1, 1]``, clipped (MR,
  whose units are arbitrary). ``ref_lo``/``ref_hi`` hold typical source values of those percentiles
  over the training set (medians), used by :meth:`IntensityMapping.from_unit`.
- ``minmax``: fixed source values ``[lo, hi]`` -> ``[-1, 1]`` (e.g. ``0..255`` for MedMNIST).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from medgen.errors import UserError


class IntensityKind(StrEnum):
    """How source intensities map to [-1, 1] (see the module docstring)."""

    CT_WINDOW = "ct_window"  # lo/hi in HU
    PERCENTILE = "percentile"  # lo/hi in percent of each volume
    MINMAX = "minmax"  # lo/hi in source units


KINDS = tuple(k.value for k in IntensityKind)


class CTWindow(StrEnum):
    """Named HU windows for ``ct_window`` (``data.window``)."""

    # [-1000, 1000]: air to dense soft tissue; saturates cortical bone, contrast and metal
    SOFT = "soft"
    WIDE = "wide"  # [-1024, 3071]: the 12-bit CT range; keeps bone and most metal


WINDOWS: dict[CTWindow, tuple[float, float]] = {
    CTWindow.SOFT: (-1000.0, 1000.0),
    CTWindow.WIDE: (-1024.0, 3071.0),
}

# HU bands for the round-trip report: name -> [lo, hi] HU (typical tissue ranges)
HU_BANDS: dict[str, tuple[float, float]] = {
    "air": (-1024.0, -950.0),
    "lung": (-950.0, -500.0),
    "fat": (-150.0, -50.0),
    "soft_tissue": (-50.0, 100.0),
    "bone": (300.0, 1900.0),
    "metal": (2000.0, 3071.0),
}

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class IntensityMapping:
    """How source intensities map to the model's ``[-1, 1]``.

    Args:
        kind: ``"ct_window"`` (lo/hi in HU), ``"percentile"`` (lo/hi in percent, 0..100) or
            ``"minmax"`` (lo/hi in source units).
        lo: lower bound (HU, percent or source units, by ``kind``); maps to -1.
        hi: upper bound; maps to +1.
        ref_lo: ``percentile`` only: the source value that -1 maps back to (None: ``lo`` itself).
        ref_hi: ``percentile`` only: the source value that +1 maps back to (None: ``hi`` itself).
    """

    kind: IntensityKind = IntensityKind.CT_WINDOW  # a string is converted
    lo: float = -1000.0
    hi: float = 1000.0
    ref_lo: float | None = None
    ref_hi: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise UserError(f"intensity kind must be one of {KINDS}, got {self.kind!r}")
        object.__setattr__(self, "kind", IntensityKind(self.kind))
        if not float(self.hi) > float(self.lo):
            raise UserError(f"intensity {self.kind}: hi ({self.hi}) must be > lo ({self.lo})")
        if self.kind == "percentile" and not (0.0 <= self.lo < self.hi <= 100.0):
            raise UserError(
                f"percentile bounds must satisfy 0 <= lo < hi <= 100, got {self.lo}, {self.hi}"
            )

    @property
    def units(self) -> str:
        """Units of the values :meth:`from_unit` returns: ``"HU"`` for a CT window, else
        ``"source"`` (the source's own scale: MR scanner units, MedMNIST's 0..255)."""
        return "HU" if self.kind == "ct_window" else "source"

    # -- forward -----------------------------------------------------------------------------
    def source_range(self, x: ArrayLike | None = None) -> tuple[float, float]:
        """The source values that map to -1 and +1 (for ``percentile``: computed from ``x``)."""
        if self.kind != "percentile":
            return float(self.lo), float(self.hi)
        if x is None:
            raise ValueError("percentile mapping needs the volume to compute its percentiles")
        arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        lo, hi = np.percentile(arr.astype(np.float64), [self.lo, self.hi])
        if hi <= lo:  # a constant volume: map it to -1 rather than dividing by zero
            hi = lo + 1.0
        return float(lo), float(hi)

    def to_unit(self, x: ArrayLike) -> ArrayLike:
        """Map source intensities to ``[-1, 1]`` (clipped); same type/shape as ``x``, float32."""
        lo, hi = self.source_range(x)
        y = (x - lo) / (hi - lo) * 2.0 - 1.0
        if isinstance(y, torch.Tensor):
            return y.clamp(-1.0, 1.0).float()
        return np.clip(y, -1.0, 1.0).astype(np.float32)

    # -- inverse -----------------------------------------------------------------------------
    def output_range(self) -> tuple[float, float]:
        """The source values that -1 and +1 map back to in :meth:`from_unit`."""
        if self.kind == "percentile":
            lo = self.ref_lo if self.ref_lo is not None else self.lo
            hi = self.ref_hi if self.ref_hi is not None else self.hi
            return float(lo), float(hi)
        return float(self.lo), float(self.hi)

    def from_unit(self, x: ArrayLike) -> ArrayLike:
        """Map ``[-1, 1]`` back to source units (values outside are clipped to [-1, 1] first)."""
        lo, hi = self.output_range()
        if isinstance(x, torch.Tensor):
            x = x.clamp(-1.0, 1.0)
        else:
            x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
        return (x + 1.0) / 2.0 * (hi - lo) + lo

    # -- MONAI ---------------------------------------------------------------------------------
    def monai_transform(self, keys: str | list[str]):
        """The equivalent MONAI dictionary transform (``ScaleIntensityRanged`` /
        ``...Percentilesd``)."""
        from monai.transforms import ScaleIntensityRanged, ScaleIntensityRangePercentilesd

        if self.kind == "percentile":
            return ScaleIntensityRangePercentilesd(
                keys, lower=self.lo, upper=self.hi, b_min=-1.0, b_max=1.0, clip=True
            )
        return ScaleIntensityRanged(
            keys, a_min=self.lo, a_max=self.hi, b_min=-1.0, b_max=1.0, clip=True
        )

    # -- plain-dict round trip (checkpoints, sidecars) -----------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (str/float/None values) that :meth:`from_dict` turns back into it."""
        d = asdict(self)
        d["kind"] = str(self.kind)
        return {k: (float(v) if isinstance(v, int | float) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IntensityMapping:
        unknown = set(d) - {"kind", "lo", "hi", "ref_lo", "ref_hi"}
        if unknown:
            raise UserError(f"unknown intensity mapping keys {sorted(unknown)} in {d}")
        return cls(**d)


def roundtrip_error(
    mapping: IntensityMapping,
    bands: dict[str, tuple[float, float]] | None = None,
    *,
    step_hu: float = 0.5,
) -> dict[str, dict[str, float]]:
    """HU round-trip error of a ``ct_window`` mapping per band: every HU value of each band (in
    ``step_hu`` steps) mapped to [-1, 1] (float32, as the model sees it), back to HU and written
    as int16 (rounded), as export does.

    Returns ``{band: {"mean_abs_hu", "max_abs_hu", "clipped_fraction"}}``; ``clipped_fraction``
    is the share of the band outside the window (it comes back as the window's edge).
    """
    if mapping.kind != IntensityKind.CT_WINDOW:
        raise UserError(f"roundtrip_error needs a ct_window mapping, got {mapping.kind}")
    out: dict[str, dict[str, float]] = {}
    for name, (lo, hi) in (bands or HU_BANDS).items():
        hu = np.arange(lo, hi + step_hu / 2, step_hu, dtype=np.float64)
        unit = np.asarray(mapping.to_unit(hu.astype(np.float32)), dtype=np.float32)
        back = np.clip(np.rint(np.asarray(mapping.from_unit(unit))), -32768, 32767)
        err = np.abs(back.astype(np.int16).astype(np.float64) - hu)
        clipped = (hu < mapping.lo) | (hu > mapping.hi)
        out[name] = {
            "mean_abs_hu": float(err.mean()),
            "max_abs_hu": float(err.max()),
            "clipped_fraction": float(clipped.mean()),
        }
    return out
