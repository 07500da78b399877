"""Memorization: every sample's nearest training volume, and the samples that are too close.

Similarity is the normalized (Pearson) correlation of two volumes in the model's [-1, 1] (after
the training preprocessing), over all voxels; distance is ``1 - correlation``. Volumes larger than
64 voxels per side are average pooled to at most 64 first (a copy stays a copy).

Rule: a sample is **flagged** when its distance to the nearest training volume is below the
``percentile``-th percentile (default 1) of the training volumes' distances to *their* nearest
other training volume: it is closer to a training scan than nearly all training scans are to each
other. A fresh draw from the training distribution is flagged with probability about
``percentile`` / 100; an exact or near copy of a training volume always is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

MAX_SIDE = 64


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, D, H, W) -> (N, V) rows of zero mean and unit norm (pooled to <= 64^3)."""
    x = x.float()
    side = max(x.shape[2:])
    if side > MAX_SIDE:
        k = int(np.ceil(side / MAX_SIDE))
        x = F.avg_pool3d(x, kernel_size=k, stride=k, ceil_mode=True)
    v = x.reshape(x.shape[0], -1)
    v = v - v.mean(1, keepdim=True)
    return v / v.norm(dim=1, keepdim=True).clamp_min(1e-8)


def correlation(a: torch.Tensor, b: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Normalized correlation (N, M) between volumes (N, 1, D, H, W) and (M, 1, D, H, W)."""
    fa, fb = _flat(a), _flat(b)
    return torch.cat([fa[s : s + chunk] @ fb.t() for s in range(0, fa.shape[0], chunk)])


@dataclass(frozen=True)
class FlaggedPair:
    sample: str
    train: str
    correlation: float
    distance: float


def memorization(
    samples: torch.Tensor,
    train: torch.Tensor,
    *,
    sample_ids: list[str],
    train_ids: list[str],
    percentile: float = 1.0,
) -> dict[str, Any]:
    """Nearest training volume of each sample and the flagged pairs (see the module docstring).

    Returns ``threshold`` (distance), ``flagged`` (list of pairs, closest first),
    ``flagged_fraction``, ``nearest`` (per sample: train id, correlation, distance), the medians
    of the sample->train and train->train nearest distances and their ratio (near 1 for fresh
    draws, towards 0 for copies). Needs 2+ training volumes.
    """
    if train.shape[0] < 2:
        raise ValueError(f"memorization needs 2+ training volumes, got {train.shape[0]}")
    st = correlation(samples, train)  # (N, M)
    tt = correlation(train, train)
    tt.fill_diagonal_(-float("inf"))  # a training volume's nearest *other* training volume
    s_corr, s_idx = st.max(dim=1)
    t_dist = (1.0 - tt.max(dim=1).values).double().numpy()
    s_dist = (1.0 - s_corr).double().numpy()
    threshold = float(np.percentile(t_dist, percentile))
    nearest: list[dict[str, Any]] = [
        {"sample": sample_ids[i], "train": train_ids[int(s_idx[i])],
         "correlation": float(s_corr[i]), "distance": float(s_dist[i])}
        for i in range(len(sample_ids))
    ]  # fmt: skip
    flagged = sorted(
        (
            FlaggedPair(n["sample"], n["train"], n["correlation"], n["distance"])
            for n, d in zip(nearest, s_dist, strict=True)
            if d < threshold
        ),
        key=lambda p: p.distance,
    )
    median_s, median_t = float(np.median(s_dist)), float(np.median(t_dist))
    return {
        "percentile": float(percentile),
        "threshold": threshold,
        "flagged": [asdict(p) for p in flagged],
        "flagged_fraction": len(flagged) / max(1, len(sample_ids)),
        "nearest": nearest,
        "median_nearest_distance": median_s,
        "median_train_nearest_distance": median_t,
        "distance_ratio": median_s / median_t if median_t > 0 else float("nan"),
    }
