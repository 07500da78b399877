"""Phantoms: determinism, geometry (RAS affine, spacing, any size), anatomy and HU per label."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from scipy.ndimage import binary_erosion

from medgen.imaging.phantom import LABELS, SIZE_CLASSES, make_phantom


@pytest.fixture(scope="module")
def ph64():
    return make_phantom(7, 64)


def test_same_seed_bit_identical_and_seeds_differ():
    a, b = make_phantom(11, 32), make_phantom(11, 32)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.labels.tobytes() == b.labels.tobytes()
    c = make_phantom(12, 32)
    assert not np.array_equal(a.labels, c.labels)
    assert a.params != c.params


def test_types_shapes_and_ras_affine():
    ph = make_phantom(0, (20, 24, 16), spacing=(2.0, 1.5, 3.0))
    assert ph.image.shape == ph.labels.shape == (20, 24, 16)
    assert ph.image.dtype == np.float32 and ph.labels.dtype == np.uint8
    assert ph.affine.dtype == np.float64 and ph.affine.shape == (4, 4)
    assert nib.aff2axcodes(ph.affine) == ("R", "A", "S")
    np.testing.assert_allclose(nib.affines.voxel_sizes(ph.affine), [2.0, 1.5, 3.0])
    centre = ph.affine @ np.array([9.5, 11.5, 7.5, 1.0])  # volume centre is world origin
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    assert ph.size_class in range(len(SIZE_CLASSES))


def test_default_spacing_fits_field_of_view():
    ph = make_phantom(0, 16)
    np.testing.assert_allclose(np.diag(ph.affine)[:3], 420.0 / 16)


def test_bad_geometry_names_the_value():
    with pytest.raises(ValueError, match="300"):
        make_phantom(0, 300)
    with pytest.raises(ValueError, match="spacing"):
        make_phantom(0, 32, spacing=(1.0, -1.0, 1.0))


def test_anatomy_label_volumes_plausible(ph64):
    vox_ml = np.prod(np.diag(ph64.affine)[:3]) / 1000.0  # mL per voxel
    vol = {LABELS[k][0]: float((ph64.labels == k).sum()) * vox_ml for k in LABELS}
    assert set(np.unique(ph64.labels)) == set(LABELS)  # every structure is present
    assert 1000 < vol["lung_left"] < 4500 and 1000 < vol["lung_right"] < 4500
    assert 300 < vol["heart"] < 1500
    assert 800 < vol["liver"] < 3500
    assert 60 < vol["kidney_left"] < 400 and 60 < vol["kidney_right"] < 400
    assert vol["liver"] > vol["heart"] > vol["kidney_left"]
    # laterality in RAS: the liver and right lung lie at +x, the heart left of the midline
    x = (ph64.affine @ np.c_[np.argwhere(ph64.labels > 0), np.ones((ph64.labels > 0).sum())].T)[0]
    lab = ph64.labels[ph64.labels > 0]
    assert x[lab == 8].mean() > 0 and x[lab == 5].mean() > 0 and x[lab == 4].mean() < 0
    assert x[lab == 6].mean() < 0


def test_hu_per_label_as_documented():
    ph = make_phantom(3, 64, noise_hu=0.0)
    drawn = ph.params["hu"]
    for k, (name, mean, sd) in LABELS.items():
        if name in (
            "vertebra",
            "rib",
            "spinal_canal",
            "disc",
            "aorta",
            "kidney_left",
            "kidney_right",
        ):
            continue  # thin structures: partial volume dominates at this size
        core = binary_erosion(ph.labels == k, iterations=2)
        if core.sum() < 20:
            continue
        median = float(np.median(ph.image[core]))
        tol = 60.0 if name.startswith("lung") else 20.0  # lungs carry a 40 HU texture
        assert abs(median - drawn[name]) < tol, (name, median, drawn[name])
        assert abs(drawn[name] - mean) <= 4 * sd + 1e-6, (name, drawn[name])


@pytest.mark.parametrize("seed", [0, 3])
def test_bone_hu_at_fine_spacing(seed):
    ph = make_phantom(seed, 64, spacing=2.0, noise_hu=0.0)  # 128 mm field of view around the spine
    bone = ph.image[ph.labels == 11]
    cortical = ph.params["hu"]["vertebra"]
    assert cortical > 500
    assert abs(np.percentile(bone, 95) - cortical) < 100  # the cortical shell
    assert np.percentile(bone, 5) < cortical - 250  # the cancellous core is darker


def test_noise_level():
    clean, noisy = make_phantom(5, 32, noise_hu=0.0), make_phantom(5, 32, noise_hu=20.0)
    assert 15 < float((noisy.image - clean.image).std()) < 25
