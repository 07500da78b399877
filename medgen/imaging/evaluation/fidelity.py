"""Fidelity on features: Fréchet distance and MMD between samples and a reference (MONAI).

Both take features (N, F) and (M, F) of one extractor (:mod:`~.features`); lower is closer.
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch


def frechet_distance(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (MONAI ``FIDMetric``;
    Heusel et al. 2017, https://arxiv.org/abs/1706.08500, eq. 2). Needs 2+ rows on each side.

    With fewer rows than features the covariances are rank deficient and the distance is biased
    upwards; compare figures at the same N (the real-vs-real floor).
    """
    from monai.metrics import FIDMetric

    if samples.shape[0] < 2 or reference.shape[0] < 2:
        raise ValueError(
            f"Fréchet distance needs 2+ volumes per set, got {samples.shape[0]} and "
            f"{reference.shape[0]}"
        )
    # with fewer volumes than features the covariances are singular (expected, see above):
    # MONAI prints a note and scipy warns; keep stdout and the warnings for real surprises
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*singular.*")
        value = FIDMetric()(samples.double(), reference.double())
    return max(0.0, float(value))  # tiny negative values are rounding


def mmd(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Unbiased squared MMD with a linear kernel (MONAI ``MMDMetric``; Gretton et al. 2012,
    JMLR 13, Lemma 6) on features standardised by the reference's per-feature mean and SD, so
    that every feature weighs alike and the figure has no units.

    MONAI needs equal set sizes: the first ``min(N, M)`` rows of each are used. The estimate is
    unbiased, so sets from one distribution score about 0, slightly negative as often as not.
    """
    from monai.metrics import MMDMetric

    n = min(samples.shape[0], reference.shape[0])
    if n < 2:
        raise ValueError(
            f"MMD needs 2+ volumes per set, got {samples.shape[0]}, {reference.shape[0]}"
        )
    ref = reference.double()
    mean, sd = ref.mean(0), ref.std(0).clamp_min(1e-8)
    z_s, z_r = (samples.double() - mean) / sd, (ref - mean) / sd
    return float(MMDMetric()(z_r[:n], z_s[:n]))
