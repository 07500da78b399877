"""The real configs (data=phantom, model=ddpm3d | rflow3d) train end to end via `medgen train`."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import open_dict

from medgen.imaging.diffusion import DiffusionModule
from medgen.tasks.train import train
from tests.conftest import run_medgen


def _compose(compose_cfg, overrides):
    cfg = compose_cfg("train", overrides)
    with open_dict(cfg):
        del cfg["hydra"]  # as the CLI passes it: Hydra's own node is not part of the job config
    return cfg


SHRINK = [
    "debug=fast",
    "data.size=16",
    "data.batch_size=2",
    "data.num_test=2",
    "model.network.channels=[8,16]",
    "model.network.attention_levels=[false,false]",
    "model.network.norm_num_groups=8",
    "model.network.num_head_channels=8",
    "callbacks.scan_preview.steps=2",
    "callbacks.scan_preview.num_samples=1",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
]


@pytest.mark.parametrize("model", ["ddpm3d", "rflow3d"])
def test_train_task_with_real_configs(compose_cfg, tmp_path, model):
    cfg = _compose(compose_cfg, [f"model={model}", *SHRINK, "test=true"])
    metrics = train(cfg)
    assert metrics["global_step"] == 2 and "val/loss" in metrics and "train/loss" in metrics
    assert "test/loss" in metrics and metrics["test/loss"] != metrics["val/loss"]
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["global_step"] == 2
    assert (run / "previews" / "epoch_000.png").is_file()
    last = run / "checkpoints" / "last.ckpt"
    module = DiffusionModule.from_checkpoint(last)
    meta = module.data_meta
    assert meta.source == "phantom" and meta.spatial_size == (16, 16, 16)
    assert module.objective == model[:-2]
    x = module.denoise(torch.randn(1, 1, 16, 16, 16), steps=2)
    assert x.shape == (1, 1, 16, 16, 16)


def test_class_conditional_from_data(compose_cfg, tmp_path):
    cfg = _compose(compose_cfg, [*SHRINK, "model.class_conditional=true", "logger=tensorboard"])
    train(cfg)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert "val/preview" in events.Tags()["images"]
    module = DiffusionModule.from_checkpoint(tmp_path / "run")
    assert module.hparams["num_classes"] == 3  # phantom body-size bins, read from data_meta
    x = module.denoise(
        torch.randn(2, 1, 16, 16, 16), steps=2, class_labels=[0, 2], guidance_scale=2.0
    )
    assert x.shape == (2, 1, 16, 16, 16)


@pytest.mark.parametrize(
    "overrides,preview",
    [(["model=ddpm3d"], True), (["model=rflow3d"], True),
     (["model=graph_vae", "data=smiles"], False)],
)  # fmt: skip
def test_scan_models_bring_their_preview_callback(compose_cfg, overrides, preview):
    cfg = compose_cfg("train", overrides)
    assert ("scan_preview" in cfg.callbacks) is preview
    assert "model_checkpoint" in cfg.callbacks  # the shared default callbacks stay
    if preview:
        assert cfg.callbacks.scan_preview._target_ == "medgen.imaging.callbacks.ScanPreview"
        assert "callbacks" not in cfg.model


def test_rflow3d_replaces_the_scheduler_node(compose_cfg):
    cfg = compose_cfg("train", ["model=rflow3d"])
    assert cfg.model.scheduler._target_.endswith("RFlowScheduler")
    assert "beta_start" not in cfg.model.scheduler  # not merged over the DDPM node
    ddpm = compose_cfg("train", ["model=ddpm3d", "model/scheduler=rflow"]).model.scheduler
    assert ddpm == cfg.model.scheduler


@pytest.mark.slow
def test_cli_debug_fast_default_data_and_model(tmp_path):
    """`medgen train debug=fast` with the default data (phantom) and model (ddpm3d)."""
    out = run_medgen(["train", "debug=fast"], cwd=tmp_path, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    (metrics,) = list((tmp_path / "outputs" / "train").rglob("metrics.json"))
    assert json.loads(metrics.read_text())["global_step"] == 8
    assert list(metrics.parent.glob("previews/epoch_*.png"))
