"""An exported cohort reads straight back through ``data=nifti`` (its dataset.json) unchanged."""

from __future__ import annotations

from pathlib import Path

import torch

from medgen.generation import sample_to
from medgen.imaging.api import generate_volumes
from medgen.imaging.data import NiftiDataModule

from .helpers import StandIn, settings


def test_export_reads_back_through_the_nifti_datamodule(tmp_path):
    module, out, n = StandIn(), tmp_path / "synth", 4
    s = settings(seed=2, steps=3)
    sample_to(module, s, out=out, checkpoint=tmp_path, n=n, batch_size=4, preview=False)
    expected = generate_volumes(module, n, s, batch_size=n)

    dm = NiftiDataModule(
        path=str(out / "dataset.json"), spatial_size=8, spacing=[1.5, 1.0, 2.0], val_fraction=0.25
    )
    dm.setup()
    items = [ds[i] for ds in (dm.train_set, dm.val_set, dm.test_set) for i in range(len(ds))]
    assert len(items) == n
    for item in items:
        index = int(Path(item["source"]).name[len("sample_") : -len(".nii.gz")])
        image = torch.as_tensor(item["image"])
        assert image.shape == (1, 8, 8, 8)
        # int16 HU over a 2000 HU window: 1 HU = 0.001 in model units; rounding to int16 (0.5 HU)
        # plus the synthetic stamp (at most 1 HU in the first 64 voxels) stay under 2 HU
        torch.testing.assert_close(image, expected[index], atol=2.1e-3, rtol=0)
