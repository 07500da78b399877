"""Substructure queries screened by RDKit pattern fingerprints, all queries of a set at once.

RDKit's pattern fingerprint of a query sets only bits that every molecule matching the query
sets too, so a query with a bit the molecule lacks cannot match (no false negatives) and its
substructure search can be skipped. Testing hundreds of queries one ``AllProbeBitsMatch`` call at
a time costs more in Python than the searches it saves (~0.6 ms a molecule for the 502 MOSES
filter patterns); :class:`PatternScreen` keeps every query fingerprint as one ``uint64`` matrix
and tests them all in one numpy expression, then searches only the candidates. The answers are
those of searching every query.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem, DataStructs


def pattern_words(mol: Chem.Mol) -> np.ndarray:
    """RDKit's pattern fingerprint of ``mol`` (a molecule or a query) as ``uint64`` words."""
    fp = Chem.PatternFingerprint(mol)
    return np.frombuffer(DataStructs.BitVectToBinaryText(fp), dtype=np.uint64)


class PatternScreen:
    """A fixed set of query molecules (SMARTS) with their pattern fingerprints stacked."""

    def __init__(self, queries: Sequence[Chem.Mol]):
        self.queries = tuple(queries)
        words = [pattern_words(q) for q in self.queries]
        self._words = np.stack(words) if words else np.zeros((0, 32), dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.queries)

    def candidates(self, words: np.ndarray) -> np.ndarray:
        """Indices of the queries whose fingerprint bits are all set in ``words`` (a molecule's
        :func:`pattern_words`): the only ones that can match it."""
        return np.flatnonzero(~(self._words & ~words).any(axis=1))

    def matching(self, mol: Chem.Mol, words: np.ndarray | None = None) -> list[int]:
        """Indices of the queries ``mol`` matches, ascending (``words``: its pattern words)."""
        words = pattern_words(mol) if words is None else words
        return [int(i) for i in self.candidates(words) if mol.HasSubstructMatch(self.queries[i])]

    def any_match(self, mol: Chem.Mol, words: np.ndarray | None = None) -> bool:
        """Whether ``mol`` matches any query (stops at the first match)."""
        words = pattern_words(mol) if words is None else words
        return any(mol.HasSubstructMatch(self.queries[i]) for i in self.candidates(words))
