"""Side work during training of a scan model, as Lightning callbacks (``conf/callbacks/``)."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch

from medgen.errors import ConfigError, UserError
from medgen.records import Sampler
from medgen.utils.validate import check_arguments

_LIMITS = {
    "every_n_epochs": {"ge": 0},
    "num_samples": {"ge": 1},
    "steps": {"ge": 1},
    "seed": {"ge": 0},
}


def preview_due(trainer: pl.Trainer, pl_module: pl.LightningModule, every: int) -> bool:
    """A preview callback draws after every ``every``-th validation epoch (0: never), on rank 0,
    not during the sanity check."""
    if every <= 0 or trainer.sanity_checking or not trainer.is_global_zero:
        return False
    return (pl_module.current_epoch + 1) % every == 0


class ScanPreview(pl.Callback):
    """After validation, a PNG of a few samples of the model's EMA weights, from fixed noise (so
    epochs are comparable): ``<run>/previews/epoch_<NNN>.png``, and ``val/preview`` in TensorBoard
    when that logger is on. Rank 0 only; not during the sanity check.

    Args:
        every_n_epochs: every how many epochs (0: never).
        num_samples: volumes per preview; class-conditional models cycle through the classes.
        sampler: ``ddim`` | ``ddpm`` | ``rflow``; None: the model's default.
        steps: reverse steps (few: a preview, not a sample).
        seed: seed of the fixed noise.
        labels: a joint image + label model's label maps: ``overlay`` (in colour over the
            image), ``rows`` (grey rows of their own) or ``none``.
    """

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        num_samples: int = 2,
        sampler: Sampler | None = None,
        steps: int = 10,
        seed: int = 0,
        labels: str = "overlay",
    ) -> None:
        from medgen.imaging.viz import LABEL_VIEWS

        args = dict(every_n_epochs=every_n_epochs, num_samples=num_samples, steps=steps, seed=seed)
        prefix = "callbacks.scan_preview."
        check_arguments(ScanPreview.__init__, args, prefix=prefix, limits=_LIMITS)
        if sampler is not None and sampler not in tuple(Sampler):
            names = ", ".join(s.value for s in Sampler)
            raise ConfigError(f"{prefix}sampler", sampler, f"one of {names} or null")
        if labels not in LABEL_VIEWS:
            raise ConfigError(f"{prefix}labels", labels, f"one of {', '.join(LABEL_VIEWS)}")
        self.labels = labels
        self.every_n_epochs, self.num_samples, self.steps, self.seed = (
            every_n_epochs,
            num_samples,
            steps,
            seed,
        )
        self.sampler = None if sampler is None else Sampler(sampler)
        self.written: list[Path] = []

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check sampler and steps against the model before the first step, not after an epoch."""
        from medgen.records import SampleSettings

        try:
            settings = SampleSettings(sampler=self.sampler, steps=self.steps)
            pl_module.resolve_settings(settings)  # type: ignore[operator]  # a DiffusionModule
        except UserError as err:
            raise UserError(f"callbacks.scan_preview: {err}") from err

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not preview_due(trainer, pl_module, self.every_n_epochs):
            return
        name = f"epoch_{pl_module.current_epoch:03d}.png"
        path = Path(trainer.default_root_dir) / "previews" / name
        self.written.append(self.preview(trainer, pl_module, path))

    @torch.no_grad()
    def preview(self, trainer: pl.Trainer, module, path: Path) -> Path:
        """Draw the preview samples from ``module`` (a DiffusionModule) and write ``path``."""
        from medgen.imaging.viz import grid_to_uint8, write_preview

        meta = module.data_meta
        if meta is None:
            raise ConfigError("callbacks.scan_preview", "on", "a model that knows its data_meta")
        gen = torch.Generator().manual_seed(int(self.seed))
        # the sampler's start: voxels, or a latent model's latents (its noise_shape)
        start = getattr(module, "noise_shape", (meta.channels, *meta.spatial_size))
        shape = (self.num_samples, *start)  # (B, C, D, H, W)
        x_T = torch.randn(shape, generator=gen).to(module.device)
        labels = titles = None
        if module.null_class is not None:
            labels = torch.arange(self.num_samples, device=module.device) % module.null_class
            names = list(meta.class_names or [])
            titles = [names[c] if c < len(names) else f"class {c}" for c in labels.tolist()]
        x = module.denoise(x_T, sampler=self.sampler, steps=self.steps, class_labels=labels)
        path = write_preview(x, meta, path, titles=titles, labels=self.labels)
        from pytorch_lightning.loggers import TensorBoardLogger

        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                lg.experiment.add_image(
                    "val/preview",
                    grid_to_uint8(x[:, 0]),
                    int(trainer.global_step),
                    dataformats="HWC",
                )
        return path


class ReconPreview(pl.Callback):
    """After validation, a PNG of the first validation volumes (rows ``input <i>``) each above
    its reconstruction by an autoencoder's inference weights (``recon <i>``):
    ``<run>/previews/recon_epoch_<NNN>.png``, and ``val/recon_preview`` in TensorBoard when that
    logger is on. Rank 0 only; not during the sanity check.

    Args:
        every_n_epochs: every how many epochs (0: never).
        num_samples: validation volumes shown.
    """

    def __init__(self, *, every_n_epochs: int = 1, num_samples: int = 2) -> None:
        args = dict(every_n_epochs=every_n_epochs, num_samples=num_samples)
        limits = {k: _LIMITS[k] for k in args}
        check_arguments(
            ReconPreview.__init__, args, prefix="callbacks.recon_preview.", limits=limits
        )
        self.every_n_epochs, self.num_samples = every_n_epochs, num_samples
        self.written: list[Path] = []

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not preview_due(trainer, pl_module, self.every_n_epochs):
            return
        dataset = getattr(getattr(trainer, "datamodule", None), "val_set", None)
        if dataset is None or len(dataset) == 0:
            return
        name = f"recon_epoch_{pl_module.current_epoch:03d}.png"
        path = Path(trainer.default_root_dir) / "previews" / name
        self.written.append(self.preview(trainer, pl_module, dataset, path))

    @torch.no_grad()
    def preview(self, trainer: pl.Trainer, module, dataset, path: Path) -> Path:
        """Reconstruct the first validation volumes with ``module`` (an autoencoder module with
        ``reconstruct``) and write ``path``."""
        from medgen.imaging.viz import grid_to_uint8, write_preview

        count = min(self.num_samples, len(dataset))
        x = torch.stack([dataset[i]["image"] for i in range(count)]).to(module.device)
        recon = module.reconstruct(x).clamp(-1.0, 1.0)
        rows = torch.stack([v for pair in zip(x, recon, strict=True) for v in pair])
        titles = [f"{what} {i}" for i in range(count) for what in ("input", "recon")]
        path = write_preview(rows, module.data_meta, path, titles=titles)
        from pytorch_lightning.loggers import TensorBoardLogger

        for lg in trainer.loggers:
            if isinstance(lg, TensorBoardLogger):
                image = grid_to_uint8(rows[:, 0])
                lg.experiment.add_image(
                    "val/recon_preview", image, int(trainer.global_step), dataformats="HWC"
                )
        return path
