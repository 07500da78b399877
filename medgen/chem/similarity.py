"""Fingerprints and aggregated Tanimoto similarity (SNN, IntDiv), as in MOSES.

Fingerprints are Morgan (ECFP-like) bit vectors from ``rdFingerprintGenerator``; similarity is
computed blockwise as a matrix product in torch so that a 176k x 1024 reference fits in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import cache

import numpy as np
from rdkit import Chem


@cache
def _morgan_generator(radius: int, n_bits: int):
    from rdkit.Chem import rdFingerprintGenerator

    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


def morgan_fingerprints(
    mols: Iterable[Chem.Mol], radius: int = 2, n_bits: int = 1024
) -> np.ndarray:
    """Morgan bit vectors, shape ``(N, n_bits)``, dtype uint8 (0/1). MOSES: radius 2, 1024 bits."""
    gen = _morgan_generator(radius, n_bits)
    rows = [gen.GetFingerprintAsNumPy(m).astype(np.uint8) for m in mols]
    return np.stack(rows) if rows else np.zeros((0, n_bits), dtype=np.uint8)


def aggregated_tanimoto(
    reference: np.ndarray,
    generated: np.ndarray,
    *,
    agg: str = "max",
    p: float = 1.0,
    batch_size: int = 5000,
) -> np.ndarray:
    """For each generated fingerprint, the max (or power mean) Tanimoto similarity to ``reference``.

    Args:
        reference: ``(R, D)`` 0/1 fingerprints. generated: ``(G, D)``.
        agg: ``"max"`` (nearest neighbour) or ``"mean"``; with ``"mean"`` and ``p != 1`` the result
            is ``(mean_j T_ij^p)^(1/p)`` (MOSES ``average_agg_tanimoto``).
    Returns:
        ``(G,)`` float64. Two all-zero fingerprints have similarity 1 (as in MOSES).
    """
    import torch

    if agg not in ("max", "mean"):
        raise ValueError(f"agg must be 'max' or 'mean', got {agg!r}")
    gen_all = torch.from_numpy(np.ascontiguousarray(generated)).float()  # (G, D)
    out = torch.zeros(len(gen_all), dtype=torch.float64)
    for j in range(0, reference.shape[0], batch_size):
        ref = torch.from_numpy(np.ascontiguousarray(reference[j : j + batch_size])).float()
        ref_bits = ref.sum(1, keepdim=True)  # (r, 1)
        for i in range(0, len(gen_all), batch_size):
            gen = gen_all[i : i + batch_size].T  # (D, g)
            both = ref @ gen  # (r, g): bits set in both
            sim = torch.nan_to_num(both / (ref_bits + gen.sum(0, keepdim=True) - both), nan=1.0)
            if p != 1:
                sim = sim.double() ** p
            part = sim.max(0).values if agg == "max" else sim.double().sum(0)
            if agg == "max":
                out[i : i + batch_size] = torch.maximum(out[i : i + batch_size], part.double())
            else:
                out[i : i + batch_size] += part
    if agg == "mean":
        out /= max(reference.shape[0], 1)
    if p != 1:
        out = out ** (1 / p)
    return out.numpy()


def internal_max_similarity(fps: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """Each molecule's max Tanimoto similarity to the *other* molecules of the set, ``(N,)``.

    GuacaMol's internal similarity (its pairwise matrix has a zero diagonal).
    """
    import torch

    x = torch.from_numpy(np.ascontiguousarray(fps)).float()  # (N, D)
    bits = x.sum(1)
    out = np.zeros(len(x))
    for i in range(0, len(x), batch_size):
        block = x[i : i + batch_size]
        both = block @ x.T  # (b, N)
        sim = torch.nan_to_num(both / (bits[i : i + batch_size, None] + bits[None, :] - both), 1.0)
        rows = torch.arange(len(block))
        sim[rows, rows + i] = 0.0
        out[i : i + len(block)] = sim.max(1).values.numpy() if len(x) > 1 else 0.0
    return out


def cosine_similarity_counts(reference: Mapping[str, int], generated: Mapping[str, int]) -> float:
    """Cosine similarity of two count vectors given as ``{key: count}`` (missing keys are 0).

    NaN when either is empty (MOSES Frag/Scaf convention).
    """
    if not reference or not generated:
        return float("nan")
    keys = sorted(set(reference) | set(generated))
    ref = np.array([reference.get(k, 0) for k in keys], dtype=np.float64)
    gen = np.array([generated.get(k, 0) for k in keys], dtype=np.float64)
    return float(ref @ gen / (np.linalg.norm(ref) * np.linalg.norm(gen)))
