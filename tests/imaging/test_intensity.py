"""IntensityMapping: known answers, round trips, MONAI equivalence, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.imaging.intensity import IntensityMapping


def test_ct_window_known_answers_and_round_trip():
    m = IntensityMapping("ct_window", -1000.0, 1000.0)
    hu = np.array([-2000.0, -1000.0, 0.0, 500.0, 1000.0, 3000.0])
    unit = m.to_unit(hu)
    assert unit.dtype == np.float32
    np.testing.assert_allclose(unit, [-1, -1, 0, 0.5, 1, 1])
    np.testing.assert_allclose(m.from_unit(unit), [-1000, -1000, 0, 500, 1000, 1000], atol=1e-3)


def test_tensor_in_tensor_out():
    m = IntensityMapping("minmax", 0.0, 255.0)
    x = torch.tensor([0.0, 127.5, 255.0])
    y = m.to_unit(x)
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    torch.testing.assert_close(y, torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(m.from_unit(y), x)


def test_percentile_uses_each_volume_and_reference_for_inverse():
    m = IntensityMapping("percentile", 0.0, 100.0, ref_lo=10.0, ref_hi=20.0)
    x = np.linspace(100.0, 300.0, 101)
    y = m.to_unit(x)
    assert y.min() == -1.0 and y.max() == 1.0 and abs(float(y[50])) < 1e-6
    np.testing.assert_allclose(m.from_unit(np.array([-1.0, 0.0, 1.0])), [10.0, 15.0, 20.0])
    assert IntensityMapping("percentile", 1, 99).to_unit(np.zeros(10)).max() == -1.0  # constant


def test_dict_round_trip_is_plain():
    m = IntensityMapping("percentile", 0.5, 99.5, ref_lo=3.0, ref_hi=900.0)
    d = m.to_dict()
    assert d == {"kind": "percentile", "lo": 0.5, "hi": 99.5, "ref_lo": 3.0, "ref_hi": 900.0}
    assert IntensityMapping.from_dict(d) == m


@pytest.mark.parametrize("kind", ["ct_window", "percentile"])
def test_monai_transform_matches_to_unit(kind):
    lo, hi = (-500.0, 500.0) if kind == "ct_window" else (2.0, 98.0)
    m = IntensityMapping(kind, lo, hi)
    x = torch.from_numpy(np.random.default_rng(0).normal(0, 400, (1, 6, 6, 6)).astype(np.float32))
    out = m.monai_transform("image")({"image": x})["image"]
    np.testing.assert_allclose(np.asarray(out), m.to_unit(x.numpy()), atol=1e-5)


def test_bad_input_names_the_value():
    with pytest.raises(ValueError, match="'hounsfield'"):
        IntensityMapping("hounsfield", 0, 1)
    with pytest.raises(ValueError, match="hi"):
        IntensityMapping("ct_window", 100, -100)
    with pytest.raises(ValueError, match="percentile"):
        IntensityMapping("percentile", 1, 150)
    with pytest.raises(ValueError, match="unknown"):
        IntensityMapping.from_dict({"kind": "minmax", "lo": 0, "hi": 1, "gamma": 2})
