"""Every primary config and every experiment composes, and its objects instantiate (no data I/O)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf, open_dict
from pytorch_lightning.callbacks import ModelCheckpoint

from medgen.cli import TASKS
from medgen.tasks import checks
from medgen.tasks.instantiate import instantiate_group
from medgen.utils.latest_checkpoint import LatestCheckpoint
from tests.conftest import CONFIG_DIR

EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))
LOGGERS = sorted(p.stem for p in (CONFIG_DIR / "logger").glob("*.yaml"))


def _instantiate_run(cfg):
    """Build datamodule, model, callbacks, loggers and trainer as `medgen train` does, on CPU."""
    with open_dict(cfg):
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
        cfg.trainer.strategy = "auto"
    datamodule = hydra.utils.instantiate(cfg.data)
    model = hydra.utils.instantiate(cfg.model)
    callbacks = instantiate_group(cfg.get("callbacks"), "callbacks")
    loggers = instantiate_group(cfg.get("logger"), "logger")
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)
    return datamodule, model, trainer


RECORDS = {
    "train": checks.TrainJob,
    "sample": checks.SampleJob,
    "evaluate": checks.EvaluateJob,
    "screen": checks.ScreenJob,
    "data": checks.DataJob,
    "inspect": checks.InspectJob,
}
REQUIRED = {"train": set(), "sample": {"ckpt", "out"}, "evaluate": {"samples"}}
REQUIRED |= {"screen": {"input", "out"}, "data": {"dataset"}, "inspect": {"path"}}
GROUPS = {"trainer", "paths", "hydra", "data", "model", "callbacks", "logger", "task_name"}


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_key_of_a_task_is_checked_and_required_ones_are_marked(compose_cfg, task):
    """A key the task's record does not read would be accepted whatever its value: none may be."""
    cfg = compose_cfg(task)
    assert cfg.task_name == task
    keys = {k for k in cfg if k not in GROUPS}
    fields = {f.name: f for f in dataclasses.fields(RECORDS[task])}
    assert keys == set(fields), keys ^ set(fields)
    missing = {k for k in keys if OmegaConf.is_missing(cfg, k)}
    required = {
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert missing == required == REQUIRED[task]


def test_default_train_config_instantiates(compose_cfg):
    datamodule, model, trainer = _instantiate_run(compose_cfg("train"))
    assert trainer.max_epochs > 0
    assert model.hparams.get("kind") in {"diffusion3d", "graph_vae"}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(compose_cfg, experiment, tmp_path):
    overrides = [f"experiment={experiment}"]
    if "autoencoder" in compose_cfg("train", overrides).model.keys():  # two-stage: a stage 1
        from tests.imaging.test_autoencoder import tiny_autoencoder_checkpoint

        ae = tiny_autoencoder_checkpoint(tmp_path / "stage1.ckpt")
        overrides += [f"model.autoencoder={ae}", "model.tile_size=null"]
    datamodule, model, trainer = _instantiate_run(compose_cfg("train", overrides))
    assert model.hparams.get("kind") in {"diffusion3d", "graph_vae", "autoencoder3d", "ldm3d"}


@pytest.mark.parametrize("trainer_name", TRAINERS)
def test_trainer_options_compose(compose_cfg, trainer_name):
    cfg = compose_cfg("train", [f"trainer={trainer_name}"])
    assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
    if trainer_name == "gpu":
        assert cfg.trainer.precision == "bf16-mixed"
    if trainer_name == "ddp":
        assert cfg.trainer.strategy == "ddp"
        with open_dict(cfg):
            cfg.trainer.accelerator = "cpu"
        trainer = hydra.utils.instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.world_size == 2


@pytest.mark.parametrize("logger_name", LOGGERS)
def test_logger_options_instantiate(compose_cfg, logger_name, tmp_path):
    cfg = compose_cfg("train", [f"logger={logger_name}"])
    loggers = instantiate_group(cfg.logger, "logger")
    assert loggers and all(Path(lg.save_dir).is_relative_to(tmp_path) for lg in loggers)


def test_debug_fast_is_small_and_on_cpu(compose_cfg):
    cfg = compose_cfg("train", ["debug=fast"])
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.limit_train_batches <= 4
    assert cfg.data.limit == 16 and cfg.data.num_workers == 0


def test_callbacks_checkpoint_into_run_dir(compose_cfg, tmp_path):
    cfg = compose_cfg("train")
    callbacks = instantiate_group(cfg.callbacks, "callbacks")
    (best,) = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    (last,) = [c for c in callbacks if isinstance(c, LatestCheckpoint)]
    assert best.monitor == "val/loss" and last.path.name == "last.ckpt"
    assert Path(best.dirpath) == last.dirpath == tmp_path / "run" / "checkpoints"
    names = {type(c).__name__ for c in callbacks}
    assert {"LearningRateMonitor", "TQDMProgressBar"} <= names
