"""A latent diffusion model that makes each CT with its label map (``data.labels=true``): the
channel plumbing through stage 1 and stage 2, the check that names the channel keys before a run
folder exists, and (slow) the whole run: stage 1, stage 2, ``medgen sample`` in both layouts."""

from __future__ import annotations

import json
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.errors import ConfigError
from medgen.imaging.autoencoder import AutoencoderModule, label_dice, reconstruction_metrics
from medgen.imaging.data import PhantomDataModule
from medgen.imaging.labels import LabelCodec, codec_of, split_joint
from medgen.imaging.phantom import LABEL_NAMES

# onehot: 1 CT + 15 label channels; bits: 1 + 4 (neither a multiple of the 8 GroupNorm groups:
# the autoencoder normalises its feature channels, never its input or output channels)
CHANNELS = {"onehot": 16, "bits": 5}


def _phantoms(encoding: str = "onehot", labels: bool = True) -> PhantomDataModule:
    return PhantomDataModule(
        size=16, num_train=2, num_val=1, num_test=0, noise_hu=0.0, labels=labels,
        label_encoding=encoding,
    )  # fmt: skip


def _autoencoder(channels: int, **kw) -> AutoencoderModule:
    torch.manual_seed(0)
    net = {"channels": [8, 8], "attention_levels": [False, False], "latent_channels": 2}
    return AutoencoderModule(
        network={**net, "in_channels": channels, "out_channels": channels}, **kw
    )


@pytest.mark.parametrize("encoding", ["onehot", "bits"])
def test_a_joint_autoencoder_takes_and_returns_every_channel(encoding):
    dm = _phantoms(encoding)
    meta = dm.planned_meta()  # from the settings alone, before any phantom is generated
    assert dm.train_set is None and meta.channels == CHANNELS[encoding]
    dm.setup()
    assert dm.data_meta == meta
    module = _autoencoder(meta.channels, data_meta=meta)
    module.check_data(meta)
    x = torch.stack([dm.train_set[i]["image"] for i in range(2)])  # (2, C, 16, 16, 16)
    with torch.no_grad():
        mu, _ = module.encode(x)
        recon = module.reconstruct(x)
    assert mu.shape == (2, 2, 8, 8, 8) and recon.shape == x.shape
    # a perfect reconstruction: no HU error, every label recovered
    label = torch.stack([dm.train_set[i]["label"] for i in range(2)])
    m = reconstruction_metrics(x, x, labels=label, intensity=meta.intensity, codec=codec_of(meta))
    assert float(m["label_dice"]) == 1.0 and float(m["hu_mae"]) == 0.0 and float(m["l1"]) == 0
    assert "hu_mae/liver" in m
    with pytest.raises(ConfigError) as err:  # the same network on one-channel data
        module.check_data(_phantoms(encoding, labels=False).planned_meta())
    assert str(err.value).startswith(f"model.network.in_channels={CHANNELS[encoding]} ")


def test_hu_errors_are_the_image_channels_and_label_dice_a_known_answer():
    codec = LabelCodec(("background", "a", "b"))
    labels = torch.zeros(1, 1, 4, 4, 4, dtype=torch.long)  # (B, 1, D, H, W)
    labels[0, 0, :2] = 1  # 32 voxels of a
    labels[0, 0, 2:, :2] = 2  # 16 voxels of b, the other 16 background
    x = torch.cat([torch.zeros(1, 1, 4, 4, 4), codec.encode(labels[0])[None]], dim=1)
    recon = x.clone()
    recon[:, 0] += 0.1  # 0.1 units of a [-1000, 1000] HU window: 100 HU
    recon[0, 1:, 0] = codec.codes()[0][:, None, None]  # 16 of a's voxels read as background
    window = {"kind": "ct_window", "lo": -1000.0, "hi": 1000.0}
    m = reconstruction_metrics(x, recon, labels=labels, intensity=window, codec=codec)
    assert float(m["hu_mae"]) == pytest.approx(100.0, rel=1e-5)  # the label errors do not count
    # Dice a: 2 * 16 / (16 + 32) = 2/3; b: 1; their mean 5/6
    assert float(m["label_dice"]) == pytest.approx(5 / 6)
    # labels absent from the truth are left out; a map of background only has no Dice
    only_b = label_dice(x[:, 1:], torch.where(labels == 1, 0, labels), codec)
    assert only_b is not None and float(only_b) == 1.0  # a's voxels there are not counted
    assert label_dice(x[:, 1:], torch.zeros_like(labels), codec) is None


def _one_line_exit_2(args, tmp_path, monkeypatch, capfd) -> str:
    from medgen.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDGEN_ROOT", str(tmp_path))
    code = main(args)
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))  # no run folder
    return err[0]


@pytest.mark.parametrize(
    ("overrides", "key", "fix"),
    [
        ([], "model.network.in_channels=1", "model.network.in_channels=16 "),
        (
            ["data.label_encoding=bits", "model.network.in_channels=5"],
            "model.network.out_channels=1",
            "model.network.out_channels=5",
        ),
        (
            [
                "model.network.in_channels=16",
                "model.network.out_channels=16",
                "model.discriminator={in_channels:1}",
            ],
            "model.discriminator.in_channels=1",
            "model.discriminator.in_channels=16",
        ),
    ],
)
def test_a_channel_mismatch_names_its_key_before_a_run_folder(
    overrides, key, fix, tmp_path, monkeypatch, capfd
):
    args = ["train", "model=autoencoder3d", "data.labels=true", *overrides]
    line = _one_line_exit_2(args, tmp_path, monkeypatch, capfd)
    assert f"{key} is not allowed" in line and fix in line and "label-map channels" in line


def test_the_pixel_model_is_checked_before_a_run_folder_too(tmp_path, monkeypatch, capfd):
    line = _one_line_exit_2(["train", "data.labels=true"], tmp_path, monkeypatch, capfd)
    assert "model.network.in_channels=1 is not allowed: 16, the data's channel count" in line


def test_an_ldm_on_a_joint_autoencoder_samples_images_with_label_maps(tmp_path):
    from medgen.imaging.components import RFLOW
    from medgen.imaging.latent import LatentDiffusionModule
    from medgen.records import SampleSettings

    meta = _phantoms().planned_meta()
    stage1 = _autoencoder(meta.channels, data_meta=meta)
    ckpt = tmp_path / "ae.ckpt"
    torch.save({"state_dict": stage1.state_dict(), "hyper_parameters": dict(stage1.hparams)}, ckpt)
    torch.manual_seed(0)
    module = LatentDiffusionModule(
        autoencoder=str(ckpt),
        network={"channels": [8, 8], "attention_levels": [False, False], "num_head_channels": 8},
        scheduler={**RFLOW, "num_train_timesteps": 10},
        data_meta=meta,
    ).eval()
    module.check_data(meta)
    assert module.noise_shape == (2, 8, 8, 8)  # the latents: 2 channels whatever the data's
    module.latent_scale.fill_(1.0)
    out = module.generate([0, 1], SampleSettings(seed=0, steps=2))
    assert out.items.shape == (2, 16, 16, 16, 16)  # decoded: the CT and its 15 label channels
    image, label = split_joint(out.items[0], module.data_meta)
    assert image.shape == (1, 16, 16, 16) and label is not None and label.shape == (16, 16, 16)
    assert label.dtype == np.uint8 and int(label.max()) < len(LABEL_NAMES)
    with pytest.raises(ConfigError, match=r"^model\.autoencoder=.*an autoencoder of 1 channels"):
        module.check_data(_phantoms(labels=False).planned_meta())


# ------------------------------------------------------------------------------ end to end

STAGE1 = [
    "model=autoencoder3d",
    "data=phantom",
    "data.labels=true",
    "data.size=16",
    "data.num_train=4",
    "data.num_val=2",
    "data.batch_size=2",
    "model.network.in_channels=16",
    "model.network.out_channels=16",
    "model.network.channels=[8,8]",
    "model.network.attention_levels=[false,false]",
    "model.network.latent_channels=4",
]


def _fit(root, overrides):
    from hydra.core.global_hydra import GlobalHydra

    from medgen.tasks.train import train
    from tests.conformance.test_generators import SHRINK
    from tests.conftest import compose_at

    cfg = compose_at(root, "train", [*SHRINK, *overrides], job=True)
    torch.manual_seed(0)
    metrics = train(cfg)
    GlobalHydra.instance().clear()
    return metrics


def _pairs(out, index: str = "dataset.json") -> list[tuple[Any, Any]]:
    """(image, label) nibabel images of each pair in a cohort's Decathlon list (read by MONAI)."""
    from monai.data import load_decathlon_datalist

    items = load_decathlon_datalist(str(out / index))
    return [(nib.load(item["image"]), nib.load(item["label"])) for item in items]


@pytest.mark.slow
def test_a_joint_latent_model_trains_and_samples_paired_cohorts(tmp_path):
    from tests.conformance.test_generators import TINY_UNET
    from tests.conftest import run_medgen

    stage1 = _fit(tmp_path / "stage1", STAGE1)
    assert 0.0 <= stage1["val/label_dice"] <= 1.0 and "val/hu_mae/liver" in stage1
    ldm = [
        "model=ldm3d",
        "data.labels=true",
        *TINY_UNET,
        "callbacks.scan_preview.steps=2",
        f"model.autoencoder={tmp_path / 'stage1' / 'run'}",
    ]
    _fit(tmp_path / "ldm", ldm)
    ckpt = tmp_path / "ldm" / "run" / "checkpoints" / "last.ckpt"
    hp = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hp["data_meta"]["channels"] == 16 and hp["network"]["in_channels"] == 4

    outs = {}
    for layout in ("decathlon", "nnunet"):
        out = outs[layout] = tmp_path / layout
        args = ["sample", f"ckpt={ckpt}", f"out={out}", "n=3", "steps=2", f"layout={layout}"]
        done = run_medgen(args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
    msd, nnunet = outs["decathlon"], outs["nnunet"]
    assert len(list((msd / "images").glob("*.nii.gz"))) == 3
    assert len(list((msd / "labels").glob("*.nii.gz"))) == 3
    assert sorted(p.name for p in (nnunet / "labelsTr").glob("*.nii.gz")) == [
        f"sample_0000{i}.nii.gz" for i in range(3)
    ]
    doc = json.loads((nnunet / "dataset.json").read_text())
    assert doc["labels"]["background"] == 0 and doc["labels"]["liver"] == 8
    assert doc["numTraining"] == 3
    # both index files read back with MONAI; each image and its label map share one grid
    for (image, label), (image_nn, label_nn) in zip(_pairs(msd), _pairs(nnunet), strict=True):
        for img, lab in ((image, label), (image_nn, label_nn)):
            assert img.shape == lab.shape == (16, 16, 16)
            assert np.array_equal(img.affine, lab.affine)
            assert np.array_equal(img.header.get_sform(), lab.header.get_sform())
            assert lab.get_data_dtype() == np.uint8
            assert int(np.asarray(lab.dataobj).max()) < len(LABEL_NAMES)
        # the same seed and index: the same sample in either layout
        assert np.array_equal(np.asarray(label.dataobj), np.asarray(label_nn.dataobj))
