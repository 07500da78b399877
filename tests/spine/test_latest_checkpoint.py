"""LatestCheckpoint: ``last.ckpt`` is written once per validation, at the end of a run that never
validated, and resumes from where it was written."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from medgen.utils.latest_checkpoint import LatestCheckpoint


class LineModule(pl.LightningModule):
    """Fits y = 3x - 1: 16 fixed points in 4 unshuffled batches, so runs repeat exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 1)

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        return self._loss(batch)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))
        self.log("val/step", float(self.global_step))  # rises at every validation

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        x = torch.randn(16, 1, generator=torch.Generator().manual_seed(0))
        return DataLoader(TensorDataset(x, 3 * x - 1), batch_size=4)

    val_dataloader = train_dataloader


def fit(folder: Path, *, ckpt_path=None, callbacks=(), **trainer_kwargs):
    """Fit a fresh LineModule with a LatestCheckpoint into ``folder/checkpoints``; return the
    trainer, the module and the global step of each file that callback wrote."""
    torch.manual_seed(0)
    latest = LatestCheckpoint(dirpath=folder / "checkpoints")
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=folder,
        callbacks=[latest, *callbacks], **trainer_kwargs,
    )  # fmt: skip
    saves: list[int] = []
    save = trainer.save_checkpoint

    def counting_save(filepath, *args, **kwargs):
        if Path(filepath).name.startswith(".last.ckpt"):  # the temporary beside last.ckpt
            saves.append(trainer.global_step)
        return save(filepath, *args, **kwargs)

    trainer.save_checkpoint = counting_save  # type: ignore[method-assign]
    module = LineModule()
    trainer.fit(module, ckpt_path=ckpt_path)
    return trainer, module, saves


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_one_write_per_validation_and_none_at_sanity_check(tmp_path):
    # validations at steps 2 and 4 of each 4-batch epoch; the sanity check runs first
    best = ModelCheckpoint(dirpath=tmp_path / "checkpoints", monitor="val/step", mode="max")
    trainer, _, saves = fit(tmp_path, callbacks=[best], max_epochs=2, val_check_interval=2)
    assert saves == [2, 4, 6, 8]  # the end of the fit at step 8 adds no second write
    last = load(tmp_path / "checkpoints" / "last.ckpt")
    assert last["global_step"] == trainer.global_step == 8
    # written after the best checkpoint of the same validation, so a resume knows that best
    assert last["callbacks"][best.state_key]["best_model_path"] == best.best_model_path
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        Path(best.best_model_path).name,
        "last.ckpt",
    ]  # no temporary file left behind


def test_a_run_that_never_validates_writes_at_the_end(tmp_path):
    trainer, _, saves = fit(tmp_path, max_steps=5, limit_val_batches=0)
    assert saves == [5]
    assert load(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 5
    trainer.validate(trainer.lightning_module, verbose=False)  # not a fit: nothing written
    assert saves == [5]


def test_fast_dev_run_writes_nothing(tmp_path):
    _, _, saves = fit(tmp_path, fast_dev_run=True)
    assert saves == [] and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("first", "then"),
    [
        ({"max_epochs": 2}, {"max_epochs": 3}),  # written at the validation ending an epoch
        ({"max_steps": 6, "val_check_interval": 2}, {"max_steps": 10, "val_check_interval": 2}),
    ],
    ids=["epoch-end", "mid-epoch"],
)
def test_resuming_from_last_ckpt_continues_from_its_step(tmp_path, first, then):
    fit(tmp_path / "run", **first)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    step = load(last)["global_step"]
    _, _, saves = fit(tmp_path / "run", ckpt_path=last, **first)
    assert saves == []  # nothing left to train: the file already holds that state
    trainer, module, saves = fit(tmp_path / "run", ckpt_path=last, **then)
    assert step > 0 and saves and saves[0] > step  # no write before the first new validation
    assert trainer.global_step == load(last)["global_step"] == then.get("max_steps", 12)
    if "max_epochs" in then:  # whole epochs of unshuffled batches: the same as one long run
        _, straight, _ = fit(tmp_path / "straight", **then)
        assert torch.equal(module.net.weight, straight.net.weight)


def test_filename_is_a_bare_name(tmp_path):
    with pytest.raises(ValueError, match="last.ckpt"):
        LatestCheckpoint(dirpath=tmp_path, filename="last.ckpt")
