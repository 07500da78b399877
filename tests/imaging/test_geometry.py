"""Geometry and intensity of real CT: where the export affine comes from, crops that cut the body,
the body-fitting shape mode, CT window presets and their HU round-trip error."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from medgen.errors import ConfigError
from medgen.imaging import transforms as tf
from medgen.imaging.data import NiftiDataModule, PhantomDataModule
from medgen.imaging.intensity import HU_BANDS, IntensityMapping, roundtrip_error
from medgen.imaging.sources import geometry_record

CT = IntensityMapping("ct_window", -1000.0, 1000.0)


def scan(path, *, size=40, body=30, origin=(0.0, 0.0, 0.0), spacing=2.0) -> str:
    """A CT of air (-1000 HU) holding a centred cube of ``body`` voxels of soft tissue (40 HU)."""
    vol = np.full((size,) * 3, -1000, dtype=np.int16)
    a = (size - body) // 2
    vol[a : a + body, a : a + body, a : a + body] = 40
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = origin
    nib.save(nib.Nifti1Image(vol, affine), path)
    return str(path)


def item(path, shape_mode="crop_pad", size=16, spacing=2.0) -> dict:
    pipeline = tf.build_nifti_transforms(
        spatial_size=(size,) * 3, spacing=(spacing,) * 3, intensity=CT, shape_mode=shape_mode
    )
    return pipeline({"image": str(path), "source": str(path)})


def test_geometry_record_says_where_the_affine_came_from(tmp_path):
    a = scan(tmp_path / "a.nii.gz")
    b = scan(tmp_path / "b.nii.gz", origin=(30.0, 0.0, 0.0))
    c = scan(tmp_path / "c.nii.gz", size=50, body=30)  # a wider field of view
    same = geometry_record(a, [a, a], spacing=(2.0, 2.0, 2.0))
    assert same["varies"] is False and same["affine_from"] == a and same["items"] == 2
    assert same["fov_mm_min"] == same["fov_mm_max"] == [80.0, 80.0, 80.0]  # 40 voxels x 2 mm
    spread = geometry_record(a, [a, b, c], spacing=(2.0, 2.0, 2.0))
    assert spread["varies"] is True
    assert spread["center_mm_min"] == [39.0, 39.0, 39.0]  # centre of voxels 0..39 at 2 mm
    assert spread["center_mm_max"] == [69.0, 49.0, 49.0]  # b: +30 mm in x; c: 49 voxels / 2 x 2
    assert spread["fov_mm_max"] == [100.0, 100.0, 100.0]
    assert a in spread["note"] and "[30.0, 10.0, 10.0] mm" in spread["note"]


def test_nifti_data_meta_records_the_geometry_and_warns_when_it_varies(tmp_path, caplog):
    a = scan(tmp_path / "a.nii.gz", body=10)
    b = scan(tmp_path / "b.nii.gz", body=10, origin=(30.0, 0.0, 0.0))
    v = scan(tmp_path / "v.nii.gz", body=10)
    doc = {"training": [{"image": "a.nii.gz"}, {"image": "b.nii.gz"}],
           "validation": [{"image": "v.nii.gz"}]}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(doc))
    caplog.set_level("WARNING", logger="medgen.imaging.data")
    dm = NiftiDataModule(path=str(tmp_path / "d.json"), spatial_size=16, spacing=2.0)
    dm.setup()
    g = dm.data_meta.geometry
    assert g["varies"] is True and g["items"] == 2 and g["affine_from"] in (a, b)
    first = dm.train_set[0]["source"]
    assert g["affine_from"] == first
    assert np.allclose(np.asarray(dm.data_meta.affine), dm.train_set[0]["affine"].numpy())
    assert "takes the affine of training item" in caplog.text and v not in caplog.text


def test_the_centre_crop_warns_once_naming_the_file_and_the_share_lost(tmp_path, caplog):
    path = scan(tmp_path / "big.nii.gz")  # a 30^3 body, cropped to 16^3
    caplog.set_level("WARNING", logger="medgen.imaging.transforms")
    tf._WARNED.discard(path)
    out = item(path)
    assert out["image"].shape == (1, 16, 16, 16)
    lost = 1 - 16**3 / 30**3  # 84.8%
    assert f"removes {100 * lost:.1f}% of the body voxels" in caplog.text
    assert path in caplog.text and "a spacing of 3.75 mm fits its body" in caplog.text
    assert "data.shape_mode=fit" in caplog.text
    caplog.clear()
    item(path)
    assert "removes" not in caplog.text  # once per file
    small = scan(tmp_path / "small.nii.gz", body=10)
    item(small)
    assert "removes" not in caplog.text  # nothing of the body is cut


def test_fit_keeps_the_whole_body_with_one_scale_factor(tmp_path, caplog):
    caplog.set_level("WARNING", logger="medgen.imaging.transforms")
    big = item(scan(tmp_path / "big.nii.gz"), shape_mode="fit")
    assert big["image"].shape == (1, 16, 16, 16)
    spacing = np.linalg.norm(big["affine"].numpy()[:3, :3], axis=0)
    assert np.allclose(spacing, 3.75, atol=0.01)  # 30 voxels x 2 mm into 16 voxels, every axis
    body = big["image"] > CT.to_unit(np.float32(-500.0))
    assert int(body.sum()) >= 0.9 * 16**3 and "removes" not in caplog.text
    small = item(scan(tmp_path / "small.nii.gz", body=10), shape_mode="fit")
    spacing = np.linalg.norm(small["affine"].numpy()[:3, :3], axis=0)
    assert np.allclose(spacing, 2.0)  # a body that fits keeps the target spacing
    assert int((small["image"] > -0.5).sum()) == 10**3
    assert torch.equal(small["image"][0, 3:13, 3:13, 3:13] > -0.5, torch.ones(10, 10, 10) > 0)


def test_window_presets_and_explicit_bounds():
    assert PhantomDataModule(size=16).intensity.to_dict()["lo"] == -1000.0
    wide = PhantomDataModule(size=16, window="wide").intensity
    assert (wide.lo, wide.hi) == (-1024.0, 3071.0)
    own = PhantomDataModule(size=16, window="wide", window_hi=2000.0).intensity
    assert (own.lo, own.hi) == (-1024.0, 2000.0)
    with pytest.raises(ConfigError, match=r"data\.window='bone' is not allowed: one of soft, wide"):
        PhantomDataModule(size=16, window="bone")
    with pytest.raises(ConfigError, match=r"data\.intensity_lo=None.*intensity=percentile"):
        NiftiDataModule(path="x", intensity="percentile")


def test_roundtrip_error_per_band_has_known_answers():
    soft = roundtrip_error(CT)
    assert set(soft) == set(HU_BANDS)
    for band in ("lung", "fat", "soft_tissue"):
        assert soft[band]["max_abs_hu"] <= 0.5, band  # int16 rounding of half-HU steps only
    assert soft["air"]["max_abs_hu"] == 24.0  # -1024 HU comes back as -1000
    assert soft["air"]["clipped_fraction"] == pytest.approx(48 / 149)  # -1024..-1000.5
    assert soft["bone"]["max_abs_hu"] == 900.0  # 1900 HU comes back as 1000
    assert soft["bone"]["clipped_fraction"] == pytest.approx(1800 / 3201)
    assert soft["metal"]["max_abs_hu"] == 2071.0 and soft["metal"]["clipped_fraction"] == 1.0
    wide = roundtrip_error(IntensityMapping("ct_window", -1024.0, 3071.0))
    assert all(r["max_abs_hu"] <= 0.5 and r["clipped_fraction"] == 0.0 for r in wide.values())
