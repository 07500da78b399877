"""Molecules: a graph VAE that proposes drug-like molecules, valid by construction.

- :mod:`medgen.molecules.graph`: RDKit molecule <-> graph tensors, atom vocabulary, valence table.
- :mod:`medgen.molecules.featurize`: SMILES sources -> graphs, featurization cache, rejects.
- :mod:`medgen.molecules.data`: ``GraphDataModule``: train / val split, atom vocabulary.
- :mod:`medgen.molecules.vae`: message-passing encoder, autoregressive decoder with valence masks.
- :mod:`medgen.molecules.module`: ``GraphVAEModule`` (Lightning): ELBO, KL annealing, checks.
- :mod:`medgen.molecules.api`: ``MoleculeVAE``: sample, encode, decode, interpolate, optimize.
- :mod:`medgen.molecules.sample`: ``medgen sample`` for graph VAE checkpoints.

Submodules import torch / RDKit; import them directly (nothing is imported here).
"""
