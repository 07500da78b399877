"""Imaging test fixtures: tiny model settings (one torch thread per test: tests/conftest.py)."""

from __future__ import annotations

import pytest

TINY = dict(
    channels=(8, 16),
    attention_levels=(False, False),
    norm_num_groups=8,
    num_head_channels=8,
    num_train_timesteps=100,
    warmup_steps=1,
)


@pytest.fixture
def tiny_kwargs():
    return dict(TINY)
