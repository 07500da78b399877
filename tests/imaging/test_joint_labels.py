"""An image and its label map generated together: the code channels, the datamodules that yield
them, the model's channel check, and the paired export that data=nifti and MONAI read back."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.errors import ConfigError, InputFileError
from medgen.imaging.api import export_volumes
from medgen.imaging.data import NiftiDataModule, PhantomDataModule
from medgen.imaging.labels import LabelCodec, codec_of, image_channels, split_joint
from medgen.imaging.phantom import LABEL_NAMES
from medgen.records import DataMeta

from .conftest import tiny_kwargs_for


def phantom(labels: bool = True, **kw) -> PhantomDataModule:
    args = dict(size=16, num_train=2, num_val=1, num_test=1, noise_hu=0.0, labels=labels)
    return PhantomDataModule(**{**args, **kw})


def test_onehot_and_bits_codes_are_known():
    onehot = LabelCodec(("background", "a", "b"))
    assert onehot.channels == 3
    assert onehot.codes().tolist() == [[1, -1, -1], [-1, 1, -1], [-1, -1, 1]]
    bits = LabelCodec(tuple("abcde"), "bits")  # 5 labels -> 3 bits, least significant first
    assert bits.channels == 3
    assert bits.codes()[3].tolist() == [1, 1, -1] and bits.codes()[4].tolist() == [-1, -1, 1]
    assert bits.channel_names() == ("label:bit0", "label:bit1", "label:bit2")


@pytest.mark.parametrize("encoding", ["onehot", "bits"])
def test_codes_round_trip_and_survive_noise(encoding):
    codec = LabelCodec(tuple(f"l{k}" for k in range(11)), encoding)
    lab = torch.from_numpy(np.random.default_rng(0).integers(0, 11, (6, 7, 8)))
    x = codec.encode(lab[None])
    assert x.shape == (codec.channels, 6, 7, 8) and set(x.unique().tolist()) == {-1.0, 1.0}
    assert np.array_equal(codec.decode(x), lab.numpy())
    # any error below 1 per channel keeps every sign, so the nearest code is the true one
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 1.8 - 0.9
    assert np.array_equal(codec.decode(x + noise), lab.numpy())


def test_bits_decode_never_returns_an_unused_code():
    codec = LabelCodec(tuple("abcde"), "bits")  # codes 5, 6, 7 are unused
    x = torch.ones((3, 2, 2, 2))  # exactly code 7
    assert int(codec.decode(x).max()) < 5


def test_a_label_value_outside_the_table_names_the_file():
    codec = LabelCodec(("background", "liver"))
    with pytest.raises(InputFileError, match=r"scan7\.nii\.gz holds label value 3, outside 0\.\.1"):
        codec.encode(np.full((2, 2, 2), 3), source="label map of scan7.nii.gz")
    with pytest.raises(
        ConfigError, match=r"data\.label_encoding='gray' is not allowed: one of onehot, bits"
    ):
        LabelCodec(("background", "liver"), "gray")


def test_phantom_yields_the_image_then_its_label_codes():
    plain, joint = phantom(labels=False), phantom()
    plain.setup(), joint.setup()
    meta = joint.data_meta
    assert meta.channels == 1 + len(LABEL_NAMES) and image_channels(meta) == 1
    assert meta.label_names[0] == "background" and meta.label_names[8] == "liver"
    assert meta.channel_names[:2] == ("ct", "label:background")
    item, ref = joint.train_set[0], plain.train_set[0]
    assert item["image"].shape == (16, 16, 16, 16)
    assert torch.equal(item["image"][:1], ref["image"])  # the CT channel is unchanged
    assert np.array_equal(codec_of(meta).decode(item["image"][1:]), ref["label"][0].numpy())
    assert DataMeta.from_dict(meta.to_dict()) == meta
    assert plain.data_meta.label_names is None and plain.data_meta.channels == 1


def test_old_data_meta_dicts_still_load_as_one_channel():
    d = phantom(labels=False)
    d.setup()
    old = {k: v for k, v in d.data_meta.to_dict().items()
           if k not in ("label_names", "label_encoding", "geometry")}  # fmt: skip
    meta = DataMeta.from_dict(old)
    assert meta.label_names is None and codec_of(meta) is None and meta.geometry is None
    image, label = split_joint(torch.zeros(1, 16, 16, 16), meta)
    assert label is None and image.shape == (1, 16, 16, 16)


def test_the_model_names_the_channel_values_to_set():
    from medgen.imaging.diffusion import DiffusionModule

    dm = phantom()
    dm.setup()
    module = DiffusionModule(**tiny_kwargs_for())
    with pytest.raises(ConfigError) as err:
        module.check_data(dm.data_meta)
    msg = str(err.value)
    assert "model.network.in_channels=1" in msg and "\n" not in msg
    assert "set model.network.in_channels=16 model.network.out_channels=16" in msg
    assert "15 label-map channels (onehot)" in msg


def _export_phantom(out, *, layout: str = "decathlon"):
    dm = phantom()
    dm.setup()
    vols = torch.stack([dm.train_set[i]["image"] for i in range(2)])  # (2, 16, 16^3)
    export_volumes(vols, out, meta=dm.data_meta, preview=False, layout=layout)
    return dm, vols


def test_export_writes_paired_files_with_identical_geometry(tmp_path):
    from monai.data import load_decathlon_datalist

    dm, vols = _export_phantom(tmp_path / "c")
    doc = json.loads((tmp_path / "c" / "dataset.json").read_text())
    assert doc["labels"]["0"] == "background" and doc["labels"]["8"] == "liver"
    pairs = load_decathlon_datalist(str(tmp_path / "c" / "dataset.json"))
    assert len(pairs) == 2
    for k, pair in enumerate(pairs):
        image, label = nib.load(pair["image"]), nib.load(pair["label"])
        assert image.shape == label.shape == (16, 16, 16)
        assert np.array_equal(image.affine, label.affine)
        assert np.array_equal(image.header.get_sform(), label.header.get_sform())
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert np.array_equal(np.asarray(label.dataobj), dm.train_set[k]["label"][0].numpy())
        hu = dm.intensity.from_unit(vols[k, 0].numpy())
        # int16 rounding, plus at most a HU or so where a release marks its voxels
        assert np.abs(np.asarray(image.dataobj) - hu).max() <= 2.0
    sidecar = json.loads((tmp_path / "c" / "images" / "sample_00000.json").read_text())
    assert sidecar["channel_names"] == ["ct"] and sidecar["geometry"]["varies"] is False


def test_data_nifti_trains_a_step_on_the_exported_pairs(tmp_path):
    import pytorch_lightning as pl

    from medgen.imaging.diffusion import DiffusionModule

    _export_phantom(tmp_path / "c")
    dm = NiftiDataModule(
        path=str(tmp_path / "c" / "dataset.json"), labels=True, spatial_size=16,
        spacing=420.0 / 16, val_fraction=0.5, test_fraction=0.0, batch_size=1, num_workers=0,
    )  # fmt: skip
    dm.setup()
    meta = dm.data_meta
    assert meta.label_names[:2] == ("background", "subcutaneous_fat") and meta.channels == 16
    item = dm.train_set[0]
    assert item["image"].shape == (16, 16, 16, 16)
    kw = tiny_kwargs_for()
    kw["network"] = {**kw["network"], "in_channels": 16, "out_channels": 16}
    module = DiffusionModule(**kw)
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        limit_val_batches=0, default_root_dir=str(tmp_path),
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 1
    assert module.data_meta.label_names == meta.label_names  # the checkpoint will carry it


def test_nifti_joint_labels_need_maps_and_names(tmp_path):
    from medgen.imaging.phantom import make_phantom

    ph = make_phantom(0, (16, 16, 16), (4.0, 4.0, 4.0))
    nib.save(nib.Nifti1Image(ph.image.astype(np.int16), ph.affine), tmp_path / "a.nii.gz")
    nib.save(nib.Nifti1Image(ph.image.astype(np.int16), ph.affine), tmp_path / "b.nii.gz")
    with pytest.raises(
        ConfigError, match=r"data\.joint_labels=True is not allowed: false, or label maps"
    ):
        NiftiDataModule(path=str(tmp_path), joint_labels=True, spatial_size=16).setup()
    (tmp_path / "lab").mkdir()
    for name in ("a", "b"):
        nib.save(nib.Nifti1Image(ph.labels, ph.affine), tmp_path / "lab" / f"{name}.nii.gz")
    folder = dict(path=str(tmp_path), labels=str(tmp_path / "lab"), spatial_size=16)
    with pytest.raises(
        ConfigError, match=r"data\.label_names=None is not allowed: one name per label value"
    ):
        NiftiDataModule(**folder, joint_labels=True).setup()
    few = NiftiDataModule(**folder, joint_labels=True, label_names=["background", "fat"])
    few.setup()
    with pytest.raises(InputFileError, match=r"label map of .*\.nii\.gz holds label value"):
        few.train_set[0]
    names = [LABEL_NAMES[k] for k in sorted(LABEL_NAMES)]
    ok = NiftiDataModule(**folder, joint_labels=True, label_names=names, label_encoding="bits")
    ok.setup()
    assert ok.data_meta.channels == 1 + 4 and ok.train_set[0]["image"].shape[0] == 5


def test_a_joint_preview_shows_the_image_and_its_label_map(tmp_path):
    from PIL import Image

    from medgen.imaging.viz import write_preview

    dm = phantom()
    dm.setup()
    x = torch.stack([dm.train_set[i]["image"] for i in range(2)])  # (2, 16, 16^3)
    joint = Image.open(write_preview(x, dm.data_meta, tmp_path / "joint.png", labels="rows"))
    plain_meta = phantom(labels=False)
    plain_meta.setup()
    four = torch.cat([x[:, :1], x[:, :1]])  # four one-channel volumes: as many rows as 2 x 2
    plain = Image.open(write_preview(four, plain_meta.data_meta, tmp_path / "plain.png"))
    assert joint.size == plain.size  # 2 rows per sample (image, labels), not 16
