"""Task functions: ``X(cfg) -> result`` for each ``medgen X`` command (train, sample, ...).

Each is a pure function of a composed Hydra config; the ``@hydra.main`` wrapper lives in
:mod:`medgen.cli`, so tests and scripts call these directly with a config of their own.
"""
