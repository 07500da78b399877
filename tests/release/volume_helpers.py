"""Helpers of the volume release tests: a CT cohort of known volumes, a training folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from medgen.generation import Generated
from medgen.imaging.cohort import VolumeCohort
from medgen.marking import ReleaseOptions, with_release
from medgen.records import Sampler, SampleSettings
from tests.sampling.helpers import AFFINE, CKPT_SHA, data_meta

SIZE = 8


def smooth_volumes(count: int, seed: int) -> torch.Tensor:
    """(count, 1, 8, 8, 8) in [-1, 1]: a shared pattern plus half as much noise each, so that
    the volumes are close to each other (as training scans are) but none is a copy."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn((1, SIZE, SIZE, SIZE), generator=g)
    noise = torch.randn((count, 1, SIZE, SIZE, SIZE), generator=g)
    return (0.3 * (common + 0.5 * noise)).clamp(-1, 1)


def write_training_folder(folder: Path, volumes: torch.Tensor) -> Path:
    """The volumes as int16 HU NIfTI files (window -1000..1000 HU: HU = 1000 x)."""
    folder.mkdir(parents=True, exist_ok=True)
    for k, v in enumerate(volumes):
        hu = np.rint(v[0].numpy() * 1000.0).astype(np.int16)
        nib.save(nib.Nifti1Image(hu, AFFINE), folder / f"train_{k:02d}.nii.gz")
    return folder


def cohort(out: Path, *, source: str = "test", **options) -> VolumeCohort:
    """A CT cohort of 8^3 volumes from checkpoint ``CKPT_SHA`` with release ``options``."""
    meta = data_meta(SIZE)
    meta = dataclasses.replace(meta, source=source)
    options.setdefault("generator", "tests.release.FakeGenerator")
    s = SampleSettings(seed=3, sampler=Sampler.DDIM, steps=4)
    s = with_release(s, ReleaseOptions(**options))
    return VolumeCohort(out, meta, s, checkpoint_sha256=CKPT_SHA)


def write(c: VolumeCohort, volumes: torch.Tensor) -> None:
    """Prepare ``c`` and write ``volumes`` (N, 1, D, H, W) as samples 0..N-1."""
    c.check(len(volumes))
    c.prepare()
    c.write(Generated(list(range(len(volumes))), volumes))
