"""A tiny regression datamodule and module used only by the spine tests (passed by ``_target_``)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset


class TinyDataModule(pl.LightningDataModule):
    """y = 3x - 1 + noise, 64 points (or ``limit``)."""

    def __init__(self, *, batch_size: int = 8, num_workers: int = 0, limit: int | None = None):
        super().__init__()
        self.batch_size, self.num_workers = batch_size, num_workers
        n = limit or 64
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(n, 1, generator=gen)
        self.data = TensorDataset(x, 3 * x - 1 + 0.01 * torch.randn(n, 1, generator=gen))

    def train_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self):
        return DataLoader(self.data, batch_size=self.batch_size)

    test_dataloader = val_dataloader


class TinyModule(pl.LightningModule):
    def __init__(self, *, lr: float = 0.05):
        super().__init__()
        self.save_hyperparameters()
        self.hparams["kind"] = "tiny"
        self.net = torch.nn.Linear(1, 1)

    def _loss(self, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self._loss(batch))

    def test_step(self, batch, batch_idx):
        self.log("test/loss", self._loss(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
