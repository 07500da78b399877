"""Diversity: mean pairwise MS-SSIM within a set of volumes (MONAI ``MultiScaleSSIMMetric``).

1 means every pair is identical; lower is more diverse. Read a sample set's figure beside the
reference set's: a model that collapses scores above the reference, one that makes noise below.

MS-SSIM settings for 16^3-128^3 (MONAI's defaults, an 11-voxel kernel and 5 scales, reject volumes
under about 160 voxels per side): a 3-voxel Gaussian kernel (sigma 1.5) and as many scales as
keep the coarsest one at 8 or more voxels per side (2 at 16^3, 3 at 32^3, 4 at 64^3, 5 at 128^3),
weighted by the first entries of MONAI's (Wang et al. 2003) scale weights, renormalised to sum 1.
``data_range`` is 2 (volumes in [-1, 1]).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch

# Wang, Simoncelli and Bovik 2003, "Multiscale structural similarity for image quality assessment"
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
KERNEL_SIZE = 3
KERNEL_SIGMA = 1.5
COARSEST_VOXELS = 8


def ms_ssim_weights(shape: Sequence[int]) -> tuple[float, ...]:
    """Scale weights for volumes of ``shape`` (D, H, W) (see the module docstring)."""
    side = min(int(s) for s in shape)
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and side // 2**scales >= COARSEST_VOXELS:
        scales += 1
    w = np.asarray(MS_SSIM_WEIGHTS[:scales])
    return tuple(float(v) for v in w / w.sum())


def ms_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MS-SSIM of each pair of (B, 1, D, H, W) volumes in [-1, 1]: (B,)."""
    from monai.metrics import MultiScaleSSIMMetric

    metric = MultiScaleSSIMMetric(
        spatial_dims=3,
        data_range=2.0,
        kernel_size=KERNEL_SIZE,
        kernel_sigma=KERNEL_SIGMA,
        weights=ms_ssim_weights(x.shape[2:]),
    )
    value = metric(x.float(), y.float())
    assert isinstance(value, torch.Tensor)  # one tensor for one batch (MONAI's type is wider)
    return value.reshape(-1)


def pairs(n: int, max_pairs: int | None, seed: int = 0) -> list[tuple[int, int]]:
    """All ``i < j`` pairs of ``n`` items, or a seeded random ``max_pairs`` of them."""
    every = list(itertools.combinations(range(n), 2))
    if max_pairs is None or len(every) <= max_pairs:
        return every
    pick = np.random.default_rng(seed).choice(len(every), size=max_pairs, replace=False)
    return [every[k] for k in sorted(pick)]


def mean_pairwise_ms_ssim(
    images: torch.Tensor,
    *,
    max_pairs: int | None = 1000,
    seed: int = 0,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> float:
    """Mean MS-SSIM over pairs of distinct volumes of ``images`` (N, 1, D, H, W), N >= 2."""
    from tqdm.auto import tqdm

    if images.shape[0] < 2:
        raise ValueError(f"diversity needs 2+ volumes, got {images.shape[0]}")
    todo = pairs(images.shape[0], max_pairs, seed)
    values = []
    chunks = range(0, len(todo), batch_size)
    for start in tqdm(chunks, desc="MS-SSIM", unit="batch", disable=None if progress else True):
        i, j = zip(*todo[start : start + batch_size], strict=True)
        a, b = images[list(i)].to(device), images[list(j)].to(device)
        values.append(ms_ssim(a, b).cpu())
    return float(torch.cat(values).double().mean())
