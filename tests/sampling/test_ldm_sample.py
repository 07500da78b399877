"""A latent diffusion run end to end: stage 1, stage 2 from its checkpoint, `medgen sample` (which
neither knows nor needs the stage-1 file), export, resume of sampling and of training."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from medgen.tasks.train import train
from tests.conformance.test_generators import SHRINK, TINY_UNET
from tests.conftest import compose_at, run_medgen

STAGE1 = [
    "model=autoencoder3d",
    "data=phantom",
    "data.size=16",
    "data.num_train=4",
    "data.num_val=2",
    "data.batch_size=2",
    "model.network.channels=[8,8]",
    "model.network.attention_levels=[false,false]",
    "model.network.latent_channels=2",
]
STAGE2 = ["model=ldm3d", "data=phantom", *TINY_UNET, "callbacks.scan_preview.steps=2"]


def _fit(root, overrides):
    cfg = compose_at(root, "train", [*SHRINK, *overrides], job=True)
    torch.manual_seed(0)
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    return metrics


@pytest.mark.slow
def test_ldm_trains_samples_exports_and_resumes(tmp_path):
    stage1 = tmp_path / "stage1"
    _fit(stage1, STAGE1)
    ldm = tmp_path / "ldm"
    _fit(ldm, [*STAGE2, f"model.autoencoder={stage1 / 'run'}"])
    ckpt = ldm / "run" / "checkpoints" / "last.ckpt"
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["kind"] == "ldm3d" and hp["autoencoder"]["file"] == "run/checkpoints/last.ckpt"
    assert str(tmp_path) not in json.dumps(hp["autoencoder"])

    shutil.rmtree(stage1)  # the LDM checkpoint carries the autoencoder
    out = tmp_path / "cohort"
    args = ["sample", f"ckpt={ckpt}", f"out={out}", "n=3", "steps=3", "batch_size=2"]
    first = run_medgen(args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    images = sorted((out / "images").glob("*.nii.gz"))
    assert len(images) == 3 and (out / "dataset.json").is_file()
    import nibabel as nib

    vol = nib.load(str(images[0]))
    assert vol.shape == (16, 16, 16)  # the image data's geometry, not the latent's
    victim = images[-1]
    before = nib.load(str(victim)).get_fdata()
    victim.unlink()  # a simulated kill
    again = run_medgen(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert sorted((out / "images").glob("*.nii.gz")) == images
    assert abs(nib.load(str(victim)).get_fdata() - before).max() <= 1.0  # HU, int16 rounding

    # training resumes from the checkpoint: the stage-1 weights and latent scale come with it
    scale = float(torch.load(ckpt, weights_only=True)["state_dict"]["latent_scale"])
    stage1_again = tmp_path / "stage1b"
    _fit(stage1_again, STAGE1)
    resumed = _fit(
        ldm,
        [
            *STAGE2,
            f"model.autoencoder={stage1_again / 'run'}",
            f"ckpt_path={ckpt}",
            "trainer.max_epochs=2",
        ],
    )
    assert resumed["global_step"] == 4
    after = torch.load(ldm / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert float(after["state_dict"]["latent_scale"]) == pytest.approx(scale)
