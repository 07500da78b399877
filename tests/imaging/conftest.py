"""Imaging test fixtures: tiny model settings (one torch thread per test: tests/conftest.py)."""

from __future__ import annotations

import pytest

from medgen.imaging.components import DDPM, RFLOW

TINY_NETWORK = dict(
    channels=[8, 16], attention_levels=[False, False], norm_num_groups=8, num_head_channels=8
)


def tiny_kwargs_for(objective: str = "ddpm", prediction_type: str = "v_prediction", **scheduler):
    """DiffusionModule arguments of a tiny 2-level UNet, 100 timesteps."""
    base = RFLOW if objective == "rflow" else {**DDPM, "prediction_type": prediction_type}
    return dict(
        network=dict(TINY_NETWORK),
        scheduler={**base, "num_train_timesteps": 100, **scheduler},
        warmup_steps=1,
    )


@pytest.fixture
def tiny_kwargs():
    return tiny_kwargs_for()
