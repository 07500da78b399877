"""Scan evaluation, known answers: a set against itself, identical copies, a planted copy, a
shifted histogram, TSTR on 16^3 phantoms; each in seconds at 16^3."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from medgen.imaging.evaluation import diversity, fidelity, histograms, memorization, tstr
from medgen.imaging.evaluation.evaluate import VolumeEvalSettings, evaluate_volumes
from tests.imaging.evaluation_helpers import phantom_set, renamed

FAST = VolumeEvalSettings(encoder_steps=15, progress=False)


@pytest.fixture(scope="module")
def real():
    return phantom_set(range(2_000_000, 2_000_006), "reference")


@pytest.fixture(scope="module")
def other():
    return phantom_set(range(1_000_000, 1_000_006), "samples")


def test_a_set_against_itself_scores_zero_distance_and_its_own_diversity(real, other, tmp_path):
    # one encoder for the reference, trained once (cached in tmp_path)
    result = evaluate_volumes(renamed(real, "samples"), real, settings=FAST, cache_dir=tmp_path)
    m = result["metrics"]
    assert m["fidelity/frechet"] == pytest.approx(0.0, abs=1e-4)
    assert m["fidelity/hu_js"] == 0.0 and m["fidelity/band_tv"] == 0.0
    assert m["diversity/ms_ssim"] == m["diversity/ms_ssim_reference"]
    assert 0.3 < m["diversity/ms_ssim"] < 1.0  # distinct phantoms are not identical
    # another real set is farther than the set itself, and closer than noise is
    apart = evaluate_volumes(other, real, settings=FAST, cache_dir=tmp_path)["metrics"]
    assert apart["fidelity/frechet"] > 1e-3
    noise = renamed(other, "samples")
    noise.images = torch.randn(noise.images.shape, generator=torch.Generator().manual_seed(0))
    noise.images = noise.images.clamp(-1, 1)
    noise.keys = [f"noise{i}" for i in range(len(noise))]
    far = evaluate_volumes(noise, real, settings=FAST, cache_dir=tmp_path)["metrics"]
    assert far["fidelity/frechet"] > apart["fidelity/frechet"]
    assert far["fidelity/hu_js"] > apart["fidelity/hu_js"] + 0.2
    assert far["diversity/ms_ssim"] < 0.1 < apart["diversity/ms_ssim"]


def test_identical_copies_have_diversity_one(real):
    copies = real.images[:1].repeat(4, 1, 1, 1, 1)
    assert diversity.mean_pairwise_ms_ssim(copies) == pytest.approx(1.0, abs=1e-5)
    assert diversity.mean_pairwise_ms_ssim(real.images) < 0.95


def test_ms_ssim_scales_keep_the_coarsest_at_8_voxels_from_16_to_128():
    counts = {s: len(diversity.ms_ssim_weights((s, s, s))) for s in (16, 32, 64, 128)}
    assert counts == {16: 2, 32: 3, 64: 4, 128: 5}
    for s in (16, 32, 64, 128):
        assert sum(diversity.ms_ssim_weights((s, s, s))) == pytest.approx(1.0)
    x = torch.rand(2, 1, 32, 32, 32) * 2 - 1  # MONAI's own size check passes at 32^3 (and 16^3)
    assert diversity.ms_ssim(x, x).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)


def test_pairs_are_all_or_a_seeded_subset():
    assert diversity.pairs(4, None) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    sub = diversity.pairs(20, 7, seed=3)
    assert len(sub) == 7 and sub == diversity.pairs(20, 7, seed=3)


def test_planted_copy_is_flagged_and_a_fresh_phantom_is_not():
    train = phantom_set(range(24), "train")
    fresh = phantom_set([2_000_000])
    # the copy went through export: int16 HU rounding
    copy = torch.round(train.images[5:6] * 1000) / 1000
    samples = torch.cat([copy, fresh.images])
    mem = memorization.memorization(
        samples, train.images, sample_ids=["copy", "fresh"], train_ids=train.ids
    )
    assert [p["sample"] for p in mem["flagged"]] == ["copy"]
    assert mem["flagged"][0]["train"] == "phantom:5" and mem["flagged"][0]["correlation"] > 0.999
    assert mem["nearest"][1]["distance"] > mem["threshold"]
    assert mem["flagged_fraction"] == 0.5


def test_shifted_hu_histogram_raises_js_monotonically(real):
    edges = histograms.histogram_edges(-1000.0, 1000.0)
    base = histograms.histogram(real.source_units(), edges)
    shifts = [0.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 120.0, 180.0, 250.0]
    js = [
        histograms.js_distance(histograms.histogram(real.source_units() + s, edges), base)
        for s in shifts
    ]
    assert js[0] == 0.0
    assert all(a < b for a, b in zip(js, js[1:], strict=False)), js


def test_tissue_bands_partition_the_hu_axis():
    hu = torch.tensor([-1000.0, -950.0, -850.0, -100.0, 40.0, 60.0, 700.0, 3000.0])
    bands = histograms.band_fractions(hu)
    assert bands == {"air": 0.25, "lung": 0.125, "fat": 0.125, "soft_tissue": 0.25, "bone": 0.25}


def test_frechet_and_mmd_are_zero_for_identical_features_and_grow_with_a_shift():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 8, generator=g)
    b = torch.randn(40, 8, generator=g)
    assert fidelity.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    d = [fidelity.frechet_distance(b + s, a) for s in (0.0, 0.5, 1.0)]
    assert d[0] < d[1] < d[2]
    m = [fidelity.mmd(b + s, a) for s in (0.0, 0.5, 1.0)]
    assert abs(m[0]) < 0.5 < m[1] < m[2]


def test_tstr_on_16_cubed_phantoms_trains_and_reports_dice_in_seconds():
    syn = phantom_set(range(1_000_000, 1_000_004), "samples")
    train = phantom_set(range(4), "train")
    test = phantom_set(range(2_000_000, 2_000_003), "reference")
    start = time.perf_counter()
    t = tstr.tstr(syn, train, test, steps=12, progress=False)
    assert time.perf_counter() - start < 30
    assert len(t["labels"]) == 14 and t["pairs"] == 4
    for arm in ("dice_real", "dice_synthetic"):
        assert len(t[arm]) == 14
        assert all(v is None or 0.0 <= v <= 1.0 for v in t[arm])
    assert tstr.mean_dice(t["dice_real"]) > 0.05  # it learned something in 12 steps
    assert set(t["tissue"]["liver"]) == {
        "samples_ml", "reference_ml", "samples_hu", "reference_hu", "table_hu",
    }  # fmt: skip
    assert t["tissue"]["liver"]["table_hu"] == 60.0
    # known answer: synthetic pairs that are the real pairs give the real arm's Dice exactly
    same = tstr.tstr(renamed(train, "samples"), train, test, steps=12, progress=False)
    assert same["dice_synthetic"] == same["dice_real"] == t["dice_real"]


def test_tstr_without_sample_labels_still_labels_the_samples_with_the_real_arm():
    syn = phantom_set(range(1_000_000, 1_000_003), "samples")
    syn.labels = None
    t = tstr.tstr(
        syn, phantom_set(range(3), "train"), phantom_set([2_000_000, 2_000_001], "reference"),
        steps=5, progress=False,
    )  # fmt: skip
    assert t["dice_synthetic"] is None and "no label maps" in t["synthetic_skipped"]
    assert t["tissue_labels_from"] == "real arm"
    assert np.isfinite(t["tissue"]["air"]["samples_ml"])


def test_evaluate_volumes_reports_every_part_with_a_direction(real, other):
    from medgen.imaging.evaluation.evaluate import METRICS
    from medgen.imaging.evaluation.report import format_table

    train = phantom_set(range(8), "train")
    s = VolumeEvalSettings(encoder_steps=5, tstr=True, tstr_steps=3, progress=False)
    result = evaluate_volumes(other, real, train, s)
    assert set(result["metrics"]) == set(METRICS)
    table = format_table(result)
    for name in METRICS:
        assert name in table
    assert "lower" in table and "higher" in table and "tstr/dice/liver" in table
