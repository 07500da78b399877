"""Seeding: one global seed per run, and independent per-sample seeds for reproducible sampling."""

from __future__ import annotations

import numpy as np
import torch

from medgen.errors import UserError


def seed_everything(seed: int) -> int:
    """Seed Python, NumPy and torch (all devices) and dataloader workers; return the seed."""
    import pytorch_lightning as pl

    return pl.seed_everything(int(seed), workers=True, verbose=False)


def sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded with ``seed``.

    Derived with NumPy's ``SeedSequence`` so that neighbouring ``(seed, index)`` pairs give
    independent streams. Sample *i* depends only on ``(seed, i)``: not on batch size, rank or
    order of drawing.
    """
    if index < 0:
        raise UserError(f"sample index must be >= 0, got {index}")
    if not 0 <= seed < 2**64:
        raise UserError(f"seed must be in 0..2**64-1, got {seed}")
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, int(index)])
    return int(state.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)


def sample_generator(seed: int, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with :func:`sample_seed`."""
    gen = torch.Generator(device=device)
    gen.manual_seed(sample_seed(seed, index))
    return gen
