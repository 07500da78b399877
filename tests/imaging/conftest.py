"""Imaging test fixtures: tiny models and one thread per test (tiny 3D convolutions run faster on
one thread, and far faster when other processes share the cores)."""

from __future__ import annotations

import pytest
import torch

TINY = dict(
    channels=(8, 16),
    attention_levels=(False, False),
    norm_num_groups=8,
    num_head_channels=8,
    num_train_timesteps=100,
    warmup_steps=1,
)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_kwargs():
    return dict(TINY)
