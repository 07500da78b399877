"""Chemistry for medgen: per-molecule scoring, MOSES/GuacaMol metrics, streaming screening.

Submodules import RDKit (and ChemNet weights) when used; import them directly (the most used
functions are also on the top level: ``from medgen import score, screen, evaluate_smiles``):

- :mod:`medgen.chem.properties`: :func:`score`, descriptors, QED, SA, rules, structural alerts.
- :mod:`medgen.chem.metrics`: validity, uniqueness, novelty, IntDiv, SNN, KL (pure functions).
- :mod:`medgen.chem.evaluation`: :func:`evaluate_smiles`, every MOSES/GuacaMol metric at once.
- :mod:`medgen.chem.io`: streaming readers (.smi/.cxsmiles/.csv/.sdf/.parquet, plain or
  .gz/.bz2/.zst) and writers.
- :mod:`medgen.chem.screen`: :func:`screen_file`, partitioned, resumable scoring and filtering on
  local processes or Dask (:mod:`~medgen.chem.engines`), merged by DuckDB
  (:mod:`~medgen.chem.merge`).
"""
