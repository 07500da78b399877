"""All MOSES metrics (and GuacaMol's KL and FCD scores) for a list of generated SMILES.

Metric names follow the MOSES tables: ``valid``, ``unique@1000``, ``unique@10000``, ``FCD/Test``,
``SNN/Test``, ``Frag/Test``, ``Scaf/Test`` (and ``/TestSF``), ``IntDiv``, ``IntDiv2``, ``Filters``,
``logP``, ``SA``, ``QED``, ``weight`` (Wasserstein-1 distances to the first reference),
``Novelty`` and ``dualuse_alerts`` (valid molecules matching a dual-use alert of
:mod:`medgen.chem.dualuse`, a count); GuacaMol's as ``guacamol/FCD_score`` = exp(-0.2 FCD)
and ``guacamol/KL_score``.
As in MOSES, everything after ``valid`` is computed on the valid molecules, duplicates included.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from medgen.chem.reference import PROPERTY_NAMES, ReferenceStats

if TYPE_CHECKING:
    from concurrent.futures import ProcessPoolExecutor

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
    dualuse: bool = True,
    executor: ProcessPoolExecutor | None = None,
) -> dict[str, float]:
    """Metrics of generated ``smiles`` against ``references`` (e.g. ``{"Test": ..., "TestSF":
    ...}``), ``train`` SMILES (for novelty) and a GuacaMol ``kl_reference`` (descriptors ``(M,
    9)``, internal similarity ``(M,)``). Missing inputs skip the metrics that need them.
    ``dualuse``: count the valid molecules with a dual-use alert (``dualuse_alerts``).
    ``n_jobs > 1``: features, ChemNet and similarity blocks run in that many worker processes
    (``executor``: a running :func:`medgen.chem.parallel.worker_pool` to use instead)."""
    from medgen.chem.fcd import frechet_distance
    from medgen.chem.metrics import (
        fraction_passes_filters,
        fraction_unique,
        internal_diversities,
        nearest_similarities,
        novelty,
    )
    from medgen.chem.reference import evaluation_features, reference_index
    from medgen.chem.similarity import cosine_similarity_counts

    smiles = list(smiles)
    if executor is None and n_jobs > 1 and len(smiles) > 2000:  # one pool for every stage
        from medgen.chem.parallel import worker_pool

        with worker_pool(n_jobs) as pool:
            return evaluate_smiles(
                smiles, references=references, train=train, kl_reference=kl_reference, k=k,
                n_jobs=n_jobs, batch_size=batch_size, device=device, kl_size=kl_size,
                dualuse=dualuse, executor=pool,
            )  # fmt: skip
    workers: dict[str, Any] = {"n_jobs": n_jobs, "executor": executor}
    references = dict(references or {})
    # each SMILES parsed once: canonical forms and every per-molecule feature (ChemNet included)
    options: dict[str, Any] = {"fcd": bool(references), "dualuse": dualuse, "device": device}
    feats = evaluation_features(smiles, batch_size=batch_size, **options, **workers)
    canon = [c for c in feats["canonical"] if c is not None]
    metrics: dict[str, float] = {"valid": len(canon) / len(smiles) if smiles else 0.0}
    log.info("%d of %d generated SMILES are valid", len(canon), len(smiles))
    for kk in k:  # unique@k of fewer than k molecules is not unique@k: NaN (null in JSON)
        enough = len(canon) >= kk
        metrics[f"unique@{kk}"] = fraction_unique(canon, kk, canonical=True) if enough else np.nan
    if dualuse:
        from medgen.chem.dualuse import counts_from_column

        flagged = counts_from_column(feats["dualuse"])  # computed with the features
        metrics["dualuse_alerts"] = float(flagged.flagged)
        if flagged.flagged:
            log.warning("%d of %d valid molecules match a dual-use alert: %s", flagged.flagged,
                        len(canon), ", ".join(sorted(flagged.by_class)))  # fmt: skip
    if len(canon) < 2:
        log.warning("fewer than 2 valid molecules: distribution metrics skipped")
        return metrics

    fragments = Counter(f for frags in feats["fragments"] for f in frags)
    scaffolds = Counter(s for s in feats["scaffolds"] if s is not None)
    if references:
        mu, sigma = feats["fcd_mu"], feats["fcd_sigma"]
    for name, ref in references.items():
        metrics[f"FCD/{name}"] = frechet_distance(ref.fcd_mu, ref.fcd_sigma, mu, sigma)
        nearest = nearest_similarities(feats["fps"], reference_index(ref), **workers)
        metrics[f"SNN/{name}"] = float(nearest.mean())
        metrics[f"Frag/{name}"] = cosine_similarity_counts(ref.fragments, fragments)
        metrics[f"Scaf/{name}"] = cosine_similarity_counts(ref.scaffolds, scaffolds)
    metrics["IntDiv"], metrics["IntDiv2"] = internal_diversities(feats["fps"], **workers)
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
        metrics.update(_guacamol_kl(feats["flat"], kl_reference, size=kl_size, workers=workers))
    return metrics


def _guacamol_kl(
    flat: list[str], kl_reference: tuple[np.ndarray, np.ndarray], *, size: int, workers: dict
) -> dict[str, float]:
    from medgen.chem.metrics import internal_similarity, kl_divergence_score
    from medgen.chem.reference import kl_features_pooled

    # GuacaMol scores the unique molecules without stereo (its canonicalize_list)
    unique = list(dict.fromkeys(flat))[:size]
    kl = kl_features_pooled(unique, **workers)
    similarity = internal_similarity(kl["kl_fps"], n_bits=4096, **workers)
    score, parts = kl_divergence_score(kl["kl_descriptors"], similarity, *kl_reference)
    out = {"guacamol/KL_score": score}
    out |= {f"guacamol/KL/{name}": value for name, value in parts.items()}
    return out


# metric (or its prefix before "/<reference>") -> (which way is better, what it is)
METRICS: dict[str, tuple[str, str]] = {
    "valid": ("↑ higher", "fraction of SMILES RDKit parses"),
    "unique": ("↑ higher", "fraction of distinct canonical SMILES among the first k valid ones"),
    "FCD": ("↓ lower", "Fréchet ChemNet distance to {ref}"),
    "SNN": ("↑ higher", "mean Tanimoto similarity to the nearest {ref} molecule"),
    "Frag": ("↑ higher", "cosine similarity of BRICS fragment counts to {ref}"),
    "Scaf": ("↑ higher", "cosine similarity of Bemis-Murcko scaffold counts to {ref}"),
    "IntDiv": ("↑ higher", "internal diversity: 1 - mean pairwise Tanimoto (p=1)"),
    "IntDiv2": ("↑ higher", "internal diversity: 1 - root mean square pairwise Tanimoto (p=2)"),
    "Filters": ("↑ higher", "fraction passing the MOSES filters (MCF, PAINS, charges, atoms)"),
    "Novelty": ("↑ higher", "fraction of unique valid molecules not in the training set"),
    "dualuse_alerts": ("↓ lower", "valid molecules matching a dual-use alert (a count)"),
    "guacamol/FCD_score": ("↑ higher", "GuacaMol FCD score exp(-0.2 FCD), 0..1"),
    "guacamol/KL_score": ("↑ higher", "mean exp(-KL) over GuacaMol's 9 descriptors and similarity"),
    "guacamol/KL": ("↓ lower", "KL(reference || samples) of this descriptor's distribution"),
}
for _prop in PROPERTY_NAMES:  # MOSES's property rows are distances between distributions
    METRICS[_prop] = ("↓ lower", f"Wasserstein-1 distance of the {_prop} distributions to {{ref}}")


def describe_metric(
    name: str, value: float | None = None, reference: str | None = None
) -> tuple[str, str, str]:
    """``(value as text, which way is better, what it is)`` for one row of the metrics table.
    ``reference``: the first reference's name (the property rows are measured against it). A NaN
    ``unique@k`` reads ``n/a (fewer than k valid samples)``; other NaNs ``n/a``."""
    head, _, ref = name.partition("/")
    key = name if name in METRICS else head if head in METRICS else name.rpartition("/")[0]
    if head.startswith("unique@"):
        key = "unique"
    better, what = METRICS.get(key, ("", ""))
    what = what.replace("{ref}", ref or reference or "the first reference")
    if value is None or value != value:  # NaN: not computed
        k = head.removeprefix("unique@")
        text = f"n/a (fewer than {k} valid samples)" if key == "unique" else "n/a"
    else:
        text = f"{value:.0f}" if key == "dualuse_alerts" else f"{value:.4f}"
    return text, better, what
