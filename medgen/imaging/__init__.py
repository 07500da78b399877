"""The imaging half of medgen: 3D scans (phantoms, NIfTI, MedMNIST-3D) and a 3D diffusion model.

Modules: :mod:`~medgen.imaging.phantom` (procedural CT torso phantoms),
:mod:`~medgen.imaging.intensity` (mapping to [-1, 1] and back), :mod:`~medgen.imaging.sources` /
:mod:`~medgen.imaging.transforms` /
:mod:`~medgen.imaging.data` (datasets and datamodules), :mod:`~medgen.imaging.diffusion`
(``DiffusionModule``), :mod:`~medgen.imaging.ema`, :mod:`~medgen.imaging.viz` (PNG previews).
Nothing heavy is imported here.
"""
