"""Every experiment recipe composes AND fits a few steps at a shrunk size (the recipe's own data
module, model and callbacks; only sizes, steps and the device are shrunk)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from medgen.tasks.train import train
from tests.conformance.test_generators import SHRINK, TINY_UNET, TINY_VAE
from tests.conftest import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
ON_CPU = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "++trainer.strategy=auto",
    "trainer.precision=32-true",
]
TINY_NETWORK = [o for o in TINY_UNET if o.startswith("model.")] + ["callbacks.scan_preview.steps=2"]
TINY_AUTOENCODER = [
    "model.network.channels=[8,8]",
    "model.network.attention_levels=[false,false]",
    "model.network.norm_num_groups=8",
    "model.patch_size=[8,8,8]",
    "model.tile_size=[8,8,8]",
]
TINY_DATA = {
    "medgen.imaging.data.PhantomDataModule": [o for o in TINY_UNET if o.startswith("data.")]
    + ["data.num_test=2", "data.num_workers=0", "data.pin_memory=false"],
    "medgen.imaging.data.NiftiDataModule": [
        "data.spatial_size=[16,16,16]",
        "data.spacing=[26.0,26.0,26.0]",
        "data.cache=none",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.pin_memory=false",
    ],
    "medgen.molecules.data.GraphDataModule": [*TINY_VAE, "data.featurize_workers=1"],
}


def _tiny_inputs(data_dir: Path) -> None:
    """What the recipes read from the data folder, tiny: a NIfTI datalist and a MOSES-like file."""
    import nibabel as nib
    import numpy as np

    from medgen.imaging.phantom import make_phantom
    from medgen.molecules.featurize import EMBEDDED_SAMPLE

    nifti = data_dir / "nifti"
    (nifti / "images").mkdir(parents=True)
    items = []
    for i in range(6):
        ph = make_phantom(i, 16)
        path = nifti / "images" / f"ct_{i}.nii.gz"
        nib.save(nib.Nifti1Image(np.asarray(ph.image, dtype=np.int16), ph.affine), path)
        items.append({"image": f"images/ct_{i}.nii.gz"})
    datalist = {"training": items[:4], "validation": items[4:5], "test": items[5:]}
    (nifti / "dataset.json").write_text(json.dumps(datalist))
    moses = data_dir / "moses"
    moses.mkdir(parents=True)
    lines = [line.split()[0] for line in EMBEDDED_SAMPLE.read_text().splitlines() if line.strip()]
    with gzip.open(moses / "train.csv.gz", "wt") as fh:
        fh.write("SMILES\n" + "\n".join(lines[:300]) + "\n")
    # laid out as `medgen data qm9_stereo` writes it: index, isomeric smiles, QM9's own smiles
    from tests.molecules.test_stereo import HAND

    stereo = data_dir / "qm9_stereo"
    stereo.mkdir(parents=True)
    with gzip.open(stereo / "qm9_stereo.csv.gz", "wt") as fh:
        rows = [f"{i},{s},{s}" for i, s in enumerate(HAND * 4)]
        fh.write("index,smiles,smiles_qm9\n" + "\n".join(rows) + "\n")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_fits_a_few_steps(compose_cfg, experiment, tmp_path):
    _tiny_inputs(tmp_path / "data")
    probe = compose_cfg("train", [f"experiment={experiment}"])
    target = str(probe.data._target_)
    overrides = [f"experiment={experiment}", *SHRINK, *ON_CPU, *TINY_DATA[target]]
    if "imaging" in str(probe.model._target_):
        overrides += TINY_NETWORK
    if str(probe.model._target_).endswith("AutoencoderModule"):  # stage 1 of latent diffusion
        overrides = [o for o in overrides if o not in TINY_NETWORK] + TINY_AUTOENCODER
    if "autoencoder" in probe.model.keys():  # stage 2: a tiny stage-1 checkpoint, no tiles
        from tests.imaging.test_autoencoder import tiny_autoencoder_checkpoint

        ae = tiny_autoencoder_checkpoint(tmp_path / "stage1.ckpt")
        overrides += [f"model.autoencoder={ae}", "model.tile_size=null"]
    cfg = compose_cfg("train", overrides, job=True)
    metrics = train(cfg)
    assert metrics["global_step"] == 2, metrics
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
