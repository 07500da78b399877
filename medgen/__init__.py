"""medgen: generative models for synthetic 3D medical scans and drug-like molecules.

The functions scripts use, importable from the top level (loaded on first use, so ``import
medgen`` stays cheap)::

    from medgen import generate, sample_to, load_generator, SampleSettings
    x = generate("outputs/train/<run>", 4, SampleSettings(seed=0, sampler="ddim", steps=50)).items
    # (4, C, D, H, W) in [-1, 1] for a scan model; a list of SMILES for a molecule model

    from medgen import score, screen, evaluate_smiles
    table = score(["CCO", "c1ccccc1"])            # one row of properties per SMILES
    summary = screen("library.smi", "hits.csv", rules=["lipinski", "pains"])
    metrics = evaluate_smiles(generated_smiles)   # MOSES / GuacaMol metrics

Names are one way everywhere: ``ckpt`` for a checkpoint file or run dir, ``condition`` for a class
condition, ``out`` for where outputs go.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    # generators and sampling
    "generate": "medgen.generation",
    "sample_to": "medgen.generation",
    "load_generator": "medgen.generation",
    "Generator": "medgen.generation",
    "Generated": "medgen.generation",
    "SampleSettings": "medgen.records",
    "DataMeta": "medgen.records",
    # scans
    "make_phantom": "medgen.imaging.phantom",
    "export_volumes": "medgen.imaging.api",
    # molecules and chemistry
    "MoleculeVAE": "medgen.molecules.api",
    "score": "medgen.chem.properties",
    "screen": "medgen.chem.screen",
    "evaluate_smiles": "medgen.chem.evaluation",
    # errors
    "UserError": "medgen.errors",
}
_RENAMED = {"screen": "screen_file"}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'medgen' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    return getattr(module, _RENAMED.get(name, name))


def __dir__() -> list[str]:
    return sorted(__all__)
