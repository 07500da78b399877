"""Schedules that fit the run: KL warm-up as a share of the steps, and a time limit that ends a
run inside its first epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from medgen.molecules.module import GraphVAEModule

from .test_module import train_tiny


def test_kl_warmup_fraction_follows_the_length_of_the_run():
    module = GraphVAEModule(kl_warmup_steps=5000, kl_warmup_fraction=0.25, beta=0.5)
    assert module.warmup_steps() == 5000  # no trainer yet: the step count
    module._trainer = SimpleNamespace(estimated_stepping_batches=400)
    assert module.warmup_steps() == 100
    assert module.beta_at(0) == 0.0
    assert module.beta_at(50) == pytest.approx(0.25)
    assert module.beta_at(100) == module.beta_at(10_000) == 0.5


def test_kl_warmup_fraction_falls_back_to_steps_without_a_step_or_epoch_limit():
    module = GraphVAEModule(kl_warmup_steps=30, kl_warmup_fraction=0.5)
    module._trainer = SimpleNamespace(estimated_stepping_batches=float("inf"))
    assert module.warmup_steps() == 30


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_kl_warmup_fraction_outside_zero_one_is_refused_by_name(fraction):
    with pytest.raises(ValueError, match="kl_warmup_fraction"):
        GraphVAEModule(kl_warmup_fraction=fraction)


def test_max_time_ends_a_run_inside_its_first_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [
        "model.network.hidden_dim=16",
        "model.network.latent_dim=4",
        "model.network.pair_dim=8",
        "callbacks.molecule_sampling.n_samples=0",
        "callbacks.molecule_sampling.n_recon=0",
        "data.limit=1000",
        "data.batch_size=1",
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=1000",
        "trainer.max_time=00:00:00:02",  # no '+': the trainer config has the key
    ]
    train_tiny(tmp_path, overrides)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    # 800 batches per epoch: the limit stopped the run before the first epoch was over
    assert ckpt["epoch"] == 0 and 0 < ckpt["global_step"] < 800
