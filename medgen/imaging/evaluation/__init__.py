"""Judging synthetic scans: fidelity, diversity, memorization and usefulness (``medgen evaluate``).

- :mod:`~medgen.imaging.evaluation.loading`: a cohort folder, a datalist or a data config such as
  ``phantom`` as a :class:`~medgen.imaging.evaluation.loading.VolumeSet` ((N, 1, D, H, W) in the
  model's [-1, 1], HU through its intensity mapping, label maps where there are some).
- :mod:`~medgen.imaging.evaluation.features`: feature extractors (a MedicalNet-style 3D ResNet or
  2.5D slice features from weights the user supplies, or :mod:`~.encoder`, a contrastive encoder
  medgen trains on the reference set itself), batched, cached by volume sha256.
- :mod:`~medgen.imaging.evaluation.fidelity`: Fréchet distance and MMD on features (MONAI).
- :mod:`~medgen.imaging.evaluation.histograms`: HU histograms, Jensen-Shannon distance, tissue
  bands, per-tissue volume and HU.
- :mod:`~medgen.imaging.evaluation.diversity`: mean pairwise MS-SSIM (MONAI).
- :mod:`~medgen.imaging.evaluation.memorization`: nearest training volume, flagged copies.
- :mod:`~medgen.imaging.evaluation.tstr`: train on synthetic, test on real (MONAI UNet, Dice).
- :mod:`~medgen.imaging.evaluation.evaluate`: :func:`evaluate_volumes`, all of it at once;
  :mod:`~medgen.imaging.evaluation.report`: the table, ``evaluation.json``, ``evaluation.png``.
"""
