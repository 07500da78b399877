"""Chemistry for medgen: per-molecule scoring, MOSES/GuacaMol metrics, streaming screening.

Submodules are imported on demand (RDKit catalogs and ChemNet weights are heavy):

- :mod:`medgen.chem.properties`: :func:`score`, descriptors, QED, SA, rules, structural alerts.
- :mod:`medgen.chem.metrics`: validity, uniqueness, novelty, IntDiv, SNN, KL (pure functions).
- :mod:`medgen.chem.evaluation`: :func:`evaluate_smiles`, every MOSES/GuacaMol metric at once.
- :mod:`medgen.chem.io`: streaming readers (.smi/.csv/.sdf, gzipped or not) and writers.
- :mod:`medgen.chem.screen`: :func:`screen_file`, streaming parallel scoring and filtering.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "score": "medgen.chem.properties",
    "evaluate_smiles": "medgen.chem.evaluation",
    "screen_file": "medgen.chem.screen",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:  # lazy: `from medgen.chem import score` imports RDKit only then
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medgen.chem' has no attribute {name!r}")
