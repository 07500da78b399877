"""Test helpers: a stand-in volume generator, a tiny real DiffusionModule, cohorts, file checks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from medgen.generation import Generated, Output
from medgen.imaging.cohort import VolumeCohort
from medgen.imaging.components import DDPM, RFLOW
from medgen.imaging.intensity import IntensityMapping
from medgen.records import DataMeta, Sampler, SampleSettings
from medgen.utils.seeding import sample_generator

# anisotropic spacing (1.5, 1.0, 2.0) mm and an offset origin, RAS
AFFINE = np.array(
    [[1.5, 0.0, 0.0, -6.0], [0.0, 1.0, 0.0, -4.0], [0.0, 0.0, 2.0, -8.0], [0.0, 0.0, 0.0, 1.0]]
)
CKPT_SHA = "0" * 64


def data_meta(size: int = 8, modality: str = "CT", channels: int = 1) -> DataMeta:
    mapping = (
        IntensityMapping("ct_window", -1000.0, 1000.0)
        if modality == "CT"
        else IntensityMapping("percentile", 1.0, 99.0, ref_lo=10.0, ref_hi=500.0)
    )
    return DataMeta(
        source="test",
        spatial_size=(size, size, size),
        spacing=(1.5, 1.0, 2.0),
        affine=tuple(tuple(row) for row in AFFINE.tolist()),
        intensity=mapping.to_dict(),
        modality=modality,
        channels=channels,
        channel_names=("ct", "pet")[:channels] if channels <= 2 else tuple("abcdef"[:channels]),
    )


class StandIn(torch.nn.Module):
    """A volume :class:`~medgen.generation.Generator` with a tiny deterministic 'sampler'.

    Each step mixes a 3x3x3 convolution of x with fresh noise from the sample's own generator, so
    results depend on the generators exactly as a stochastic sampler's would.
    """

    output = Output.VOLUMES
    default_batch_size = 4

    def __init__(self, size: int = 8, modality: str = "CT", channels: int = 1) -> None:
        super().__init__()
        self.meta = data_meta(size, modality, channels)
        torch.manual_seed(0)
        self.conv = torch.nn.Conv3d(channels, channels, 3, padding=1)

    def resolve_settings(self, settings: SampleSettings) -> SampleSettings:
        return settings.replace(
            sampler=Sampler(settings.sampler or "ddim"), steps=settings.steps or 4
        )

    def generate(self, indices, settings: SampleSettings) -> Generated:
        s = self.resolve_settings(settings)
        gens = [sample_generator(s.seed, int(i)) for i in indices]
        shape = (self.meta.channels, *self.meta.spatial_size)
        x = torch.stack([torch.randn(shape, generator=g) for g in gens])
        for _ in range(s.steps):
            eps = torch.stack([torch.randn(shape, generator=g) for g in gens])
            x = 0.7 * x + 0.3 * torch.tanh(self.conv(x)) + 0.1 * eps
        return Generated([int(i) for i in indices], x.clamp(-1.0, 1.0).detach())

    def cohort(self, out: str | os.PathLike, settings: SampleSettings, checkpoint) -> VolumeCohort:
        return VolumeCohort(
            out, self.meta, self.resolve_settings(settings), checkpoint_sha256=CKPT_SHA
        )


# a tiny real DiffusionModule: 8^3 volumes, two UNet levels of 8 channels, 10 timesteps
TINY = dict(
    network=dict(
        channels=[8, 8],
        attention_levels=[False, False],
        num_res_blocks=1,
        norm_num_groups=8,
        num_head_channels=8,
    ),
    scheduler={**DDPM, "num_train_timesteps": 10},
)


def tiny(objective: str = "ddpm", **kw):
    """An untrained tiny ``DiffusionModule`` (same weights on every call)."""
    from medgen.imaging.diffusion import DiffusionModule

    torch.manual_seed(0)
    args = dict(TINY)
    if objective == "rflow":
        args["scheduler"] = {**RFLOW, "num_train_timesteps": 10}
    return DiffusionModule(**args, data_meta=data_meta(8), **kw)


def settings(**kw) -> SampleSettings:
    if kw.get("sampler") is not None:
        kw["sampler"] = Sampler(kw["sampler"])
    return SampleSettings(**kw)


def cohort_for(generator, out, **kw) -> VolumeCohort:
    """The cohort of ``generator``'s samples with settings ``kw`` in ``out`` (any checkpoint)."""
    meta = generator.meta if isinstance(generator, StandIn) else generator.data_meta
    s = generator.resolve_settings(settings(**kw))
    return VolumeCohort(out, meta, s, checkpoint_sha256=CKPT_SHA)


def temporaries(out: Path) -> list[Path]:
    return [p for p in Path(out).rglob("*") if ".tmp-" in p.name]
