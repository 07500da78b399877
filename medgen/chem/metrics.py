"""Generative-model metrics for molecules, with the MOSES definitions.

Reference: Polykovskiy et al., "Molecular Sets (MOSES): A Benchmarking Platform for Molecular
Generation Models", Front. Pharmacol. 2020. GuacaMol: Brown et al., J. Chem. Inf. Model. 2019.

The simple metrics here (validity, uniqueness, novelty) are pure functions of SMILES lists; each is
defined once, here, and :func:`medgen.chem.evaluation.evaluate_smiles` calls them. Uniqueness and
novelty take ``canonical=True`` for a list that is already :func:`valid_canonical` (so a caller
that needs the canonical forms anyway parses each SMILES once).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from medgen.chem.mol import canonical_smiles, parse_smiles
from medgen.chem.reference import KL_CONTINUOUS, KL_DESCRIPTORS
from medgen.chem.similarity import (
    ROW_BLOCK,
    FingerprintIndex,
    aggregated_tanimoto,
    internal_max_rows,
    max_tanimoto,
    tanimoto_row_sums,
)

__all__ = [
    "canonical_smiles",
    "fraction_passes_filters",
    "fraction_unique",
    "fraction_valid",
    "internal_diversity",
    "internal_diversities",
    "internal_similarity",
    "kl_divergence_score",
    "novelty",
    "nearest_similarities",
    "snn",
    "valid_canonical",
]


def fraction_valid(smiles: Sequence[str | None]) -> float:
    """Fraction of entries RDKit parses and sanitizes (None and empty strings count as invalid).

    Returns 0.0 for an empty list.
    """
    if len(smiles) == 0:
        return 0.0
    return sum(parse_smiles(s) is not None for s in smiles) / len(smiles)


def valid_canonical(smiles: Iterable[str | None]) -> list[str]:
    """Canonical SMILES of the valid entries, in order, duplicates kept (invalid ones dropped)."""
    return [c for c in (canonical_smiles(s) for s in smiles) if c is not None]


def fraction_unique(
    smiles: Sequence[str | None], k: int | None = None, *, canonical: bool = False
) -> float:
    """MOSES unique@k: distinct canonical SMILES among the first ``k`` *valid* entries.

    As in MOSES, invalid entries are dropped first, then the first ``k`` valid ones are compared
    (``k=None``: all). With fewer than ``k`` valid entries all are used. Returns 0.0 when nothing
    is valid. ``canonical=True``: ``smiles`` is already :func:`valid_canonical`.
    """
    canon = list(smiles) if canonical else valid_canonical(smiles)
    if k is not None:
        canon = canon[:k]
    if not canon:
        return 0.0
    return len(set(canon)) / len(canon)


def novelty(
    smiles: Sequence[str | None], train: Iterable[str], *, canonical: bool = False
) -> float:
    """MOSES novelty: fraction of unique valid generated molecules whose canonical SMILES is not in
    ``train``.

    ``train`` should hold canonical SMILES (MOSES train is stored canonical); entries are used as
    given, so pass canonicalized SMILES when the source is not. Returns 0.0 when nothing is valid.
    ``canonical=True``: ``smiles`` is already :func:`valid_canonical`.
    """
    gen = set(smiles) if canonical else set(valid_canonical(smiles))
    if not gen:
        return 0.0
    train_set = train if isinstance(train, set | frozenset) else set(train)
    return len(gen - train_set) / len(gen)


# --------------------------------------------------------------------------------------------
# distribution metrics on precomputed features (MOSES / GuacaMol)


def internal_diversity(fps: np.ndarray, p: int = 1) -> float:
    """MOSES IntDiv_p: ``1 - mean_i (mean_j T_ij^p)^(1/p)`` over the set (self pairs included).

    ``fps``: ``(N, D)`` 0/1 Morgan fingerprints (radius 2, 1024 bits).
    """
    if len(fps) == 0:
        return float("nan")
    return float(1 - aggregated_tanimoto(fps, fps, agg="mean", p=p).mean())


def snn(fps: np.ndarray, reference_fps: np.ndarray) -> float:
    """MOSES SNN: mean over generated molecules of the max Tanimoto to the reference set."""
    if len(fps) == 0:
        return float("nan")
    return float(aggregated_tanimoto(reference_fps, fps, agg="max").mean())


# the same metrics on packed fingerprints ((N, D // 8) uint8), over a pool of worker processes


def nearest_similarities(
    packed: np.ndarray,
    index: FingerprintIndex,
    *,
    n_jobs: int = 1,
    executor: ProcessPoolExecutor | None = None,
    chunk_size: int = 2048,
) -> np.ndarray:
    """Each molecule's max Tanimoto similarity to the reference ``index``, ``(N,)``; their mean
    is MOSES SNN. Chunks of molecules run in ``n_jobs`` workers (or ``executor``)."""
    from medgen.chem.parallel import map_chunks

    chunks = [packed[i : i + chunk_size] for i in range(0, len(packed), chunk_size)]
    parts = map_chunks(max_tanimoto, chunks, n_jobs=n_jobs, args=(index,), executor=executor)
    return np.concatenate([np.zeros(0), *parts])


def internal_diversities(
    packed: np.ndarray,
    *,
    n_bits: int = 1024,
    n_jobs: int = 1,
    executor: ProcessPoolExecutor | None = None,
    block: int = ROW_BLOCK,
) -> tuple[float, float]:
    """MOSES ``(IntDiv, IntDiv2)`` from one pass over the pairs (each pair computed once)."""
    from medgen.chem.parallel import map_chunks

    n = len(packed)
    if n == 0:
        return float("nan"), float("nan")
    spans = [(i, min(i + block, n)) for i in range(0, n, block)]
    sums = np.zeros((n, 2), dtype=np.float64)
    for part in map_chunks(_row_sums, spans, n_jobs=n_jobs, args=(packed, n_bits, block),
                           executor=executor):  # fmt: skip
        sums += part
    means = sums / n
    return float(1 - means[:, 0].mean()), float(1 - np.sqrt(means[:, 1]).mean())


def _row_sums(span: tuple[int, int], packed: np.ndarray, n_bits: int, block: int) -> np.ndarray:
    return tanimoto_row_sums(packed, span[0], span[1], n_bits=n_bits, block=block)


def internal_similarity(
    packed: np.ndarray,
    *,
    n_bits: int,
    n_jobs: int = 1,
    executor: ProcessPoolExecutor | None = None,
    block: int = ROW_BLOCK,
) -> np.ndarray:
    """GuacaMol's internal similarity: each molecule's max Tanimoto similarity to the others."""
    from medgen.chem.parallel import map_chunks

    n = len(packed)
    best = np.zeros(n, dtype=np.float64)
    spans = [(i, min(i + block, n)) for i in range(0, n, block)]
    for part in map_chunks(_max_rows, spans, n_jobs=n_jobs, args=(packed, n_bits, block),
                           executor=executor):  # fmt: skip
        np.maximum(best, part, out=best)
    return best


def _max_rows(span: tuple[int, int], packed: np.ndarray, n_bits: int, block: int) -> np.ndarray:
    return internal_max_rows(packed, span[0], span[1], n_bits=n_bits, block=block)


def fraction_passes_filters(flags: Sequence[bool]) -> float:
    """Share of molecules passing the MOSES filters (see :func:`medgen.chem.alerts`)."""
    return float(np.mean(flags)) if len(flags) else float("nan")


def continuous_kl(reference: np.ndarray, sampled: np.ndarray) -> float:
    """GuacaMol KL(P_ref || Q_sampled) of Gaussian KDEs on 1000 points spanning both samples."""
    from scipy.stats import entropy, gaussian_kde

    grid = np.linspace(
        min(reference.min(), sampled.min()), max(reference.max(), sampled.max()), 1000
    )
    p = _kde(gaussian_kde, reference, grid) + 1e-10
    q = _kde(gaussian_kde, sampled, grid) + 1e-10
    return float(entropy(p, q))


def _kde(gaussian_kde, values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    try:
        return gaussian_kde(values)(grid)
    except (np.linalg.LinAlgError, ValueError):  # all values equal: a spike at that value
        return (np.abs(grid - values[0]) <= (grid[1] - grid[0]) / 2).astype(np.float64)


def discrete_kl(reference: np.ndarray, sampled: np.ndarray) -> float:
    """GuacaMol KL of 10-bin density histograms (bins from the reference)."""
    from scipy.stats import entropy

    p, bins = np.histogram(reference, bins=10, density=True)
    q, _ = np.histogram(sampled, bins=bins, density=True)
    return float(entropy(p + 1e-10, q + 1e-10))


def kl_divergence_score(
    descriptors: np.ndarray,
    internal_similarity: np.ndarray,
    reference_descriptors: np.ndarray,
    reference_internal_similarity: np.ndarray,
) -> tuple[float, dict[str, float]]:
    """GuacaMol KL-divergence benchmark: ``mean_i exp(-KL_i)`` over 9 descriptors and the internal
    similarity, and the individual KL values. Arrays: descriptors ``(N, 9)``, similarity ``(N,)``.
    """
    kls: dict[str, float] = {}
    for i, name in enumerate(KL_DESCRIPTORS):
        kl = continuous_kl if i < KL_CONTINUOUS else discrete_kl
        kls[name] = kl(reference_descriptors[:, i], descriptors[:, i])
    kls["internal_similarity"] = continuous_kl(reference_internal_similarity, internal_similarity)
    return float(np.mean([np.exp(-v) for v in kls.values()])), kls
