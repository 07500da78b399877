"""Feature extractors: deterministic, user weights loaded with weights_only (a missing or misfit
file is named), a cache that computes only new volumes, and nothing downloads."""

from __future__ import annotations

import socket

import pytest
import torch

from medgen.errors import InputFileError, MissingFileError
from medgen.imaging.evaluation import encoder as enc
from medgen.imaging.evaluation import features as feat
from tests.imaging.evaluation_helpers import phantom_set


@pytest.fixture(scope="module")
def vols():
    return phantom_set(range(2_000_000, 2_000_004), "reference")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def _saved(module: torch.nn.Module, path, prefix: str = "module.") -> str:
    """A randomly initialised network saved as MedicalNet does: under state_dict, module.*"""
    torch.save({"state_dict": {prefix + k: v for k, v in module.state_dict().items()}}, path)
    return str(path)


def test_encoder_features_are_deterministic_and_cached_by_the_reference(vols, tmp_path):
    a = enc.encoder_extractor(vols, steps=4, seed=1, progress=False)
    b = enc.encoder_extractor(vols, steps=4, seed=1, progress=False)
    fa = feat.extract_features(vols, a, progress=False)
    assert fa.shape == (4, 64)
    assert torch.equal(fa, feat.extract_features(vols, b, progress=False))
    assert torch.equal(a(vols.images), a(vols.images))  # eval mode, no dropout or BN updates
    c = enc.encoder_extractor(vols, cache_dir=tmp_path, steps=4, seed=1, progress=False)
    assert (tmp_path / f"{c.name}.pt").is_file() and c.name == a.name
    d = enc.encoder_extractor(vols, cache_dir=tmp_path, steps=4, seed=1, progress=False)
    assert torch.equal(feat.extract_features(vols, d, progress=False), fa)  # read from the cache
    other = enc.encoder_extractor(vols, steps=4, seed=2, progress=False)
    assert other.name != a.name


def test_feature_size_pools_volumes_for_training_and_extraction(vols):
    """feature_size=k: the encoder is trained on, and applied to, volumes average-pooled to k^3;
    a volume and its pooled copy have the same features; the cache key says the size."""
    size = vols.images.shape[-1] // 2
    pooled = enc.encoder_extractor(vols, steps=3, seed=1, progress=False, size=size)
    full = enc.encoder_extractor(vols, steps=3, seed=1, progress=False)
    assert pooled.name != full.name
    x = vols.images[:2]
    small = torch.nn.functional.adaptive_avg_pool3d(x, size)
    assert torch.allclose(pooled(x), pooled.module.eval()(small).reshape(2, -1), atol=1e-6)
    # the network saw pooled volumes in training: the same seed on pre-pooled data gives it back
    again = enc.train_encoder(
        torch.nn.functional.adaptive_avg_pool3d(vols.images, size), steps=3, seed=1,
        progress=False,
    )  # fmt: skip
    for a, b in zip(again.state_dict().values(), pooled.module.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())


def test_contrastive_loss_is_low_for_matching_views():
    z = torch.randn(6, 8, generator=torch.Generator().manual_seed(0))
    matched = enc.nt_xent(z, z, 0.2)
    shuffled = enc.nt_xent(z, z.roll(1, 0), 0.2)
    assert matched < shuffled


def test_resnet3d_loads_user_weights_with_weights_only(vols, tmp_path, no_network):
    torch.manual_seed(0)
    path = _saved(feat.resnet3d(10), tmp_path / "resnet_10.pth")
    x = feat.resnet3d_extractor(path, depth=10)
    f = feat.extract_features(vols, x, progress=False)
    assert f.shape == (4, 512) and torch.isfinite(f).all()
    assert torch.equal(f, feat.extract_features(vols, feat.resnet3d_extractor(path, 10)))
    assert x.name.startswith("resnet3d10-")


def test_slice_features_use_three_planes_of_a_2d_network(vols, tmp_path, no_network):
    torch.manual_seed(0)
    path = _saved(feat.resnet2d(18), tmp_path / "resnet18_2d.pt", prefix="")
    x = feat.slices_extractor(path, depth=18, slices_per_plane=4)
    f = feat.extract_features(vols, x, progress=False)
    assert f.shape == (4, 3 * 512) and torch.isfinite(f).all()
    assert feat.slice_indices(16, 4) == [3, 6, 9, 12] and feat.slice_indices(3, 8) == [0, 1, 2]


def test_missing_or_misfit_weights_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "resnet_10.pth"
    with pytest.raises(MissingFileError, match=str(missing)):
        feat.resnet3d_extractor(missing)
    wrong = _saved(feat.resnet3d(18), tmp_path / "resnet_18.pth")
    with pytest.raises(InputFileError, match="resnet_18.pth"):
        feat.resnet3d_extractor(wrong, depth=10)
    junk = tmp_path / "junk.pth"
    junk.write_text("not weights")
    with pytest.raises(InputFileError, match="junk.pth"):
        feat.resnet3d_extractor(junk)


def test_cache_computes_only_new_volumes(tmp_path):
    calls = []
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool3d(2), torch.nn.Flatten())

    def count(x):
        calls.append(x.shape[0])
        return x

    x = feat.Extractor("pool2", net, count)
    first = phantom_set(range(4), "samples")
    grown = phantom_set(range(6), "samples")  # the same 4 and 2 new volumes
    a = feat.extract_features(first, x, cache_dir=tmp_path, batch_size=8, progress=False)
    b = feat.extract_features(grown, x, cache_dir=tmp_path, batch_size=8, progress=False)
    assert calls == [4, 2]
    assert torch.equal(b[:4], a) and b.shape == (6, 8)
    feat.extract_features(grown, x, cache_dir=tmp_path, progress=False)
    assert calls == [4, 2]  # all from the cache


def test_the_whole_evaluation_downloads_nothing(vols, tmp_path, no_network):
    from medgen.imaging.evaluation.evaluate import VolumeEvalSettings, evaluate_volumes
    from tests.imaging.evaluation_helpers import renamed

    train = phantom_set(range(4), "train")
    s = VolumeEvalSettings(encoder_steps=3, tstr=True, tstr_steps=2, progress=False)
    result = evaluate_volumes(renamed(vols, "samples"), vols, train, s, cache_dir=tmp_path)
    assert result["metrics"]["fidelity/frechet"] == pytest.approx(0.0, abs=1e-4)
