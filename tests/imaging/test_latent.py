"""Stage 2 of latent diffusion: the latent module around a frozen tiny autoencoder."""

from __future__ import annotations

import pytest
import torch

from medgen.errors import ConfigError
from medgen.imaging.components import RFLOW
from medgen.imaging.latent import LatentDiffusionModule
from medgen.imaging.samplers import reverse_process
from medgen.records import DataMeta, Sampler, SampleSettings
from tests.imaging.test_autoencoder import tiny_autoencoder_checkpoint

UNET = {"channels": [8, 8], "attention_levels": [False, False], "num_head_channels": 8}


def _meta(size: int = 16) -> DataMeta:
    from medgen.imaging.phantom import phantom_affine

    affine = phantom_affine((size,) * 3, (2.0,) * 3)
    return DataMeta(
        source="phantom",
        spatial_size=(size,) * 3,
        spacing=(2.0,) * 3,
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        intensity={"kind": "ct_window", "lo": -1000.0, "hi": 1000.0},
        channel_names=("ct",),
    )


@pytest.fixture
def ldm(tmp_path):
    ckpt = tiny_autoencoder_checkpoint(tmp_path / "stage1" / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    scheduler = {**RFLOW, "num_train_timesteps": 20}
    module = LatentDiffusionModule(
        autoencoder=str(ckpt), network=dict(UNET), scheduler=scheduler, data_meta=_meta()
    )
    return module, ckpt


def test_the_stage1_record_names_the_file_and_its_hash(ldm):
    from medgen.utils.provenance import file_sha256

    module, ckpt = ldm
    record = module.hparams["autoencoder"]
    assert record["file"] == "stage1/checkpoints/last.ckpt"  # no absolute path
    assert record["sha256"] == file_sha256(ckpt)
    assert module.hparams["kind"] == "ldm3d"
    assert module.hparams["network"]["in_channels"] == 2  # the autoencoder's latent channels
    assert module.noise_shape == (2, 8, 8, 8)  # 16^3 / compression 2
    assert not any(p.requires_grad for p in module.stage1.parameters())


def test_latent_scale_is_one_over_the_first_batch_std_and_is_saved(ldm):
    module, _ = ldm
    x = torch.rand(2, 1, 16, 16, 16) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    z = module.latents({"image": x, "source": ["a", "b"]}, generator=gen)
    mu, sigma = module.posterior(x, ["a", "b"])
    gen.manual_seed(0)
    raw = mu + sigma * torch.randn(mu.shape, generator=gen)
    assert float(module.latent_scale) == pytest.approx(1.0 / float(raw.std()), rel=1e-5)
    assert torch.allclose(z, raw * module.latent_scale)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-4)
    assert "latent_scale" in module.state_dict()
    # a second batch keeps the scale; a cached item is not encoded again
    module.latents({"image": x * 0.5, "source": ["a", "c"]})
    assert float(module.latent_scale) == pytest.approx(1.0 / float(raw.std()), rel=1e-5)
    assert torch.equal(module.posterior(x[:1] * 0.5, ["a"])[0], mu[:1])


def test_latents_are_sampled_unclamped(ldm):
    """Latents have unit std, not the voxels' [-1, 1]: the reverse process must not clamp them
    (a wide x_T stays wide through an RFlow run), while volumes stay clamped by default."""
    module, _ = ldm
    module.latent_scale.fill_(1.0)
    x_T = 4.0 * torch.randn(1, *module.noise_shape, generator=torch.Generator().manual_seed(1))
    unet = module.networks()[1].module.eval()
    sched = module.make_scheduler
    free = reverse_process(unet, sched(), x_T, sampler=Sampler.RFLOW, steps=4, clamp=False)
    assert float(free.abs().max()) > 1.0
    clamped = reverse_process(unet, sched(), x_T, sampler=Sampler.RFLOW, steps=4)
    assert torch.equal(clamped, free.clamp(-1.0, 1.0))


def test_generate_decodes_volumes(ldm):
    module, _ = ldm
    module.latent_scale.fill_(1.0)
    out = module.eval().generate([0, 1], SampleSettings(seed=0, steps=3))
    assert out.items.shape == (2, 1, 16, 16, 16) and float(out.items.abs().max()) <= 1.0


def test_ddpm_scheduler_never_clips_latents_and_every_sampler_runs(tmp_path):
    from medgen.imaging.components import DDPM

    ckpt = tiny_autoencoder_checkpoint(tmp_path / "ae.ckpt")
    module = LatentDiffusionModule(
        autoencoder=str(ckpt),
        network=dict(UNET),
        scheduler={**DDPM, "num_train_timesteps": 20},
        data_meta=_meta(),
    ).eval()
    module.latent_scale.fill_(1.0)
    assert module.hparams["scheduler"]["clip_sample"] is False
    for s in (
        SampleSettings(sampler=Sampler.DDIM, steps=3),
        SampleSettings(sampler=Sampler.DDIM, steps=3, eta=0.5),
        SampleSettings(sampler=Sampler.DDPM, steps=3),
        SampleSettings(sampler=Sampler.DPMPP, steps=3),
    ):
        out = module.generate([0], module.resolve_settings(s))
        assert out.items.shape == (1, 1, 16, 16, 16) and torch.isfinite(out.items).all()
        # the same sample again: stochastic samplers draw their noise from sample i's generator
        assert torch.equal(module.generate([0], s).items, out.items)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"network": {**UNET, "in_channels": 3}}, "model.network.in_channels"),
        ({"tile_size": [6, 6, 6]}, "model.tile_size"),
        ({"autoencoder": None}, "model.autoencoder"),
    ],
)
def test_bad_settings_name_their_key(tmp_path, change, key):
    ckpt = tiny_autoencoder_checkpoint(tmp_path / "ae.ckpt")
    kwargs = {"autoencoder": str(ckpt), "network": dict(UNET), **change}
    with pytest.raises(ConfigError, match=key):
        LatentDiffusionModule(**kwargs)


def test_sizes_must_fit_the_compression_and_the_latent_unet(ldm):
    module, _ = ldm
    with pytest.raises(ConfigError, match="data.spatial_size"):
        module.check_data(_meta(18))  # 18 / 2 = 9: not divisible by the UNet's 2
    with pytest.raises(ConfigError, match="data.spatial_size"):
        module.check_data(DataMeta.from_dict({**_meta().to_dict(), "spatial_size": [17, 16, 16]}))
