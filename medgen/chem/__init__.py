"""Chemistry for medgen: per-molecule scoring, MOSES/GuacaMol metrics, streaming screening.

Submodules are imported on demand (RDKit catalogs and ChemNet weights are heavy):

- :mod:`medgen.chem.properties`: :func:`score`, descriptors, QED, SA, rules, structural alerts.
- :mod:`medgen.chem.metrics`: validity, uniqueness, novelty, IntDiv, FCD, SNN, Frag, Scaf, KL.
- :mod:`medgen.chem.io`: streaming readers (.smi/.csv/.sdf, gzipped or not) and writers.
- :mod:`medgen.chem.screen`: streaming, parallel scoring and filtering of large files.
"""

from __future__ import annotations

from typing import Any

__all__ = ["score"]


def __getattr__(name: str) -> Any:  # lazy: `from medgen.chem import score` imports RDKit only then
    if name == "score":
        from medgen.chem.properties import score

        return score
    raise AttributeError(f"module 'medgen.chem' has no attribute {name!r}")
