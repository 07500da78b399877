"""Bad input fails before training and names itself: NaN voxels, datalist items, datamodule
arguments; non-finite metrics are reported (metrics.json, validation step), never dropped."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.errors import ConfigError, InputFileError
from medgen.imaging.data import MedMNIST3DDataModule, NiftiDataModule, PhantomDataModule
from medgen.imaging.diffusion import DiffusionModule
from medgen.tasks.train import _plain_metrics, metrics_record

from .test_data import LPS_AFFINE, write_medmnist, write_scan

NAN_BLOCK = (slice(2, 5), slice(2, 5), slice(2, 5))  # 27 voxels


def write_nan_scan(folder, name):
    path = write_scan(folder, name, label=False)
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[NAN_BLOCK] = np.nan
    nib.save(nib.Nifti1Image(data, LPS_AFFINE), path)
    return path


def write_datalist(folder, doc) -> str:
    path = folder / "dataset.json"
    path.write_text(json.dumps(doc))
    return str(path)


def nifti(path, **kw):
    return NiftiDataModule(**{"spatial_size": 8, "spacing": 4.0, "num_workers": 0, **kw}, path=path)


# -- NaN / inf voxels ----------------------------------------------------------------------------
def test_nan_block_in_a_validation_volume_names_the_file_and_count(tmp_path):
    write_scan(tmp_path / "imagesTr", "good", label=False)
    bad = write_nan_scan(tmp_path / "imagesTr", "bad")
    doc = {"training": ["imagesTr/good.nii.gz"], "validation": ["imagesTr/bad.nii.gz"]}
    path = write_datalist(tmp_path, doc)
    # cached in memory: every item is loaded in setup, so the run fails before training
    with pytest.raises(InputFileError, match=rf"{bad}.* 27 non-finite \(NaN/inf\) voxel"):
        nifti(path, cache="memory").setup()
    # loaded lazily: at the latest when the item is loaded, through the DataLoader too
    dm = nifti(path)
    dm.setup()
    with pytest.raises(InputFileError, match=rf"image file {bad} holds 27 non-finite"):
        dm.val_set[0]
    with pytest.raises(InputFileError, match=str(bad)):
        next(iter(dm.val_dataloader()))


def test_nan_volume_fails_setup_for_percentile_intensity(tmp_path):
    write_scan(tmp_path / "s", "a", label=False)
    bad = write_nan_scan(tmp_path / "s", "b")
    dm = nifti(str(tmp_path / "s"), intensity="percentile", intensity_lo=1.0, intensity_hi=99.0)
    with pytest.raises(InputFileError, match=rf"{bad} holds 27 non-finite"):
        dm.setup()


def test_medmnist_float_images_with_nan_name_the_item(tmp_path):
    arrays = write_medmnist(tmp_path / "m.npz")
    images = arrays["train_images"].astype(np.float32)
    images[3, :2, :2, :2] = np.inf
    np.savez(tmp_path / "m.npz", **{**arrays, "train_images": images})
    with pytest.raises(InputFileError, match=r"m\.npz: train_images .* item 3 \(8 voxels\)"):
        MedMNIST3DDataModule(path=str(tmp_path / "m.npz")).setup()
    labels = arrays["train_labels"].astype(np.int64)
    labels[1, 0] = -1
    np.savez(tmp_path / "m.npz", **{**arrays, "train_labels": labels})
    with pytest.raises(InputFileError, match=r"train_labels\[1\]=-1 is negative"):
        MedMNIST3DDataModule(path=str(tmp_path / "m.npz")).setup()


# -- non-finite metrics --------------------------------------------------------------------------
def test_plain_metrics_keep_nan_and_metrics_json_names_it():
    values = {"val/loss": torch.tensor(math.nan), "train/loss": torch.tensor(0.5), "x": "text"}
    metrics = _plain_metrics(values)
    assert set(metrics) == {"val/loss", "train/loss"} and math.isnan(metrics["val/loss"])
    record = metrics_record({**metrics, "val/inf": math.inf, "global_step": 3.0})
    assert record["val/loss"] is None and record["val/inf"] is None
    assert record["non_finite"] == ["val/inf", "val/loss"]
    assert record["train/loss"] == 0.5 and record["global_step"] == 3.0
    json.dumps(record, allow_nan=False)  # strict JSON
    assert "non_finite" not in metrics_record({"val/loss": 0.25})


def test_non_finite_validation_loss_names_metric_step_and_sources(tiny_kwargs):
    module = DiffusionModule(**tiny_kwargs)
    image = torch.zeros(2, 1, 16, 16, 16)
    image[1, 0, 0, 0, 0] = math.nan
    batch = {"image": image, "source": ["scan_a.nii.gz", "scan_b.nii.gz"]}
    with pytest.raises(FloatingPointError, match=r"val/loss .*global step 0.*scan_b\.nii\.gz"):
        module.validation_step(batch, 0)


# -- datalists -----------------------------------------------------------------------------------
def test_datalist_every_item_checked_before_training(tmp_path):
    for n in "abc":
        write_scan(tmp_path / "imagesTr", n, label=False)
    doc = {
        "training": [
            {"image": "imagesTr/a.nii.gz", "class_label": 0, "notes": "unknown keys are fine"},
            {"image": "imagesTr/missing.nii.gz", "class_label": 1},
            {"image": "imagesTr", "class_label": 0},
            {"image": "imagesTr/b.nii.gz", "class_label": True},
            {"image": "imagesTr/b.nii.gz", "class_label": 1.0},
            {"image": "imagesTr/b.nii.gz", "class_label": "1"},
            {"image": "imagesTr/c.nii.gz", "class_label": -1},
            {"label": "imagesTr/c.nii.gz", "class_label": 0},
            5,
        ]
    }
    path = write_datalist(tmp_path, doc)
    with pytest.raises(InputFileError) as err:
        nifti(path).setup()
    msg = str(err.value)
    assert msg.startswith(f"datalist {path}: 8 problems: ")
    missing = tmp_path / "imagesTr" / "missing.nii.gz"
    assert f"training[1].image='imagesTr/missing.nii.gz' (resolved to {missing}) does not" in msg
    assert "training[2].image='imagesTr' (resolved to " in msg and "is a folder" in msg
    assert "training[3].class_label=True is not allowed: must be an integer" in msg
    assert "training[4].class_label=1.0 is not allowed" in msg
    assert "training[5].class_label='1' is not allowed" in msg
    assert "training[6].class_label=-1 is not allowed: must be >= 0" in msg
    assert 'training[7] has no "image"' in msg and "training[8] is int" in msg
    assert "training[0]" not in msg


def test_datalist_class_label_bounded_by_class_names_and_model(tmp_path):
    for n in "ab":
        write_scan(tmp_path / "imagesTr", n, label=False)
    doc = {
        "training": [
            {"image": "imagesTr/a.nii.gz", "class_label": 0},
            {"image": "imagesTr/b.nii.gz", "class_label": 5},
        ]
    }
    path = write_datalist(tmp_path, doc)
    with pytest.raises(InputFileError, match=r"training\[1\]\.class_label=5 .*\[0, 2\) \(len"):
        nifti(path, class_names=["x", "y"]).setup()
    # the class-conditional model being trained fixes num_classes: checked in the datamodule's
    # setup (before the model's, and before the first step), not an IndexError inside torch
    dm = nifti(path)
    model = SimpleNamespace(hparams={"class_conditional": True, "num_classes": 3})
    dm.trainer = SimpleNamespace(lightning_module=model)
    with pytest.raises(InputFileError, match=r"class_label=5 .*\[0, 3\) \(model\.num_classes=3\)"):
        dm.setup()
    phantom = PhantomDataModule(size=16, num_train=2, num_val=1)
    model.hparams["num_classes"] = 2
    phantom.trainer = SimpleNamespace(lightning_module=model)
    with pytest.raises(ConfigError, match=r"model\.num_classes=2 .*class labels up to 2"):
        phantom.setup()


def test_out_of_range_class_label_stops_fit_before_the_first_step(tmp_path, tiny_kwargs):
    import pytorch_lightning as pl

    for n in "ab":
        write_scan(tmp_path / "imagesTr", n, label=False)
    doc = {"training": [{"image": f"imagesTr/{n}.nii.gz", "class_label": 4} for n in "ab"]}
    dm = nifti(write_datalist(tmp_path, doc), spatial_size=16, spacing=2.0, val_fraction=0.5)
    model = DiffusionModule(**tiny_kwargs, class_conditional=True, num_classes=2)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    with pytest.raises(InputFileError, match=r"class_label=4 .*model\.num_classes=2"):
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 0


def test_datalist_paths_outside_its_folder_are_allowed_and_logged(tmp_path, caplog):
    outside = write_scan(tmp_path / "elsewhere", "x", label=False)
    write_scan(tmp_path / "lists" / "imagesTr", "a", label=False)
    doc = {"training": ["imagesTr/a.nii.gz", "../elsewhere/x.nii.gz", str(outside)]}
    path = write_datalist(tmp_path / "lists", doc)
    caplog.set_level("WARNING", logger="medgen.imaging.sources")
    dm = nifti(path, val_fraction=0.5)
    dm.setup()
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set or []) == 3
    assert "2 path(s) lie outside its folder" in caplog.text
    assert f"training[1].image='../elsewhere/x.nii.gz' -> {outside}" in caplog.text


def test_datalist_file_itself(tmp_path):
    (tmp_path / "bad.json").write_text('{"training": [\n  {"image": "a.nii"},\n  oops]}')
    with pytest.raises(InputFileError, match=r"bad\.json is not valid JSON \(line 3"):
        nifti(str(tmp_path / "bad.json")).setup()
    for doc in ({"training": []}, {"validation": ["a.nii"]}, ["a.nii"]):
        with pytest.raises(InputFileError, match=r'needs a non-empty "training" list'):
            nifti(write_datalist(tmp_path, doc)).setup()
    with pytest.raises(FileNotFoundError, match="datalist not found"):  # also an InputFileError
        nifti(str(tmp_path / "none.json")).setup()


def test_mixed_class_labels_are_refused(tmp_path):
    for n in "ab":
        write_scan(tmp_path / "imagesTr", n, label=False)
    doc = {"training": [{"image": "imagesTr/a.nii.gz", "class_label": 0}, "imagesTr/b.nii.gz"]}
    with pytest.raises(InputFileError, match="some entries have a class_label and others not"):
        nifti(write_datalist(tmp_path, doc)).setup()


# -- datamodule arguments: refused at instantiation, naming the key ------------------------------
@pytest.mark.parametrize(
    "cls,kwargs,key",
    [
        (PhantomDataModule, {"batch_size": 0}, "data.batch_size"),
        (PhantomDataModule, {"batch_size": 2.5}, "data.batch_size"),
        (PhantomDataModule, {"num_workers": -1}, "data.num_workers"),
        (PhantomDataModule, {"limit": 0}, "data.limit"),
        (PhantomDataModule, {"size": 8}, "data.size"),
        (PhantomDataModule, {"size": [32, 32, 300]}, "data.size"),
        (PhantomDataModule, {"spacing": 0.0}, "data.spacing"),
        (PhantomDataModule, {"num_train": 0}, "data.num_train"),
        (PhantomDataModule, {"num_val": -1}, "data.num_val"),
        (PhantomDataModule, {"window_lo": 100.0, "window_hi": 100.0}, "data.window_hi"),
        (NiftiDataModule, {"spatial_size": [16, 0, 16]}, "data.spatial_size"),
        (NiftiDataModule, {"spatial_size": -8}, "data.spatial_size"),
        (NiftiDataModule, {"spacing": [1.0, -1.0, 1.0]}, "data.spacing"),
        (NiftiDataModule, {"spacing": 0}, "data.spacing"),
        (NiftiDataModule, {"val_fraction": 1.0}, "data.val_fraction"),
        (NiftiDataModule, {"val_fraction": -0.1}, "data.val_fraction"),
        (NiftiDataModule, {"test_fraction": -0.1}, "data.test_fraction"),
        (NiftiDataModule, {"val_fraction": 0.5, "test_fraction": 0.5}, "data.test_fraction"),
        (PhantomDataModule, {"num_test": -1}, "data.num_test"),
        (NiftiDataModule, {"cache": "ram"}, "data.cache"),
        (NiftiDataModule, {"cache": "disk", "cache_dir": None}, "data.cache_dir"),
        (NiftiDataModule, {"shape_mode": "stretch"}, "data.shape_mode"),
        (NiftiDataModule, {"modality": "PET"}, "data.modality"),
        (NiftiDataModule, {"intensity": "zscore"}, "data.intensity"),
        (NiftiDataModule, {"intensity_lo": 5.0, "intensity_hi": 1.0}, "data.intensity_hi"),
        (NiftiDataModule, {"batch_size": -2}, "data.batch_size"),
        (MedMNIST3DDataModule, {"spatial_size": 0}, "data.spatial_size"),
        (MedMNIST3DDataModule, {"spacing": -1.0}, "data.spacing"),
        (MedMNIST3DDataModule, {"limit": -3}, "data.limit"),
    ],
)
def test_bad_datamodule_arguments_name_the_key(tmp_path, cls, kwargs, key):
    if cls is not PhantomDataModule:
        kwargs = {"path": str(tmp_path / "never-read"), **kwargs}
    with pytest.raises(ConfigError, match=rf"^{key}=") as err:
        cls(**kwargs)
    assert err.value.key == key
