"""PNG grids of orthogonal mid-slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.imaging.viz import grid_to_uint8, mid_slices, save_slice_grid, slice_grid


def test_mid_slices_orientation():
    vol = np.zeros((4, 6, 8))
    vol[:, :, 4] = 1.0  # the axial mid-slice (superior axis = 2)
    axial, coronal, sagittal = mid_slices(vol)
    assert axial.shape == (6, 4) and axial.min() == 1.0  # rows: A-P, cols: R-L
    assert coronal.shape == (8, 4) and sagittal.shape == (8, 6)


def test_grid_shape_and_range():
    vols = torch.linspace(-1, 1, 2 * 16**3).reshape(2, 1, 16, 16, 16)
    grid = slice_grid(vols)
    assert grid.shape == (2 * 17, 3 * 17) and grid.min() >= 0.0 and grid.max() <= 1.0
    rgb = grid_to_uint8(vols)
    assert rgb.shape == (*grid.shape, 3) and rgb.dtype == np.uint8


def test_save_png(tmp_path):
    path = save_slice_grid(torch.zeros(3, 1, 8, 8, 8), tmp_path / "p" / "grid.png", titles="abc")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("p/.*tmp*"))  # written atomically


def test_bad_shape_is_named():
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        slice_grid(np.zeros((8, 8)))
    with pytest.raises(ValueError, match=r"\(2, 8\)"):
        slice_grid([np.zeros((2, 8))])
