"""All MOSES metrics (and GuacaMol's KL and FCD scores) for a list of generated SMILES.

Metric names follow the MOSES tables: ``valid``, ``unique@1000``, ``unique@10000``, ``FCD/Test``,
``SNN/Test``, ``Frag/Test``, ``Scaf/Test`` (and ``/TestSF``), ``IntDiv``, ``IntDiv2``, ``Filters``,
``logP``, ``SA``, ``QED``, ``weight`` (Wasserstein-1 distances to the first reference) and
``Novelty``; GuacaMol's as ``guacamol/FCD_score`` = exp(-0.2 FCD) and ``guacamol/KL_score``.
As in MOSES, everything after ``valid`` is computed on the valid molecules, duplicates included.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from medgen.chem.mol import canonical_smiles
from medgen.chem.reference import PROPERTY_NAMES, ReferenceStats, features

log = logging.getLogger(__name__)


def evaluate_smiles(
    smiles: Sequence[str | None],
    *,
    references: Mapping[str, ReferenceStats] | None = None,
    train: Iterable[str] | None = None,
    kl_reference: tuple[np.ndarray, np.ndarray] | None = None,
    k: Sequence[int] = (1000, 10_000),
    n_jobs: int = 1,
    batch_size: int = 512,
    device: str = "cpu",
    kl_size: int = 10_000,
) -> dict[str, float]:
    """Metrics of generated ``smiles`` against ``references`` (e.g. ``{"Test": ..., "TestSF":
    ...}``), ``train`` SMILES (for novelty) and a GuacaMol ``kl_reference`` (descriptors ``(M,
    9)``, internal similarity ``(M,)``). Missing inputs skip the metrics that need them."""
    from medgen.chem.fcd import fcd_statistics, frechet_distance
    from medgen.chem.metrics import (
        fraction_passes_filters,
        fraction_unique,
        fraction_valid,
        internal_diversity,
        novelty,
        snn,
        valid_canonical,
    )
    from medgen.chem.similarity import cosine_similarity_counts

    references = dict(references or {})
    smiles = list(smiles)
    canon = valid_canonical(smiles)  # canonicalized once; the metrics below take it as it is
    metrics: dict[str, float] = {"valid": fraction_valid(smiles)}
    log.info("%d of %d generated SMILES are valid", len(canon), len(smiles))
    for kk in k:
        if len(canon) < kk:
            log.warning("unique@%d computed on only %d valid molecules", kk, len(canon))
        metrics[f"unique@{kk}"] = fraction_unique(canon, kk, canonical=True)
    if len(canon) < 2:
        log.warning("fewer than 2 valid molecules: distribution metrics skipped")
        return metrics

    feats = features(canon, n_jobs=n_jobs)
    fragments = Counter(f for frags in feats["fragments"] for f in frags)
    scaffolds = Counter(s for s in feats["scaffolds"] if s is not None)
    if references:
        mu, sigma = fcd_statistics(canon, batch_size=batch_size, device=device)
    for name, ref in references.items():
        metrics[f"FCD/{name}"] = frechet_distance(ref.fcd_mu, ref.fcd_sigma, mu, sigma)
        metrics[f"SNN/{name}"] = snn(feats["fps"], ref.fps)
        metrics[f"Frag/{name}"] = cosine_similarity_counts(ref.fragments, fragments)
        metrics[f"Scaf/{name}"] = cosine_similarity_counts(ref.scaffolds, scaffolds)
    metrics["IntDiv"] = internal_diversity(feats["fps"], p=1)
    metrics["IntDiv2"] = internal_diversity(feats["fps"], p=2)
    metrics["Filters"] = fraction_passes_filters(feats["filters"])
    if references:
        from scipy.stats import wasserstein_distance

        first = next(iter(references.values()))
        for prop in PROPERTY_NAMES:
            if prop in first.properties:
                metrics[prop] = float(wasserstein_distance(first.properties[prop], feats[prop]))
    if train is not None:
        metrics["Novelty"] = novelty(canon, train, canonical=True)
    if references:
        first_name = next(iter(references))
        metrics["guacamol/FCD_score"] = float(np.exp(-0.2 * metrics[f"FCD/{first_name}"]))
    if kl_reference is not None:
        metrics.update(_guacamol_kl(canon, kl_reference, n_jobs=n_jobs, size=kl_size))
    return metrics


def _guacamol_kl(
    canon: list[str], kl_reference: tuple[np.ndarray, np.ndarray], *, n_jobs: int, size: int
) -> dict[str, float]:
    from medgen.chem.metrics import kl_divergence_score
    from medgen.chem.similarity import internal_max_similarity

    # GuacaMol scores the unique molecules without stereo (its canonicalize_list)
    flat = (canonical_smiles(s, isomeric=False) for s in canon)  # never None: canon is valid
    unique = list(dict.fromkeys(s for s in flat if s is not None))[:size]
    kl = features(unique, n_jobs=n_jobs, with_kl=True)
    score, parts = kl_divergence_score(
        kl["kl_descriptors"], internal_max_similarity(kl["kl_fps"]), *kl_reference
    )
    out = {"guacamol/KL_score": score}
    out |= {f"guacamol/KL/{name}": value for name, value in parts.items()}
    return out
