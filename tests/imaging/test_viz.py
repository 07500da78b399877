"""PNG grids of orthogonal mid-slices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medgen.imaging.viz import grid_to_uint8, mid_slices, save_slice_grid, slice_grid, write_preview


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


def test_write_preview_takes_volumes_and_meta_any_channels(tmp_path):
    from tests.sampling.helpers import data_meta

    two = data_meta(8, channels=2)
    path = write_preview(torch.zeros(3, 2, 8, 8, 8), two, tmp_path / "p.png", titles="abc")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"\(B, 1, D, H, W\) for \['ct'\]"):
        write_preview(torch.zeros(1, 2, 8, 8, 8), data_meta(8), tmp_path / "q.png")


def test_scan_preview_settings_are_checked():
    from medgen.errors import ConfigError
    from medgen.imaging.callbacks import ScanPreview

    assert ScanPreview(sampler="ddim").sampler == "ddim"
    with pytest.raises(ConfigError, match=r"^callbacks.scan_preview.sampler='euler'"):
        ScanPreview(sampler="euler")
    with pytest.raises(ConfigError, match=r"^callbacks.scan_preview.every_n_epochs=-1"):
        ScanPreview(every_n_epochs=-1)
    with pytest.raises(ConfigError, match=r"^callbacks.scan_preview.num_samples=0"):
        ScanPreview(num_samples=0)
