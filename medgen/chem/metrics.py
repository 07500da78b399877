"""Generative-model metrics for molecules, with the MOSES definitions.

Reference: Polykovskiy et al., "Molecular Sets (MOSES): A Benchmarking Platform for Molecular
Generation Models", Front. Pharmacol. 2020. GuacaMol: Brown et al., J. Chem. Inf. Model. 2019.

The simple metrics here (validity, uniqueness, novelty) are pure functions of SMILES lists.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from medgen.chem.mol import canonical_smiles, parse_smiles

__all__ = ["canonical_smiles", "fraction_unique", "fraction_valid", "novelty"]


def fraction_valid(smiles: Sequence[str | None]) -> float:
    """Fraction of entries RDKit parses and sanitizes (None and empty strings count as invalid).

    Returns 0.0 for an empty list.
    """
    if len(smiles) == 0:
        return 0.0
    return sum(parse_smiles(s) is not None for s in smiles) / len(smiles)


def fraction_unique(smiles: Sequence[str | None], k: int | None = None) -> float:
    """MOSES unique@k: distinct canonical SMILES among the first ``k`` *valid* entries.

    As in MOSES, invalid entries are dropped first, then the first ``k`` valid ones are compared
    (``k=None``: all). With fewer than ``k`` valid entries all are used. Returns 0.0 when nothing
    is valid.
    """
    canon = [c for c in (canonical_smiles(s) for s in smiles) if c is not None]
    if k is not None:
        canon = canon[:k]
    if not canon:
        return 0.0
    return len(set(canon)) / len(canon)


def novelty(smiles: Sequence[str | None], train: Iterable[str]) -> float:
    """MOSES novelty: fraction of unique valid generated molecules whose canonical SMILES is not in
    ``train``.

    ``train`` should hold canonical SMILES (MOSES train is stored canonical); entries are used as
    given, so pass canonicalized SMILES when the source is not. Returns 0.0 when nothing is valid.
    """
    gen = {c for c in (canonical_smiles(s) for s in smiles) if c is not None}
    if not gen:
        return 0.0
    train_set = train if isinstance(train, set | frozenset) else set(train)
    return len(gen - train_set) / len(gen)
