"""Test helpers: a stand-in following ``DiffusionModule.generate``, cohort specs, file checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

from medgen.imaging.export import CohortSpec
from medgen.imaging.intensity import IntensityMapping

# anisotropic spacing (1.5, 1.0, 2.0) mm and an offset origin, RAS
AFFINE = np.array(
    [[1.5, 0.0, 0.0, -6.0], [0.0, 1.0, 0.0, -4.0], [0.0, 0.0, 2.0, -8.0], [0.0, 0.0, 0.0, 1.0]]
)


def data_meta(size: int = 8, modality: str = "CT") -> dict:
    mapping = (
        IntensityMapping("ct_window", -1000.0, 1000.0)
        if modality == "CT"
        else IntensityMapping("percentile", 1.0, 99.0, ref_lo=10.0, ref_hi=500.0)
    )
    return {
        "source": "test",
        "spatial_size": [size, size, size],
        "spacing": [1.5, 1.0, 2.0],
        "affine": AFFINE.tolist(),
        "intensity": mapping.to_dict(),
        "modality": modality,
        "num_classes": 0,
        "class_names": [],
    }


class StandIn(pl.LightningModule):
    """Follows ``DiffusionModule.generate``'s contract with a tiny deterministic 'sampler'.

    Each step mixes a 3x3x3 convolution of x with fresh noise from the sample's own generator, so
    results depend on the generators exactly as a stochastic sampler's would.
    """

    def __init__(self, size: int = 8, modality: str = "CT") -> None:
        super().__init__()
        self.save_hyperparameters({"kind": "diffusion3d", "data_meta": data_meta(size, modality)})
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(1, 1, 3, padding=1)

    def generate(
        self,
        noise,
        *,
        generators=None,
        sampler=None,
        steps=None,
        class_labels=None,
        guidance_scale=1.0,
        use_ema=True,
        progress=False,
    ):
        x = noise
        for _ in range(steps or 4):
            eps = torch.stack(
                [torch.randn(x.shape[1:], generator=g, device=x.device) for g in generators]
            )
            x = 0.7 * x + 0.3 * torch.tanh(self.conv(x)) + 0.1 * eps
        return x.clamp(-1.0, 1.0)


# a tiny real DiffusionModule: 8^3 volumes, two UNet levels of 8 channels, 10 timesteps
TINY = dict(
    channels=(8, 8),
    attention_levels=(False, False),
    num_res_blocks=1,
    norm_num_groups=8,
    num_head_channels=8,
    num_train_timesteps=10,
    preview_every_n_epochs=0,
)


def tiny(objective: str = "ddpm", **kw):
    """An untrained tiny ``DiffusionModule`` (same weights on every call)."""
    from medgen.imaging.diffusion import DiffusionModule

    torch.manual_seed(0)
    return DiffusionModule(objective=objective, **TINY, data_meta=data_meta(8), **kw)


def spec_for(module, *, seed: int = 0, **kw) -> CohortSpec:
    meta = module.hparams["data_meta"]
    kw.setdefault("checkpoint_sha256", "0" * 64)
    return CohortSpec(
        affine=meta["affine"],
        intensity=IntensityMapping.from_dict(meta["intensity"]),
        modality=meta["modality"],
        seed=seed,
        **kw,
    )


def temporaries(out: Path) -> list[Path]:
    return [p for p in Path(out).rglob("*") if ".tmp-" in p.name]
