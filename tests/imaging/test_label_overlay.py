"""Label maps drawn in colour over scan previews: the overlay's pixels sit on their voxels, label 0
stays transparent, a legend names what is shown, and the cohort preview and the joint-model
training preview take ``overlay`` / ``rows`` / ``none``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from medgen.imaging.api import export_volumes
from medgen.imaging.cohort import sidecars, write_cohort_preview
from medgen.imaging.data import PhantomDataModule
from medgen.imaging.intensity import IntensityMapping
from medgen.imaging.viz import (
    label_colour,
    mid_slices,
    overlay_rgba,
    save_slice_grid,
    slice_grid,
    write_preview,
)


def _coloured_fraction(path) -> float:
    """Fraction of pixels whose R, G, B differ (a grey picture has none)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    spread = rgb.max(axis=2) - rgb.min(axis=2)
    return float((spread > 24).mean())


def test_overlay_pixels_sit_on_their_voxels_and_zero_is_transparent():
    vol = np.zeros((8, 8, 8), dtype=np.float32)
    lab = np.zeros((8, 8, 8), dtype=np.int64)
    lab[2:5, 3:6, 4] = 3  # on the axial mid-slice (axis 2 index 4 = 8 // 2)
    rgba, shown = overlay_rgba([vol], [lab], alpha=0.5)
    assert shown == [3]
    grid = slice_grid([lab.astype(np.float32)], vmin=0.0, vmax=3.0)  # same layout, as values
    assert rgba.shape == (*grid.shape, 4)
    on = grid > 0
    assert on.any()
    assert np.allclose(rgba[on, :3], label_colour(3)) and np.allclose(rgba[on, 3], 0.5)
    assert np.all(rgba[~on, 3] == 0.0)
    # the axial tile holds the 3 x 3 patch: 9 pixels there (and the other views see a line each)
    axial = np.flipud(mid_slices(lab)[0])
    assert int((axial == 3).sum()) == 9


def test_overlay_shape_mismatch_and_count_are_named():
    vol = np.zeros((8, 8, 8), dtype=np.float32)
    shapes = r"overlay 0 has shape \(4, 4, 4\), its volume \(8, 8, 8\)"
    with pytest.raises(ValueError, match=shapes):
        overlay_rgba([vol], [np.zeros((4, 4, 4))], alpha=0.5)
    with pytest.raises(ValueError, match="2 overlays for 1 volumes"):
        overlay_rgba([vol], [None, None], alpha=0.5)


def test_saved_grid_is_grey_without_overlay_and_coloured_with_it(tmp_path):
    vol = np.linspace(-1, 1, 16**3, dtype=np.float32).reshape(16, 16, 16)
    lab = np.zeros((16, 16, 16), dtype=np.int64)
    lab[4:12, 4:12, 4:12] = 1
    lab[6:10, 6:10, 6:10] = 2
    grey = save_slice_grid([vol], tmp_path / "grey.png")
    over = save_slice_grid([vol], tmp_path / "over.png", overlays=[lab],
                           label_names={1: "body", 2: "lung"})  # fmt: skip
    assert _coloured_fraction(grey) == 0.0
    assert _coloured_fraction(over) > 0.02
    # the legend band makes the picture taller, not the slices smaller
    assert Image.open(over).size[0] == Image.open(grey).size[0]
    assert Image.open(over).size[1] > Image.open(grey).size[1]


def _phantom() -> PhantomDataModule:
    dm = PhantomDataModule(size=16, num_train=2, num_val=1, num_test=1, noise_hu=0.0, labels=True)
    dm.setup()
    return dm


def test_joint_training_preview_overlays_by_default(tmp_path):
    dm = _phantom()
    x = torch.stack([dm.train_set[i]["image"] for i in range(2)])
    over = write_preview(x, dm.data_meta, tmp_path / "over.png")
    none = write_preview(x, dm.data_meta, tmp_path / "none.png", labels="none")
    # (the yellow sample titles are the only colour without the overlay)
    assert _coloured_fraction(over) > 0.1 and _coloured_fraction(none) < 0.02
    rows = write_preview(x, dm.data_meta, tmp_path / "rows.png", labels="rows")
    assert Image.open(rows).size[1] > Image.open(none).size[1]  # a label row per sample
    with pytest.raises(ValueError, match="labels='both'"):
        write_preview(x, dm.data_meta, tmp_path / "bad.png", labels="both")


def test_cohort_preview_overlays_the_exported_label_maps(tmp_path):
    dm = _phantom()
    vols = torch.stack([dm.train_set[i]["image"] for i in range(2)])
    out = tmp_path / "cohort"
    export_volumes(vols, out, meta=dm.data_meta, preview=False)
    records = list(sidecars(out).values())
    assert all(r.get("label") for r in records)
    intensity = IntensityMapping.from_dict(dict(dm.data_meta.intensity))
    names = {0: "background", 1: "body"}
    over = write_cohort_preview(out, records, intensity, label_names=names)
    assert over is not None
    coloured = _coloured_fraction(over)
    plain = write_cohort_preview(out, records, intensity, labels="none")  # the same file
    assert plain is not None and _coloured_fraction(plain) < 0.02  # the titles only
    assert coloured > 0.1
