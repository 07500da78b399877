"""Stage 1 of latent diffusion: the autoencoder, its tiling and metrics, the phantom disk cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from medgen.errors import ConfigError
from medgen.imaging.autoencoder import AutoencoderModule, reconstruction_metrics

TINY_AE = {"channels": [8, 8], "attention_levels": [False, False], "latent_channels": 2}


def tiny_autoencoder(**kwargs) -> AutoencoderModule:
    torch.manual_seed(0)
    return AutoencoderModule(network=dict(TINY_AE), warmup_steps=1, **kwargs)


def tiny_autoencoder_checkpoint(path: Path, **kwargs) -> Path:
    """A loadable ``autoencoder3d`` checkpoint of an untrained tiny module (for stage-2 tests)."""
    module = tiny_autoencoder(**kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, path)
    return path


def _phantom(size: int = 16) -> torch.Tensor:
    from medgen.imaging.intensity import IntensityMapping
    from medgen.imaging.phantom import make_phantom

    ph = make_phantom(3, size)
    unit = IntensityMapping("ct_window", -1000.0, 1000.0).to_unit(ph.image)
    return torch.from_numpy(unit)[None, None]  # (1, 1, D, H, W)


def test_a_few_steps_reconstruct_a_fixed_phantom_better():
    module = tiny_autoencoder()
    x = _phantom()
    with torch.no_grad():
        before = float((module.reconstruct(x) - x).abs().mean())
    opt = torch.optim.Adam(module.autoencoder.parameters(), lr=3e-3)
    for _ in range(25):
        recon, mu, sigma = module.autoencoder(x)
        loss = module.reconstruction_losses(x, recon, mu, sigma)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float((module.reconstruct(x) - x).abs().mean())
    assert after < 0.6 * before, (before, after)


@pytest.mark.parametrize(("channels", "factor"), [([8, 8], 2), ([8, 8, 8], 4), ([8] * 4, 8)])
def test_latent_shapes_follow_the_compression(channels, factor):
    net = {**TINY_AE, "channels": channels, "attention_levels": [False] * len(channels)}
    module = AutoencoderModule(network=net)
    assert module.compression == factor
    x = torch.zeros(2, 1, 16, 16, 32)
    with torch.no_grad():
        mu, sigma = module.encode(x)
        assert mu.shape == sigma.shape == (2, 2, 16 // factor, 16 // factor, 32 // factor)
        assert module.decode(mu).shape == x.shape
    assert module.latent_size((16, 16, 32)) == (16 // factor, 16 // factor, 32 // factor)
    with pytest.raises(ConfigError, match="data.spatial_size"):
        module.latent_size((16, 16, 17))


def _without_group_norm(module: torch.nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.GroupNorm):
            setattr(module, name, torch.nn.Identity())
        else:
            _without_group_norm(child)


def test_tiled_encoding_and_decoding_match_whole_volumes():
    """Stitching (latent-grid alignment, zoom, blending) on the real AutoencoderKL layout. Its
    GroupNorm statistics are taken per window (docs/latent.md), so they are left out here: what
    remains is the receptive field cut at tile borders, which overlap and blending keep small."""
    whole = tiny_autoencoder()
    tiled = tiny_autoencoder(tile_size=[16, 16, 16], tile_overlap=0.5)
    tiled.load_state_dict(whole.state_dict())
    for module in (whole, tiled):
        _without_group_norm(module.autoencoder)
    x = _phantom(32)
    with torch.no_grad():
        mu, sigma = whole.encode(x)
        mu_t, sigma_t = tiled.encode(x)
        y, y_t = whole.decode(mu), tiled.decode(mu)
    assert mu_t.shape == mu.shape and y_t.shape == y.shape == x.shape
    assert float((mu_t - mu).abs().mean()) < 0.01 * float(mu.abs().mean())
    assert float((sigma_t - sigma).abs().mean()) < 0.01 * float(sigma.abs().mean())
    assert float((y_t - y).abs().mean()) < 0.05 * float(y.abs().mean())
    # a window as large as the volume is the whole-volume pass itself
    big = tiny_autoencoder(tile_size=[32, 32, 32])
    big.load_state_dict(tiny_autoencoder().state_dict())
    with torch.no_grad():
        plain = tiny_autoencoder()
        assert torch.equal(big.decode(plain.encode(x)[0]), plain.reconstruct(x))


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"tile_size": [12, 16, 16]}, "model.tile_size"),
        ({"tile_size": [16], "tile_overlap": 0.3}, "model.tile_overlap"),
        ({"patch_size": [15, 16, 16]}, "model.patch_size"),
        ({"kl_weight": -1.0}, "model.kl_weight"),
        ({"network": {"channels": [8, 12], "attention_levels": [False, False]}}, "channels"),
        ({"network": {"channels": [8, 8], "attention_levels": [False]}}, "attention_levels"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    net = kwargs.pop("network", dict(TINY_AE))
    with pytest.raises(ConfigError, match=key):
        AutoencoderModule(network=net, **kwargs)


def test_reconstruction_metrics_known_answers():
    x = torch.zeros(1, 1, 8, 8, 8)
    recon = x + 0.1
    labels = torch.zeros(1, 1, 8, 8, 8, dtype=torch.long)
    labels[..., :4] = 8  # liver
    window = {"kind": "ct_window", "lo": -1000.0, "hi": 1000.0}
    m = reconstruction_metrics(x, recon, labels=labels, intensity=window)
    assert float(m["l1"]) == pytest.approx(0.1)
    assert float(m["psnr"]) == pytest.approx(10 * np.log10(4 / 0.01), rel=1e-4)  # peak-to-peak 2
    assert float(m["hu_mae"]) == pytest.approx(100.0, rel=1e-4)  # 0.1 units of a 2000 HU window
    assert set(m) >= {"hu_mae/air", "hu_mae/liver", "ssim"}
    assert "hu_mae" not in reconstruction_metrics(x, recon, intensity={"kind": "minmax"})


def test_random_patches_keep_the_network_fully_convolutional():
    module = tiny_autoencoder(patch_size=[8, 8, 8])
    x = torch.arange(16**3, dtype=torch.float32).reshape(1, 1, 16, 16, 16)
    torch.manual_seed(1)
    patch = module.random_patch(x)
    assert patch.shape == (1, 1, 8, 8, 8)
    d, h, w = (int(v) for v in torch.nonzero(x[0, 0] == patch[0, 0, 0, 0, 0])[0])
    assert torch.equal(patch, x[:, :, d : d + 8, h : h + 8, w : w + 8])


def test_checkpoint_round_trip(tmp_path):
    file = tiny_autoencoder_checkpoint(tmp_path / "ae.ckpt", ema_decay=0.9)
    module = AutoencoderModule.from_checkpoint(file)
    x = _phantom()
    with torch.no_grad():
        assert torch.equal(module.reconstruct(x), tiny_autoencoder(ema_decay=0.9).reconstruct(x))


def test_phantom_disk_cache_round_trip(tmp_path):
    from medgen.imaging.data import PhantomDataModule

    plain = PhantomDataModule(size=16, num_train=2, num_val=1, num_test=0)
    cached = PhantomDataModule(
        size=16, num_train=2, num_val=1, num_test=0, disk_cache=str(tmp_path)
    )
    plain.setup(), cached.setup()
    first = cached.train_set[1]  # generated and written
    files = sorted(tmp_path.glob("*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as npz:  # plain arrays only
        assert "image" in npz.files
    again, want = cached.train_set[1], plain.train_set[1]  # read back
    for item in (first, again):
        assert torch.equal(item["image"], want["image"]) and torch.equal(
            item["label"], want["label"]
        )
        assert item["label"].dtype == torch.int64 and item["source"] == want["source"]
        assert item["class_label"] == want["class_label"]
    # other generation settings: another key, never the stale file
    noisier = PhantomDataModule(
        size=16, num_train=2, num_val=1, num_test=0, noise_hu=30.0, disk_cache=str(tmp_path)
    )
    noisier.setup()
    assert not torch.equal(noisier.train_set[1]["image"], want["image"])
    assert len(list(tmp_path.glob("*.npz"))) == 2
    files[0].write_bytes(b"truncated")  # a broken file is regenerated
    assert torch.equal(cached.train_set[1]["image"], want["image"])
