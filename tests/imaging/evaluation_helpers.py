"""Tiny phantom volume sets for the scan-evaluation tests (16^3, a few subjects)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from medgen.imaging.evaluation.loading import VolumeSet
from medgen.imaging.intensity import IntensityMapping
from medgen.imaging.phantom import LABEL_NAMES, make_phantom

SIZE = 16


def phantom_set(seeds, name: str = "samples", *, hu_shift: float = 0.0) -> VolumeSet:
    """Phantoms of ``seeds`` at 16^3 as a :class:`VolumeSet` (labels included), HU + shift."""
    mapping = IntensityMapping()
    images, labels, keys = [], [], []
    spacing = None
    for seed in seeds:
        ph = make_phantom(int(seed), SIZE)
        x = torch.from_numpy(np.asarray(mapping.to_unit(ph.image + np.float32(hu_shift))))[None]
        images.append(x)
        labels.append(torch.from_numpy(ph.labels.astype(np.int64))[None])
        keys.append(hashlib.sha256(x.numpy().tobytes()).hexdigest())
        spacing = tuple(float(s) for s in np.diag(ph.affine)[:3])
    return VolumeSet(
        name,
        f"phantom:{name}",
        torch.stack(images),
        [f"phantom:{s}" for s in seeds],
        keys,
        mapping,
        spacing,  # type: ignore[arg-type]
        torch.stack(labels),
        dict(LABEL_NAMES),
    )


def renamed(vs: VolumeSet, name: str) -> VolumeSet:
    import dataclasses

    return dataclasses.replace(vs, name=name)
