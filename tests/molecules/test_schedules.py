"""Schedules that fit the run: KL warm-up as a share of the steps, and a time limit that ends a
run inside its first epoch."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch

from medgen.molecules.module import GraphVAEModule

from .test_module import train_tiny

# a network small enough for a run of a few seconds
TINY = ["model.network.hidden_dim=16", "model.network.latent_dim=4", "model.network.pair_dim=8"]


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
        *TINY,
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


class _Timer:
    """A stand-in for Lightning's Timer: ``spent`` of ``total`` seconds."""

    def __init__(self, spent: float, total: float):
        self.spent, self.total = spent, total

    def time_elapsed(self, stage):
        return self.spent

    def time_remaining(self, stage):
        return self.total - self.spent


def test_cosine_lr_falls_from_lr_to_the_final_ratio_over_the_steps():
    module = GraphVAEModule(lr_schedule="cosine", lr_final_ratio=0.1)
    module._trainer = SimpleNamespace(estimated_stepping_batches=1000, callbacks=[])
    assert module.lr_factor(0) == pytest.approx(1.0)
    assert module.lr_factor(500) == pytest.approx(0.55)  # half way: the cosine's mean
    assert module.lr_factor(1000) == pytest.approx(0.1)
    assert module.lr_factor(5000) == pytest.approx(0.1)  # held at the floor past the end
    factors = [module.lr_factor(s) for s in range(0, 1001, 50)]
    assert all(a > b for a, b in zip(factors, factors[1:], strict=False))


def test_cosine_lr_follows_max_time_when_the_time_limit_ends_the_run_first(monkeypatch):
    import pytorch_lightning.callbacks as callbacks

    monkeypatch.setattr(callbacks, "Timer", _Timer)
    module = GraphVAEModule(lr_schedule="cosine", lr_final_ratio=0.0)
    # 30 epochs' worth of steps, but three quarters of the time limit spent at step 10
    module._trainer = SimpleNamespace(estimated_stepping_batches=1e6, callbacks=[_Timer(75, 100)])
    assert module.run_progress(10) == pytest.approx(0.75)
    assert module.lr_factor(10) == pytest.approx(0.5 * (1 + math.cos(0.75 * math.pi)))


def test_lr_warmup_is_linear_and_a_run_without_limits_keeps_the_lr(caplog):
    module = GraphVAEModule(lr_schedule="cosine", lr_warmup_steps=10)
    module._trainer = SimpleNamespace(estimated_stepping_batches=float("inf"), callbacks=[])
    assert module.lr_factor(4) == pytest.approx(0.5)
    assert module.lr_factor(9) == module.lr_factor(10_000) == pytest.approx(1.0)
    constant = GraphVAEModule(lr_warmup_steps=4)
    constant._trainer = SimpleNamespace(estimated_stepping_batches=100, callbacks=[])
    assert [constant.lr_factor(s) for s in (0, 3, 99)] == pytest.approx([0.25, 1.0, 1.0])


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr_schedule", "linear"), ("lr_warmup_steps", -1), ("lr_final_ratio", 1.5)],
)
def test_lr_schedule_settings_are_refused_by_name(key, value):
    with pytest.raises(ValueError, match=key):
        GraphVAEModule(**{key: value})


def test_a_cosine_run_ends_at_the_final_learning_rate_and_resumes_on_its_schedule(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("MEDGEN_CACHE_DIR", str(tmp_path / "cache"))
    overrides = [
        *TINY,
        "model.optimizer.lr=0.01",
        "model.lr_schedule=cosine",
        "model.lr_warmup_steps=2",
        "model.lr_final_ratio=0.1",
        "callbacks.molecule_sampling.n_samples=0",
        "callbacks.molecule_sampling.n_recon=0",
        "data.limit=100",
        "data.batch_size=8",
        "trainer.limit_train_batches=null",
        "trainer.max_epochs=100",
        "trainer.max_steps=12",
    ]
    train_tiny(tmp_path, overrides)
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 12
    (scheduler,) = ckpt["lr_schedulers"]
    assert scheduler["last_epoch"] == 12
    # the learning rate the optimizer would take next: the cosine's floor at the end of the run
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.001)
    # resumed with a longer limit: the schedule continues from step 12 of 24 (half way down)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    train_tiny(tmp_path / "more", [*overrides[:-1], "trainer.max_steps=24", f"ckpt_path={last}"])
    more = torch.load(tmp_path / "more" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert more["global_step"] == 24 and more["lr_schedulers"][0]["last_epoch"] == 24
    assert more["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(0.001)
    rows = list(csv.DictReader(open(tmp_path / "more" / "run" / "csv" / "metrics.csv")))
    rates = {int(r["step"]): float(r["lr-AdamW"]) for r in rows if r.get("lr-AdamW")}
    # the first rate after the resume is the cosine's at step 12 of 24, not a restarted warm-up
    first = min(rates)
    assert first >= 12
    expected = 0.01 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * first / 24)))
    assert rates[first] == pytest.approx(expected, rel=1e-4)
