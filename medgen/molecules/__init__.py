"""Molecules: a graph VAE that proposes drug-like molecules, valid by construction.

- :mod:`medgen.molecules.graph`: RDKit molecule <-> graph tensors, atom vocabulary, valence table.
- :mod:`medgen.molecules.featurize`: SMILES sources -> graphs, featurization cache, read rejects.
- :mod:`medgen.molecules.data`: ``GraphDataModule``: train / val / test splits, atom vocabulary,
  the rejects file.
- :mod:`medgen.molecules.vae`: message-passing encoder, autoregressive decoder with valence masks.
- :mod:`medgen.molecules.sampling`: per-molecule noise, prior samples, reconstruction accuracy.
- :mod:`medgen.molecules.module`: ``GraphVAEModule`` (Lightning, and a ``medgen.generation``
  generator): ELBO, KL annealing, network and optimizer config nodes, ``from_checkpoint``.
- :mod:`medgen.molecules.cohort`: ``MoleculeCohort``: the ``.csv``/``.sdf`` output of
  ``medgen sample``, resumable, with its sidecar and preview grid.
- :mod:`medgen.molecules.callbacks`: ``MoleculeSampling``: validation-time sampling metrics.
- :mod:`medgen.molecules.api`: ``MoleculeVAE``: sample, encode, decode, interpolate, optimize.

Submodules import torch / RDKit; import them directly (nothing is imported here).
"""
