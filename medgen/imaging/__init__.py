"""The imaging half of medgen: 3D scans (phantoms, NIfTI, MedMNIST-3D) and a 3D diffusion model.

Modules: :mod:`~medgen.imaging.phantom` (procedural CT torso phantoms),
:mod:`~medgen.imaging.intensity` (mapping to [-1, 1] and back), :mod:`~medgen.imaging.sources` /
:mod:`~medgen.imaging.transforms` / :mod:`~medgen.imaging.data` (datasets and datamodules with
train / val / test splits), :mod:`~medgen.imaging.components` (network, scheduler and optimizer
config nodes), :mod:`~medgen.imaging.diffusion` (``DiffusionModule``, a
:class:`~medgen.generation.Generator`), :mod:`~medgen.imaging.samplers` (reverse processes on a
network and a scheduler), :mod:`~medgen.imaging.ema`, :mod:`~medgen.imaging.cohort` (the
cohort folder, ``VolumeCohort``), :mod:`~medgen.imaging.nifti` (one volume as one file),
:mod:`~medgen.imaging.api` (``generate_volumes``, ``export_volumes``),
:mod:`~medgen.imaging.callbacks` (``ScanPreview``) and :mod:`~medgen.imaging.viz` (PNG previews).
Nothing heavy is imported here.
"""
