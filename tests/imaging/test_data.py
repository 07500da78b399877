"""Scan sources and datamodules: the item contract, NIfTI through MONAI, MedMNIST, bad input."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.imaging.data import MedMNIST3DDataModule, NiftiDataModule, PhantomDataModule
from medgen.imaging.sources import split_entries
from medgen.records import DataMeta

# LPS orientation (x towards left, y posterior), anisotropic 1.5 x 1.0 x 3.0 mm, offset origin
LPS_AFFINE = np.array(
    [[-1.5, 0, 0, 30.0], [0, -1.0, 0, 20.0], [0, 0, 3.0, -15.0], [0, 0, 0, 1.0]], dtype=np.float64
)
CUBE = (slice(4, 8), slice(10, 14), slice(3, 5))


def write_scan(folder, name, *, shape=(20, 16, 10), affine=LPS_AFFINE, label=True):
    img = np.full(shape, -1000.0, dtype=np.float32)
    img[CUBE] = 1000.0
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(img, affine), folder / f"{name}.nii.gz")
    if label:
        lab = np.zeros(shape, dtype=np.uint8)
        lab[CUBE] = 1
        (folder / "labels").mkdir(exist_ok=True)
        nib.save(nib.Nifti1Image(lab, affine), folder / "labels" / f"{name}.nii.gz")
    return folder / f"{name}.nii.gz"


def check_item(item, size):
    assert set(item) >= {"image", "affine", "source"}
    assert item["image"].shape == (1, *size) and item["image"].dtype == torch.float32
    assert float(item["image"].min()) >= -1.0 and float(item["image"].max()) <= 1.0
    assert item["affine"].shape == (4, 4) and item["affine"].dtype == torch.float64
    assert isinstance(item["source"], str)


def test_phantom_items_and_meta():
    dm = PhantomDataModule(size=16, num_train=4, num_val=2, batch_size=2)
    dm.setup()
    item = dm.train_set[0]
    check_item(item, (16, 16, 16))
    assert item["label"].shape == (1, 16, 16, 16) and item["label"].dtype == torch.int64
    assert item["source"] == "phantom:0" and dm.val_set[0]["source"] == "phantom:1000000"
    assert isinstance(item["class_label"], int)
    meta = dm.data_meta
    assert meta.spatial_size == (16, 16, 16) and meta.modality == "CT"
    assert meta.num_classes == 3 and meta.class_names == ("small", "medium", "large")
    assert (meta.channels, meta.channel_names, meta.units) == (1, ("ct",), "HU")
    assert np.allclose(np.asarray(meta.affine), item["affine"].numpy())
    assert DataMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta  # plain values
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 1, 16, 16, 16) and batch["class_label"].shape == (2,)
    assert batch["affine"].shape == (2, 4, 4) and len(batch["source"]) == 2


def test_limit_caps_each_split():
    dm = PhantomDataModule(size=16, num_train=50, num_val=20, num_test=20, limit=3)
    dm.setup()
    assert len(dm.train_set) == 3 and len(dm.val_set) == 3 and len(dm.test_set) == 3


def test_nifti_lps_anisotropic_comes_out_ras_at_target_spacing(tmp_path):
    write_scan(tmp_path / "scans", "a")
    write_scan(tmp_path / "scans", "b")
    dm = NiftiDataModule(
        path=str(tmp_path / "scans"),
        labels=str(tmp_path / "scans" / "labels"),
        spatial_size=16,
        spacing=2.0,
        val_fraction=0.5,
        test_fraction=0.0,
    )
    dm.setup()
    item = dm.train_set[0]
    check_item(item, (16, 16, 16))
    aff = item["affine"].numpy()
    assert nib.aff2axcodes(aff) == ("R", "A", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(aff), [2.0, 2.0, 2.0], atol=1e-5)
    # the bright cube and its label stay at the same place in the world (mm)
    cube_world = nib.affines.apply_affine(
        LPS_AFFINE, np.argwhere(np.pad(np.ones((4, 4, 2)), 0)) + [4, 10, 3]
    ).mean(0)
    label = item["label"][0].numpy()
    assert set(np.unique(label)) == {0, 1}
    label_world = nib.affines.apply_affine(aff, np.argwhere(label == 1)).mean(0)
    np.testing.assert_allclose(label_world, cube_world, atol=1.5)
    bright = item["image"][0].numpy() > 0.5
    np.testing.assert_allclose(
        nib.affines.apply_affine(aff, np.argwhere(bright)).mean(0), cube_world, atol=1.5
    )
    assert float(item["image"].min()) == -1.0  # air and padding at the floor of the window
    assert dm.data_meta.spacing == (2.0, 2.0, 2.0)


def test_datalist_json_resize_and_percentile(tmp_path):
    for n in "abc":
        write_scan(tmp_path / "imagesTr", n, label=False)
    doc = {
        "training": [
            {"image": f"./imagesTr/{n}.nii.gz", "class_label": i} for i, n in enumerate("ab")
        ],
        "validation": [{"image": "./imagesTr/c.nii.gz", "class_label": 1}],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    dm = NiftiDataModule(
        path=str(tmp_path / "dataset.json"),
        spatial_size=[8, 8, 8],
        spacing=3.0,
        shape_mode="resize",
        modality="MR",
        intensity="percentile",
        intensity_lo=0.0,
        intensity_hi=100.0,
        cache="memory",
    )
    dm.setup()
    assert len(dm.train_set) == 2 and len(dm.val_set) == 1
    item = dm.val_set[0]
    check_item(item, (8, 8, 8))
    assert item["class_label"] == 1 and "label" not in item
    meta = dm.data_meta
    assert meta.num_classes == 2 and meta.modality == "MR" and meta.channel_names == ("mr",)
    assert meta.intensity["kind"] == "percentile" and meta.units == "source"
    assert meta.intensity["ref_lo"] == -1000.0 and meta.intensity["ref_hi"] == 1000.0


def test_split_is_reproducible_by_seed():
    entries = [{"image": f"{i}.nii"} for i in range(20)]
    tr1, va1, te1 = split_entries(entries, val_fraction=0.2, seed=3)
    tr2, va2, _ = split_entries(entries, val_fraction=0.2, seed=3)
    _, va3, _ = split_entries(entries, val_fraction=0.2, seed=4)
    assert va1 == va2 and tr1 == tr2 and len(va1) == 4 and va1 != va3 and te1 == []
    assert sorted(e["image"] for e in tr1 + va1) == sorted(e["image"] for e in entries)
    # a test share leaves the validation items as they were and takes its own from train
    tr4, va4, te4 = split_entries(entries, val_fraction=0.2, test_fraction=0.1, seed=3)
    assert (
        va4 == va1
        and len(te4) == 2
        and not {e["image"] for e in te4} & {e["image"] for e in tr4 + va4}
    )
    assert sorted(e["image"] for e in tr4 + va4 + te4) == sorted(e["image"] for e in entries)


def write_medmnist(path, n=6, size=28):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, k in (("train", n), ("val", 2), ("test", 2)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, size, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, 4, (k, 1)).astype(np.uint8)
    arrays["train_labels"][0, 0] = 10
    np.savez(path, **arrays)
    return arrays


def test_medmnist_npz(tmp_path):
    arrays = write_medmnist(tmp_path / "organmnist3d.npz")
    dm = MedMNIST3DDataModule(path=str(tmp_path / "organmnist3d.npz"), batch_size=3)
    dm.setup()
    item = dm.train_set[0]
    check_item(item, (32, 32, 32))
    assert item["class_label"] == 10 and dm.data_meta.num_classes == 11
    assert "label" not in item
    inner = item["image"][0, 2:30, 2:30, 2:30].numpy()  # 28^3 centred in 32^3
    np.testing.assert_allclose(inner, arrays["train_images"][0] / 127.5 - 1.0, atol=1e-6)
    assert float(item["image"][0, 0, 0, 0]) == -1.0
    assert len(dm.val_set) == 2 and len(dm.test_set) == 2
    # 0..255 display values: not CT/HU by default, mapped back in source units
    assert dm.data_meta.modality != "CT" and dm.data_meta.units == "source"
    assert dm.data_meta.intensity["kind"] == "minmax"


# -- bad input: each names the file and the reason ------------------------------------------------
def test_missing_empty_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        NiftiDataModule(path=str(tmp_path / "nowhere")).setup()
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "e.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty: .*e\.nii\.gz"):
        NiftiDataModule(path=str(tmp_path / "empty")).setup()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "c.nii").write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(ValueError, match=r"not a readable NIfTI.*c\.nii"):
        NiftiDataModule(path=str(tmp_path / "bad")).setup()
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="no .nii"):
        NiftiDataModule(path=str(tmp_path / "none")).setup()
    (tmp_path / "bad.json").write_text('{"training": [\n  {"image": "a.nii"},\n  oops]}')
    with pytest.raises(ValueError, match=r"bad\.json.*line 3"):
        NiftiDataModule(path=str(tmp_path / "bad.json")).setup()
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        MedMNIST3DDataModule(path=str(tmp_path / "missing.npz")).setup()


def test_label_shape_mismatch_names_both(tmp_path):
    img = write_scan(tmp_path / "s", "a", label=False)
    lab = tmp_path / "s" / "labels" / "a.nii.gz"
    lab.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((20, 16, 9), np.uint8), LPS_AFFINE), lab)
    with pytest.raises(ValueError, match=rf"{lab}.*\(20, 16, 9\).*{img}.*\(20, 16, 10\)"):
        NiftiDataModule(path=str(tmp_path / "s"), labels=str(lab.parent)).setup()


def test_unmappable_shape_names_the_file(tmp_path):
    path = tmp_path / "v" / "series.nii.gz"
    path.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), path)
    with pytest.raises(ValueError, match=r"series\.nii\.gz has shape \(8, 8, 8, 3\)"):
        NiftiDataModule(path=str(path)).setup()
    flat = tmp_path / "v" / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 1), np.float32), np.eye(4)), flat)
    with pytest.raises(ValueError, match=r"flat\.nii\.gz has shape \(8, 8, 1\)"):
        NiftiDataModule(path=str(flat)).setup()


def test_medmnist_bad_npz(tmp_path):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 28, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"x\.npz.*train_images"):
        MedMNIST3DDataModule(path=str(tmp_path / "x.npz")).setup()


def test_resize_records_true_geometry_and_export_writes_it(tmp_path):
    """40^3 at 1 mm, resampled to 2 mm (20^3), resized to 16^3: 2.5 mm voxels, world origin kept."""
    from medgen.imaging.api import export_volumes

    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [100.0, -50.0, 20.0]  # an origin far from 0
    for name in "ab":
        write_scan(tmp_path / "scans", name, shape=(40, 40, 40), affine=affine, label=False)
    dm = NiftiDataModule(
        path=str(tmp_path / "scans"), spatial_size=16, spacing=2.0, shape_mode="resize",
        val_fraction=0.5, test_fraction=0.0,
    )  # fmt: skip
    meta = dm.data_meta
    np.testing.assert_allclose(meta.spacing, [2.5, 2.5, 2.5], atol=1e-4)
    item_affine = dm.train_set[0]["affine"].numpy()
    np.testing.assert_allclose(meta.affine, item_affine, atol=1e-6)
    # the volume still covers the source's field of view: centre of the grid at the source centre
    centre = nib.affines.apply_affine(np.asarray(meta.affine), [7.5, 7.5, 7.5])
    np.testing.assert_allclose(centre, nib.affines.apply_affine(affine, [19.5] * 3), atol=1.0)
    paths = export_volumes(
        torch.zeros(1, 1, 16, 16, 16), tmp_path / "out", meta=meta, preview=False
    )
    img = nib.load(str(paths[0]))
    np.testing.assert_allclose(img.header.get_zooms()[:3], [2.5, 2.5, 2.5], atol=1e-4)
    np.testing.assert_allclose(img.affine, item_affine, atol=1e-4)


def test_phantom_cache_is_uint8_main_process_only(monkeypatch):
    from medgen.imaging.intensity import IntensityMapping
    from medgen.imaging.sources import PhantomDataset

    kw = dict(seeds=[3, 4], size=(16, 16, 16), spacing=(26.0, 26.0, 26.0),
              intensity=IntensityMapping("ct_window", -1000.0, 1000.0))  # fmt: skip
    cached = PhantomDataset(**kw, cache=True)
    first = cached[0]
    assert cached._cache[0]["label"].dtype == torch.uint8
    again, fresh = cached[0], PhantomDataset(**kw, cache=False)[0]
    for item in (first, again):
        assert item["label"].dtype == torch.int64
        torch.testing.assert_close(item["image"], fresh["image"], rtol=0, atol=0)
        assert torch.equal(item["label"], fresh["label"])
    # inside a DataLoader worker nothing is cached (no per-worker copy of the cache)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: object())
    in_worker = PhantomDataset(**kw, cache=True)
    assert torch.equal(in_worker[1]["label"], PhantomDataset(**kw, cache=False)[1]["label"])
    assert in_worker._cache == {}
